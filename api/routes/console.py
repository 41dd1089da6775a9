"""The console page's panels: live version, run history, popular list (issue #19).

Each endpoint is one Redis round trip (a non-transactional pipeline, or none at all), and its
answer is cached for ``api.current_cache_seconds`` like the live pointer, so the page costs
the lookup path nothing: these routes share no state with it but the cached live version.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from api.deps import LookupDep
from api.live import LiveVersion, redis_down
from api.models import ErrorBody
from api.responses import OrjsonResponse
from api.service import Lookup
from api.shop import stored_scenario
from recsys_batch.publish import keys, shop_keys

router = APIRouter(prefix="/v1", tags=["console"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Redis down or no readable live version."}
}
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
MAX_RUNS = 30
"""``P:runs`` holds at most this many summaries (``recsys_batch.publish.run_log``)."""


class LivePanel(BaseModel):
    """The live version as the batch described it in its meta hash."""

    version: str
    generated_at: str | None = Field(description="When the batch generated it (ISO 8601).")
    age_seconds: float | None
    users: int | None = Field(description="Users with their own list in this version.")
    items: int | None = Field(description="Items with published attributes.")
    run_id: str | None
    data_source: str | None
    first_day: int | None = Field(description="First day number of the data it was trained on.")
    last_day: int | None
    run_date: str | None
    metrics: dict[str, Any] = Field(description="The quality gate's backtest metrics.")
    durations: dict[str, Any] = Field(description="Seconds per stage of the run.")
    code_version: str | None
    forward_plan_features: bool | None = Field(
        description="Whether the model read the forward-looking plan features (#26); "
        "null when the batch did not record it."
    )
    plan_features: str | None = Field(description="Why they were on or off.")
    previous_version: str | None = Field(description="The `recsys rollback` target.")
    experiment: dict[str, str] | None = Field(
        description="The A/B experiment (`P:ab` hash, fields as written), or null."
    )


class RunSummary(BaseModel):
    """One run of ``recsys nightly-batch`` (an element of ``P:runs``)."""

    model_config = ConfigDict(extra="allow")

    run_id: str | None = None
    status: str | None = Field(
        default=None, description="published, dry-run, gate-refused or failed."
    )
    started_at: str | None = None
    seconds: float | None = None
    users: int | None = None
    version: str | None = None
    gate: str | None = Field(default=None, description="passed, skipped, refused or null.")
    gate_metric: str | None = None
    gate_value: float | None = None
    error: str | None = None


class Runs(BaseModel):
    """The last runs, newest first (at most 30)."""

    runs: list[RunSummary]


class Scenarios(BaseModel):
    """The stored scenarios (``recsys scenario set``), by name, with their rules."""

    scenarios: dict[str, dict[str, Any]] = Field(
        description='Name -> rules, e.g. {"weekend": {"min_new": 2}}; a stored value that '
        "is not a rule set is left out."
    )


class Popular(BaseModel):
    """The live version's fallback list, with item attributes."""

    version: str
    items: list[int]
    details: list[dict[str, Any]]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _flag(value: str | None) -> bool | None:
    """A JSON boolean of the meta hash (``true``/``false``); None when absent or other."""
    return {"true": True, "false": False}.get(value or "")


def _json_object(value: str | None) -> dict[str, Any]:
    try:
        decoded = json.loads(value) if value else {}
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _hash(raw: Any) -> dict[str, str]:
    return {_text(k) or "": _text(v) or "" for k, v in (raw or {}).items()}


