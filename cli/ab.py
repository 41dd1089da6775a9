"""``recsys ab start|stop|status``: A/B test a second published version (#18)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import ConfigOpt, DebugOpt, build_settings, console, run_guarded

app = typer.Typer(
    help="A/B test: serve a second published version to a stable share of the users.",
    no_args_is_help=True,
)

ShareOpt = Annotated[
    float,
    typer.Option("--share", min=0.0001, max=1.0, help="Share of the users served VERSION."),
]


@app.command("start")
def start(
    version: Annotated[str, typer.Argument(help="A complete published version (recsys status).")],
    share: ShareOpt = 0.1,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Serve VERSION to a stable hash slice of the users; the rest get the live version."""

    def work() -> None:
        from recsys_batch.publish import experiment, store  # noqa: PLC0415

        settings = build_settings(config)
        client = store.connect(settings.redis)
        found = experiment.start_experiment(client, version, share, settings.redis)
        console.print(f"A/B experiment started: {found['version']} serves {share:.2%} of users")

    run_guarded(work, debug=debug)


@app.command("stop")
def stop(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """End the experiment: every user gets the live version again."""

    def work() -> None:
        from recsys_batch.publish import experiment, store  # noqa: PLC0415

        settings = build_settings(config)
        client = store.connect(settings.redis)
        version = experiment.stop_experiment(client, settings.redis)
        console.print(f"A/B experiment stopped ({version})" if version else "no experiment ran")

    run_guarded(work, debug=debug)


@app.command("status")
def status(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """The running experiment as JSON (``null`` when none runs)."""

    def work() -> None:
        from recsys_batch.publish import status as version_status  # noqa: PLC0415
        from recsys_batch.publish import store  # noqa: PLC0415

        settings = build_settings(config)
        client = store.connect(settings.redis)
        found = version_status.experiment(client, settings.redis)
        live = version_status.live_version(client, settings.redis)
        print(json.dumps({"live": live, "experiment": found}))  # noqa: T201

    run_guarded(work, debug=debug)
