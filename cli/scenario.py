"""``recsys scenario set|list|show|delete``: rule sets stored in Redis (#27).

A scenario is a TOML file of business rules (docs/api.md#business-rules), stored outside the
versions, so it survives publishes and rollbacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOpt, DebugOpt, build_settings, console, run_guarded

app = typer.Typer(
    help="Business-rule scenarios: store, list, show and delete rule sets.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Scenario name: letters, digits, '_', '.', '-'.")]


@app.command("set")
def set_(
    name: NameArg,
    file: Annotated[Path, typer.Option("--file", help="TOML file of rules, e.g. min_new = 2.")],
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Store the rules of FILE as scenario NAME (replacing one of that name)."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        rules = shop_state.read_scenario_file(file)  # checked in full before Redis is touched
        settings = build_settings(config)
        client = store.connect(settings.redis)
        shop_state.set_scenario(client, name, rules, settings.redis)
        console.print(f"scenario {name} set: {json.dumps(rules.to_dict())}", highlight=False)

    run_guarded(work, debug=debug)


@app.command("list")
def list_(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """Every scenario as JSON: name -> rules."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        settings = build_settings(config)
        found = shop_state.scenarios(store.connect(settings.redis), settings.redis)
        print(json.dumps({name: rules.to_dict() for name, rules in found.items()}))  # noqa: T201

    run_guarded(work, debug=debug)


@app.command("show")
def show(name: NameArg, config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """The rules of scenario NAME as JSON (exit 2 when there is none)."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        settings = build_settings(config)
        rules = shop_state.scenario(store.connect(settings.redis), name, settings.redis)
        print(json.dumps(rules.to_dict()))  # noqa: T201

    run_guarded(work, debug=debug)


@app.command("delete")
def delete(name: NameArg, config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """Delete scenario NAME (exit 2 when there is none)."""

    def work() -> None:
        from recsys_batch.publish import shop_state, store  # noqa: PLC0415

        settings = build_settings(config)
        shop_state.delete_scenario(store.connect(settings.redis), name, settings.redis)
        console.print(f"scenario {name} deleted")

    run_guarded(work, debug=debug)
