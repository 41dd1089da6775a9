"""The service's outer ASGI layer: times every request and answers the hot lookup directly.

``GET /v1/recommendations/{user_id}`` with no query or only ``k=N`` is the request the service
exists for, and with a scenario (``?scenario=S&store=N``, rules, ``new_only``) the one a shop
sends under business rules (#27). Going through FastAPI's router, dependency injection and
parameter validation costs several times the Redis round trip itself, so this layer
recognises those shapes (digits only, ``k`` within range, each parameter once and
well-formed; a query string's parse is cached) and answers them with the same
:class:`~api.service.Lookup` and the same body builders as the FastAPI route, an unknown
scenario's 422 included. Anything else (``details=true``, ``explain``, ``exclude``, a
malformed id or value, an out-of-range ``k``, unknown parameters) falls through to FastAPI,
which validates it and answers 422 as documented in the OpenAPI schema. Request bodies over
``settings.api.max_body_bytes`` are refused here with 413 before anything parses them.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson

from api import metrics
from api.errors import Unavailable, rule_error_body
from api.routes.recommendations import answer
from api.shop import PLAIN, Options, request_options
from recsys_batch.publish.keys import MAX_USER_ID
from recsys_batch.rules import RULE_NAMES, RuleError

log = logging.getLogger(__name__)

PREFIX = "/v1/recommendations/"
ROUTE = PREFIX + "{user_id}"
_MAX_DIGITS = len(str(MAX_USER_ID))
_JSON = (b"content-type", b"application/json")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_FAST_NAMES = frozenset({"k", "scenario", "store", "new_only", *RULE_NAMES})
"""Query parameters the fast path answers; any other (``details``, ``explain``,
``exclude``, an unknown name) goes to FastAPI."""
_FLAGS = {"true": True, "false": False}

Scope = dict[str, Any]


class _Observer:
    """Counts a request's latency and status (:class:`api.metrics.Requests`)."""

    def __call__(self, route: str, status: int, start: float) -> None:
        metrics.REQUESTS.observe(route, status, time.perf_counter() - start)


def parse_fast(
    path: str, query: bytes, default_k: int = 5, max_k: int = 100
) -> tuple[int, int, Options] | None:
    """(user_id, k, options) when the request is a lookup shape the fast path answers (no
    query, ``k=N``, or well-formed ``k``, ``scenario``, ``store``, ``new_only`` and rules),
    else None (FastAPI answers it, a 422 included)."""
    tail = path[len(PREFIX) :]
    if not (0 < len(tail) <= _MAX_DIGITS and tail.isascii() and tail.isdigit()):
        return None
    options = PLAIN
    if not query:
        k = default_k
    elif query[:2] == b"k=" and 0 < len(query) - 2 <= 3 and query[2:].isdigit():
        k = int(query[2:])
    else:
        parsed = parse_query(query, default_k)
        if parsed is None:
            return None
        k, options = parsed
    if not 1 <= k <= max_k:
        return None
    user_id = int(tail)
    if user_id > MAX_USER_ID:
        return None
    return user_id, k, options


@lru_cache(maxsize=512)
def parse_query(query: bytes, default_k: int) -> tuple[int, Options] | None:
    """``k`` and the options of a query string made of fast-path parameters, each once and
    well-formed, else None. Cached: the requests of one scenario share their query."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    values = dict(pairs)
    if len(values) != len(pairs) or not _FAST_NAMES.issuperset(values):
        return None
    k, store, new_only = default_k, None, _FLAGS.get(values.get("new_only", "false"))
    if "k" in values:
        text = values["k"]
        if not (0 < len(text) <= 3 and text.isascii() and text.isdigit()):
            return None
        k = int(text)
    if "store" in values:
        text = values["store"]
        if not (0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()):
            return None
        store = int(text)
        if store > MAX_USER_ID:
            return None
    if new_only is None:
        return None
    rules = {name: values[name] for name in RULE_NAMES if name in values}
    scenario = values.get("scenario")
    try:
        return k, request_options(rules, scenario=scenario, store=store, new_only=new_only)
    except RuleError:
        return None  # FastAPI answers the 422, naming the rule


class Service:
    """The ASGI app uvicorn serves: the fast path in front of the FastAPI app.

    It sits outside FastAPI (not inside its middleware stack), so the hot lookup skips
    Starlette's layers entirely; every other request, and lifespan, goes to ``api``.

    Parameters
    ----------
    api
        The FastAPI app (routes, validation, OpenAPI, lifespan).
    fast_path
        Answer the plain lookup here; False sends every request through FastAPI.
    max_body_bytes
        Largest request body accepted; a bigger one gets 413 before anything parses it
        (``Content-Length`` is checked first, a chunked body is counted as it arrives).
    default_k, max_k
        ``settings.api.default_k`` / ``max_k``: the fast path answers ``k`` in 1..max_k.
    """

    def __init__(
        self,
        api: Any,
        fast_path: bool = True,
        max_body_bytes: int = 262_144,
        default_k: int = 5,
        max_k: int = 100,
    ) -> None:
        self.api = api
        self.fast_path = fast_path
        self.max_body_bytes = max_body_bytes
        self.default_k = default_k
        self.max_k = max_k
        self.observe = _Observer()

    @property
    def state(self) -> Any:
        """The FastAPI app's state (``settings``; ``lookup`` while started)."""
        return self.api.state

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI schema (as served at ``/openapi.json``)."""
        return self.api.openapi()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        start = time.perf_counter()
        scope["recsys.start"] = start
        if self.fast_path and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            parsed = parse_fast(scope["path"], scope["query_string"], self.default_k, self.max_k)
            lookup = self.api.state.lookup if parsed else None
            if parsed is not None and lookup is not None:
                await self._answer(lookup, parsed, send, start)
                return
        if scope["method"] in _WITH_BODY:
            receive = await self._limited(scope, receive, send, start)
            if receive is None:
                return
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.api(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.observe(route, status, start)

    async def _limited(self, scope: Scope, receive: Any, send: Any, start: float) -> Any:
        """A ``receive`` replaying the body once it is known to fit, or None (413 sent)."""
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await self._too_large(send, start, limit)
                    return None
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, start, limit)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict[str, Any]:
            if pending:
                return pending.pop()
            return await receive()

        return replay

    async def _too_large(self, send: Any, start: float, limit: int) -> None:
        detail = f"request body over {limit} bytes (settings.api.max_body_bytes)"
        body = orjson.dumps({"error": "body_too_large", "detail": detail})
        headers = [_JSON, (b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.observe("too_large", 413, start)

    async def _answer(
        self, lookup: Any, parsed: tuple[int, int, Options], send: Any, start: float
    ) -> None:
        user_id, k, options = parsed
        try:
            live, found = await lookup.one(user_id, k, options=options)
            body = orjson.dumps(answer(user_id, live, found))
            status = 200
        except RuleError as exc:  # an unknown scenario: the route's 422, byte for byte
            body = orjson.dumps(rule_error_body(exc.rule, str(exc)))
            status = 422
        except Unavailable as exc:
            body = orjson.dumps(exc.body())
            status = 503
        except Exception as exc:  # noqa: BLE001 - last line of defence: JSON, no traceback
            log.error("unexpected error on %s%d: %s: %s", PREFIX, user_id, type(exc).__name__, exc)
            body = orjson.dumps({"error": "internal", "detail": f"unexpected {type(exc).__name__}"})
            status = 500
        took = (time.perf_counter() - start) * 1000
        headers = [
            _JSON,
            (b"content-length", b"%d" % len(body)),
            (b"server-timing", b"lookup;dur=%.3f" % took),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.observe(ROUTE, status, start)
