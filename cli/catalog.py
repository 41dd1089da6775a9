"""``recsys catalog unavailable|available|list``: items never served (#27).

An item marked unavailable (in every store, or in one with ``--store``) is never served,
until it is marked available again or its ``--ttl-hours`` run out.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOpt, DebugOpt, build_settings, console, run_guarded

app = typer.Typer(
    help="Item availability: items marked unavailable are never served.", no_args_is_help=True
)

FileArg = Annotated[
    Path, typer.Argument(help="One item id per line, or a CSV file with an item_id column.")
]
StoreOpt = Annotated[
    int | None,
    typer.Option("--store", min=0, help="Only this store (default: every store)."),
]


@app.command("unavailable")
def unavailable(
    file: FileArg,
    store: StoreOpt = None,
    ttl_hours: Annotated[
        float | None,
        typer.Option("--ttl-hours", help="Available again after this many hours (default: never)."),
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Never serve the items of FILE (in every store, or in --store)."""

    def work() -> None:
        from recsys_batch.publish import shop_state  # noqa: PLC0415
        from recsys_batch.publish import store as redis_store  # noqa: PLC0415

        items = shop_state.read_item_ids(file)  # checked in full before Redis is touched
        settings = build_settings(config)
        client = redis_store.connect(settings.redis)
        end = shop_state.mark_unavailable(
            client, items, settings.redis, store=store, ttl_hours=ttl_hours
        )
        where = "every store" if store is None else f"store {store}"
        console.print(f"{len(items)} items unavailable in {where} until {_shown(end)}")

    run_guarded(work, debug=debug)


@app.command("available")
def available(
    file: FileArg, store: StoreOpt = None, config: ConfigOpt = None, debug: DebugOpt = False
) -> None:
    """Serve the items of FILE again (in every store, or in --store)."""

    def work() -> None:
        from recsys_batch.publish import shop_state  # noqa: PLC0415
        from recsys_batch.publish import store as redis_store  # noqa: PLC0415

        items = shop_state.read_item_ids(file)
        settings = build_settings(config)
        client = redis_store.connect(settings.redis)
        found = shop_state.mark_available(client, items, settings.redis, store=store)
        console.print(f"{found} of {len(items)} items were unavailable and are available again")

    run_guarded(work, debug=debug)


@app.command("list")
def list_(store: StoreOpt = None, config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """Items unavailable now as JSON: item id -> until (ISO 8601 UTC, null: until marked)."""

    def work() -> None:
        from recsys_batch.publish import shop_state  # noqa: PLC0415
        from recsys_batch.publish import store as redis_store  # noqa: PLC0415

        settings = build_settings(config)
        client = redis_store.connect(settings.redis)
        found = shop_state.unavailable(client, settings.redis, store=store)
        print(json.dumps({str(item): _iso(end) for item, end in found.items()}))  # noqa: T201

    run_guarded(work, debug=debug)


def _iso(end: float) -> str | None:
    if math.isinf(end):
        return None
    return datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds")


def _shown(end: float) -> str:
    return _iso(end) or "marked available"
