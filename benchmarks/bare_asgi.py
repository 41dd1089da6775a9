"""A bare ASGI endpoint: the ceiling the lookup API is compared with (issue #6 benchmark).

Served exactly like the API (uvicorn, uvloop, httptools, no access log); it answers every
request with a fixed JSON body of about the API's size and touches nothing else::

    .venv/bin/uvicorn benchmarks.bare_asgi:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from typing import Any

BODY = (
    b'{"user_id":1,"items":[840361,1029743,995242,1082185,981760],"source":"personal",'
    b'"version":"20261128T031500Z-5f3a","generated_at":"2026-11-28T03:15:00+00:00"}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with ``BODY``; acknowledge lifespan events."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
