"""The FastAPI app: ``uvicorn api.main:app`` (or ``recsys serve``).

One ``redis.asyncio`` client is opened in the lifespan and closed with it; settings come from
the same config/env as the batch (``REDIS_URL`` / ``RECSYS_REDIS__URL``, else the embedded
Redis the batch wrote to; ``RECSYS_REDIS__KEY_PREFIX``; ``RECSYS_API__*``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from api.deps import get_settings
from api.errors import Unavailable
from api.fastpath import Service
from api.redis_client import make_client
from api.responses import OrjsonResponse
from api.routes import console, health, recommendations
from api.service import Lookup
from recsys_batch.config import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
"""The console page served at ``/ui/`` (plain HTML, CSS and JavaScript; no build step)."""


async def _unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unavailable)
    return OrjsonResponse(exc.body(), status_code=503)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
    body = {"error": "internal", "detail": f"unexpected {type(exc).__name__}; see the logs"}
    return OrjsonResponse(body, status_code=500)


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: Any | None = None,
    fast_path: bool = True,
) -> Service:
    """Build the service: the FastAPI app behind the fast path of :mod:`api.fastpath`.

    Parameters
    ----------
    settings
        Default: :func:`api.deps.get_settings` (env vars, ``RECSYS_CONFIG_FILE``).
    redis_client
        An async client to use instead of connecting (tests pass ``fakeredis.FakeAsyncRedis``);
        the app does not close it.
    fast_path
        Answer plain ``GET /v1/recommendations/{id}`` before FastAPI (see
        :mod:`api.fastpath`); False routes it through FastAPI (same answers, slower).

    Returns
    -------
    Service
        The ASGI app; ``.api`` is the FastAPI app, ``.state`` its state.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = redis_client is None
        if redis_client is None:
            timeout = settings.api.redis_timeout_seconds
            client, cluster = await asyncio.to_thread(make_client, settings.redis, timeout)
        else:
            client, cluster = redis_client, False
        app.state.lookup = Lookup(
            client,
            settings.redis.key_prefix,
            settings.api.current_cache_seconds,
            cluster=cluster,
            coalesce=settings.api.coalesce_lookups,
            shop_seconds=settings.api.shop_cache_seconds,
        )
        try:
            yield
        finally:
            app.state.lookup = None
            if owned:
                await client.aclose()

    app = FastAPI(
        title="recsys lookup API",
        version="1.0.0",
        summary="Precomputed grocery recommendations, read from Redis.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    app.state.lookup = None
    app.include_router(recommendations.router)
    app.include_router(health.router)
    app.include_router(console.router)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
    return Service(
        app,
        fast_path=fast_path,
        max_body_bytes=settings.api.max_body_bytes,
        default_k=settings.api.default_k,
        max_k=settings.api.max_k,
    )


_APP: Service | None = None


def young_threshold(allocations: int) -> None:
    """Collect the youngest GC generation every ``allocations`` allocations (the older
    generations keep their thresholds)."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(allocations, middle, oldest)


def __getattr__(name: str) -> Any:
    """``api.main.app`` is built on first access, so importing the module reads no settings."""
    global _APP
    if name == "app":
        if _APP is None:
            _APP = create_app()
            # The served process: what is imported and built by now lives as long as it does.
            # Frozen, it is left out of the cyclic GC's full collections, which under load
            # ran every second or two and took ~40 ms over its ~80,000 objects (#27).
            gc.collect()
            gc.freeze()
            young_threshold(_APP.state.settings.api.gc_young_threshold)
        return _APP
    raise AttributeError(name)
