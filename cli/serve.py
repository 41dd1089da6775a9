"""``recsys serve``: run the lookup API with uvicorn (uvloop event loop, httptools parser)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.common import ConfigOpt, DebugOpt, build_settings, run_guarded

APP_PATH = "api.main:app"


def register(app: typer.Typer) -> None:
    """Add ``recsys serve`` to the root app."""

    @app.command("serve")
    def serve(
        host: Annotated[
            str | None, typer.Option("--host", help="Bind address (default: settings.api.host).")
        ] = None,
        port: Annotated[
            int | None, typer.Option("--port", help="TCP port (default: settings.api.port).", min=1)
        ] = None,
        workers: Annotated[
            int | None,
            typer.Option(
                "--workers", help="Worker processes (default: settings.api.workers).", min=1
            ),
        ] = None,
        log_level: Annotated[
            str, typer.Option("--log-level", help="uvicorn log level.")
        ] = "warning",
        access_log: Annotated[
            bool, typer.Option("--access-log", help="Log every request (slower).")
        ] = False,
        config: ConfigOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Serve GET/POST /v1/recommendations, /healthz, /readyz, /metrics and /docs.

        Redis is REDIS_URL / RECSYS_REDIS__URL, else the embedded Redis the batch wrote to;
        keys are read under RECSYS_REDIS__KEY_PREFIX.
        """

        def go() -> None:
            settings = build_settings(config)  # a bad config fails here, with exit code 2
            from api.redis_client import resolve_url  # noqa: PLC0415

            resolve_url(settings.redis)  # an unknown URL scheme too (exit 2), before forking
            if config is not None:
                os.environ["RECSYS_CONFIG_FILE"] = str(config.resolve())  # for the workers
            import uvicorn  # noqa: PLC0415 - only this command needs it

            uvicorn.run(
                APP_PATH,
                host=host or settings.api.host,
                port=port or settings.api.port,
                workers=workers or settings.api.workers,
                loop="uvloop",
                http="httptools",
                log_level=log_level,
                access_log=access_log,
                server_header=False,
            )

        run_guarded(go, debug=debug)
