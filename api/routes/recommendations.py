"""``/v1/recommendations``: one user (GET) or a batch (POST), optionally with item details.

The plain ``GET /v1/recommendations/{user_id}[?k=N]`` is usually answered by the fast path in
:mod:`api.fastpath` before it reaches this router; both build the answer with
:func:`answer` so the two are byte-for-byte the same.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from api.deps import LookupDep, SettingsDep
from api.models import BadRequest, BatchRequest, BatchResponse, ErrorBody, Recommendation
from api.responses import OrjsonResponse
from api.service import LiveVersion
from recsys_batch.publish.keys import MAX_USER_ID

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"])

K = Annotated[
    int | None,
    Query(
        ge=1,
        description="How many items, best first (default settings.api.default_k, at "
        "most settings.api.max_k).",
    ),
]
Details = Annotated[
    bool, Query(description="Add item attributes (department, brand, category, size).")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Redis down or no readable live version."}
}


def answer(user_id: int, live: LiveVersion, items: list[int], source: str) -> dict[str, Any]:
    """The JSON body of one user's recommendations."""
    return {
        "user_id": user_id,
        "items": items,
        "source": source,
        "version": live.version,
        "generated_at": live.generated_at,
    }


def checked_k(k: int | None, settings: Any) -> int:
    """``k`` or ``settings.api.default_k``; over ``settings.api.max_k`` -> 422."""
    if k is None:
        return int(settings.api.default_k)
    if k > settings.api.max_k:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": ("query", "k"),
                    "msg": f"Input should be less than or equal to {settings.api.max_k}",
                    "input": k,
                    "ctx": {"le": settings.api.max_k},
                }
            ]
        )
    return k


def server_timing(request: Request) -> dict[str, str]:
    """``Server-Timing: lookup;dur=<ms>``: time inside the service so far."""
    start = request.scope.get("recsys.start")
    if start is None:
        return {}
    return {"server-timing": f"lookup;dur={(time.perf_counter() - start) * 1000:.3f}"}


@router.get(
    "/{user_id}",
    response_model=Recommendation,
    response_class=OrjsonResponse,
    responses=_ERRORS,
    summary="Top-k items of one user (popular fallback for unknown users)",
)
async def recommend_one(
    request: Request,
    lookup: LookupDep,
    user_id: Annotated[int, Path(ge=0, le=MAX_USER_ID, description="Non-negative integer.")],
    settings: SettingsDep,
    k: K = None,
    details: Details = False,
) -> OrjsonResponse:
    live, items, source = await lookup.one(user_id, checked_k(k, settings))
    body = answer(user_id, live, items, source)
    if details:
        attrs = await lookup.details(live, items)
        body["details"] = [{"item_id": i, **attrs.get(i, {})} for i in items]
    return OrjsonResponse(body, headers=server_timing(request))


@router.post(
    "",
    response_model=BatchResponse,
    response_class=OrjsonResponse,
    responses={
        **_ERRORS,
        400: {"model": BadRequest, "description": "The body is not JSON."},
        413: {"model": ErrorBody, "description": "Body over settings.api.max_body_bytes."},
    },
    summary="Top-k items of up to settings.api.max_batch users in one Redis round trip",
)
async def recommend_many(
    request: Request,
    payload: BatchRequest,
    lookup: LookupDep,
    settings: SettingsDep,
    k: K = None,
    details: Details = False,
) -> OrjsonResponse:
    n_items = checked_k(k, settings)
    limit = settings.api.max_batch
    if len(payload.user_ids) > limit:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "user_ids"),
                    "msg": f"at most {limit} user ids per request, got {len(payload.user_ids)}",
                    "input": None,
                    "ctx": {"max_length": limit},
                }
            ]
        )
    live, rows = await lookup.many(payload.user_ids, n_items)
    results: list[dict[str, Any]] = [
        {"user_id": user_id, "items": items, "source": source} for user_id, items, source in rows
    ]
    if details:
        attrs = await lookup.details(live, [i for _, items, _ in rows for i in items])
        for result in results:
            result["details"] = [{"item_id": i, **attrs.get(i, {})} for i in result["items"]]
    body = {"version": live.version, "generated_at": live.generated_at, "results": results}
    return OrjsonResponse(body, headers=server_timing(request))
