"""FastAPI dependencies: settings (built once) and the lookup service of the lifespan."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from api.errors import Unavailable
from api.service import Lookup
from recsys_batch.config import Settings, load_settings

CONFIG_FILE_ENV = "RECSYS_CONFIG_FILE"
"""Optional TOML config file of the service (``recsys serve --config`` sets it for workers)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from ``RECSYS_*`` env vars (and ``RECSYS_CONFIG_FILE`` when set), once."""
    path = os.environ.get(CONFIG_FILE_ENV)
    return load_settings(Path(path) if path else None)


def get_lookup(request: Request) -> Lookup:
    """The lookup service the lifespan opened (503 while the app is not started)."""
    lookup = getattr(request.app.state, "lookup", None)
    if lookup is None:
        raise Unavailable("starting", "the service has not finished starting")
    return lookup


def get_redis(lookup: Annotated[Lookup, Depends(get_lookup)]) -> Any:
    """The one ``redis.asyncio`` client of the process."""
    return lookup.client


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
LookupDep = Annotated[Lookup, Depends(get_lookup)]
RedisDep = Annotated[Any, Depends(get_redis)]