class PanelCache:
    """Answers of the console endpoints, each kept for ``seconds`` (per live version)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._kept: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    def get(self, name: str, version: str) -> dict[str, Any] | None:
        """The cached body, or None when missing or older than ``seconds``."""
        kept = self._kept.get((name, version))
        if kept is None or time.monotonic() >= kept[0]:
            return None
        return kept[1]

    def put(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """Keep ``body``, replacing the answer ``name`` had for any other version."""
        self._kept = {k: v for k, v in self._kept.items() if k[0] != name}
        self._kept[(name, version)] = (time.monotonic() + self.seconds, body)
        return body


def _cache(request: Request, lookup: Lookup) -> PanelCache:
    cache = getattr(request.app.state, "console_cache", None)
    if cache is None:
        cache = PanelCache(lookup.cache_seconds)
        request.app.state.console_cache = cache
    return cache


async def _pipeline(lookup: Lookup, build: Any) -> list[Any]:
    """Run the commands ``build(pipe)`` queues in one round trip (503 when Redis fails)."""
    try:
        pipe = lookup.client.pipeline(transaction=False)
        build(pipe)
        return list(await pipe.execute())
    except _REDIS_FAILURES as exc:
        raise redis_down(exc) from None


def live_panel(live: LiveVersion, meta: dict[str, str], previous: Any, ab: Any) -> dict[str, Any]:
    """The JSON body of ``GET /v1/versions/live``."""
    age = live.age_seconds()
    return {
        "version": live.version,
        "generated_at": live.generated_at,
        "age_seconds": None if age is None else round(age, 1),
        "users": _int(meta.get("users")),
        "items": _int(meta.get("items")),
        "run_id": meta.get("run_id"),
        "data_source": meta.get("data_source"),
        "first_day": _int(meta.get("first_day")),
        "last_day": _int(meta.get("last_day")),
        "run_date": meta.get("run_date") or None,
        "metrics": _json_object(meta.get("metrics")),
        "durations": _json_object(meta.get("durations")),
        "code_version": meta.get("code_version"),
        "forward_plan_features": _flag(meta.get("forward_plan_features")),
        "plan_features": meta.get("plan_features"),
        "previous_version": _text(previous),
        "experiment": _hash(ab) or None,
    }


@router.get(
    "/versions/live",
    response_model=LivePanel,
    response_class=OrjsonResponse,
    responses=_ERRORS,
    summary="The live version: age, users, gate metrics, data days, previous version, A/B",
)
async def versions_live(request: Request, lookup: LookupDep) -> OrjsonResponse:
    """One pipelined round trip (meta hash, ``P:previous``, ``P:ab``), cached ~1 s."""
    live = await lookup.live()
    cache = _cache(request, lookup)
    body = cache.get("live", live.version)
    if body is None:
        meta, previous, ab = await _pipeline(
            lookup,
            lambda pipe: (
                pipe.hgetall(keys.meta_key(live.version, lookup.prefix)),
                pipe.get(keys.previous_key(lookup.prefix)),
                # The A/B experiment hash (issue #18 defines its fields; shown as written).
                pipe.hgetall(f"{lookup.prefix}:ab"),
            ),
        )
        body = cache.put("live", live.version, live_panel(live, _hash(meta), previous, ab))
    age = live.age_seconds()  # per answer: the cache must not freeze the age
    return OrjsonResponse({**body, "age_seconds": None if age is None else round(age, 1)})


def _run(raw: Any) -> dict[str, Any] | None:
    try:
        decoded = json.loads(_text(raw) or "")
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


@router.get(
    "/runs",
    response_model=Runs,
    response_class=OrjsonResponse,
    responses=_ERRORS,
    summary="The last 30 nightly runs (status, duration, users, gate), newest first",
)
async def runs(request: Request, lookup: LookupDep) -> OrjsonResponse:
    """``LRANGE P:runs 0 29``, cached ~1 s; unreadable elements are skipped."""
    cache = _cache(request, lookup)
    body = cache.get("runs", "")
    if body is None:
        (raw,) = await _pipeline(
            lookup, lambda pipe: pipe.lrange(keys.runs_key(lookup.prefix), 0, MAX_RUNS - 1)
        )
        found = [run for run in (_run(r) for r in raw) if run is not None]
        body = cache.put("runs", "", {"runs": found})
    return OrjsonResponse(body)


@router.get(
    "/popular",
    response_model=Popular,
    response_class=OrjsonResponse,
    responses=_ERRORS,
    summary="The live version's popular fallback list with item attributes",
)
async def popular(request: Request, lookup: LookupDep) -> OrjsonResponse:
    """The cached fallback list plus one ``HMGET`` of its attributes, cached ~1 s."""
    live = await lookup.live()
    cache = _cache(request, lookup)
    body = cache.get("popular", live.version)
    if body is None:
        items = list(live.popular)
        attrs = await lookup.details(live, items)
        details = [{"item_id": i, **attrs.get(i, {})} for i in items]
        body = cache.put(
            "popular", live.version, {"version": live.version, "items": items, "details": details}
        )
    return OrjsonResponse(body)


@router.get(
    "/scenarios",
    response_model=Scenarios,
    response_class=OrjsonResponse,
    responses=_ERRORS,
    summary="The stored scenarios (the console's picker), by name",
)
async def scenarios(request: Request, lookup: LookupDep) -> OrjsonResponse:
    """``HGETALL P:scenarios``, cached ~1 s."""
    cache = _cache(request, lookup)
    body = cache.get("scenarios", "")
    if body is None:
        key = shop_keys.scenarios_key(lookup.prefix)
        (raw,) = await _pipeline(lookup, lambda pipe: pipe.hgetall(key))
        found: dict[str, dict[str, Any]] = {}
        for name, value in sorted((_text(n) or "", v) for n, v in (raw or {}).items()):
            rules = stored_scenario(name, value)
            if not isinstance(rules, Exception):
                found[name] = rules.to_dict()
        body = cache.put("scenarios", "", {"scenarios": found})
    return OrjsonResponse(body)
