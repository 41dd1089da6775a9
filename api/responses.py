"""A JSON response rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """``application/json`` rendered with orjson: no pydantic validation on the hot path.

    A ``JSONResponse`` subclass, so FastAPI documents the route's ``response_model`` schema
    (for any other class it documents a plain string; the schema fuzz test caught that).
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
