"""``recsys promo set|clear|show``: the current promotion list (#27).

With ``promoted_first = N`` in the rules, up to N of a customer's own recommended items that
are on the promotion list lead their answer, until the end of the ``--until`` day (UTC).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOpt, DebugOpt, build_settings, console, run_guarded

app = typer.Typer(
    help="The promotion list (read by the rule promoted_first).", no_args_is_help=True
)


@app.command("set")
def set_(
    file: Annotated[
        Path, typer.Argument(help="One item id per line, or a CSV file with an item_id column.")
    ],
    until: Annotated[
        datetime,
        typer.Option(
            "--until", formats=["%Y-%m-%d"], help="Last day of the promotion (YYYY-MM-DD, UTC)."
        ),
    ],
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Replace the promotion list with the items of FILE, through the end of --until."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        items = shop_state.read_item_ids(file)  # checked in full before Redis is touched
        settings = build_settings(config)
        client = store.connect(settings.redis)
        shop_state.set_promotion(client, items, until.date(), settings.redis)
        console.print(f"{len(items)} items promoted through {until.date().isoformat()} (UTC)")

    run_guarded(work, debug=debug)


@app.command("clear")
def clear(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """End the promotion now."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        settings = build_settings(config)
        found = shop_state.clear_promotion(store.connect(settings.redis), settings.redis)
        console.print("promotion cleared" if found else "no promotion ran")

    run_guarded(work, debug=debug)


@app.command("show")
def show(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """The promotion in force as JSON: {"items": [...], "until": "YYYY-MM-DD"} (null: none)."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        settings = build_settings(config)
        items, last_day = shop_state.promotion(store.connect(settings.redis), settings.redis)
        found = {"items": items, "until": last_day.isoformat()} if last_day else None
        print(json.dumps(found))  # noqa: T201

    run_guarded(work, debug=debug)
