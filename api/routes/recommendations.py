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

from api.answers import Answer
from api.deps import LookupDep, SettingsDep
from api.errors import rule_error_body
from api.live import LiveVersion
from api.models import (
    MAX_EXCLUDE,
    BadRequest,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    Recommendation,
)
from api.responses import OrjsonResponse
from api.shop import PLAIN, Options, request_options, unknown_parameter
from recsys_batch.publish.keys import MAX_USER_ID
from recsys_batch.rules import RULE_NAMES, RuleError

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
Explain = Annotated[
    bool,
    Query(
        description="Add `reasons`: per item, why it was proposed (`repeat` with `times` and "
        "`last_days`, `bought_with`, `als`, `trending`, `popular`)."
    ),
]
Exclude = Annotated[
    str | None,
    Query(
        description=f"Comma-separated item ids never to return (at most {MAX_EXCLUDE}); the "
        "list is refilled from the user's next items, then the popular list.",
        examples=["840361,1029743"],
    ),
]
Scenario = Annotated[
    str | None,
    Query(
        description="A stored scenario (`recsys scenario set`): its rules apply; rules given "
        "as parameters override its own. Unknown: 422 naming it.",
        examples=["weekend"],
    ),
]
Store = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_USER_ID,
        description="The customer's store: items marked unavailable there are left out too "
        "(items unavailable in every store always are).",
    ),
]
NewOnly = Annotated[
    bool,
    Query(
        description="Serve the customer's new-items list (items they never bought, best "
        "first), refilled from popular items they are not known to have bought."
    ),
]


def _rule(description: str, example: str) -> Any:
    return Query(description=description + " (a rule: docs/api.md#rules).", examples=[example])


MinNew = Annotated[str | None, _rule("At least N items the customer never bought", "2")]
MaxPerCategory = Annotated[str | None, _rule("At most N items per item category", "1")]
MaxPerSubCategory = Annotated[str | None, _rule("At most N items per sub-category", "1")]
Departments = Annotated[str | None, _rule("Only items of these departments", "GROCERY,PRODUCE")]
ExcludeDepartments = Annotated[str | None, _rule("No item of these departments", "DRUG GM")]
Brands = Annotated[str | None, _rule("Only items of these brands", "Private")]
PriceMin = Annotated[str | None, _rule("Only items whose median unit price is at least", "0.5")]
PriceMax = Annotated[str | None, _rule("Only items whose median unit price is at most", "5")]
PromotedFirst = Annotated[
    str | None, _rule("Up to N of the customer's own items on promotion lead the answer", "2")
]
GET_PARAMETERS = ("k", "details", "explain", "exclude", "scenario", "store", "new_only")
"""The GET lookup's parameters besides the rules (any other name: 422)."""
POST_PARAMETERS = ("k", "details", "explain")
_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Redis down or no readable live version."}
}


def user_result(user_id: int, found: Answer, *, explain: bool = False) -> dict[str, Any]:
    """One user's part of an answer (also one entry of a batch's ``results``)."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "items": found.items,
        "source": found.source,
        "fallback_items": found.fallback_items,
        "variant": found.variant,
    }
    if explain:
        body["reasons"] = found.reasons
    ruled = found.ruled
    if ruled is not None:
        body["sources"] = ruled.sources
        body["promoted"] = ruled.promoted
        body["short_by"] = ruled.short_by
    return body


def ruled_summary(found: Answer) -> dict[str, Any]:
    """What a ruled answer applied (top level of an answer): scenario, rules, new_only."""
    ruled = found.ruled
    if ruled is None:
        return {}
    return {"scenario": ruled.scenario, "rules": ruled.rules, "new_only": ruled.new_only}


def answer(
    user_id: int, live: LiveVersion, found: Answer, *, explain: bool = False
) -> dict[str, Any]:
    """The JSON body of one user's recommendations (built in place: every lookup's body)."""
    body = user_result(user_id, found, explain=explain)
    body["version"] = live.version
    body["generated_at"] = live.generated_at
    ruled = found.ruled
    if ruled is not None:  # ruled_summary's keys, in its order
        body["scenario"] = ruled.scenario
        body["rules"] = ruled.rules
        body["new_only"] = ruled.new_only
    return body


def rule_error(exc: RuleError, where: str = "query") -> OrjsonResponse:
    """The 422 of a bad scenario or rule, naming it."""
    return OrjsonResponse(rule_error_body(exc.rule, str(exc), where), status_code=422)


def get_options(
    request: Request, scenario: str | None, store: int | None, new_only: bool
) -> Options:
    """The options of a GET lookup; an unknown parameter, scenario name or rule, or a bad
    rule value raises :class:`RuleError`."""
    given = request.query_params
    for name in given:
        if name not in GET_PARAMETERS and name not in RULE_NAMES:
            raise unknown_parameter(name, GET_PARAMETERS)
    rules = {name: given[name] for name in RULE_NAMES if name in given}
    if not rules and scenario is None and not new_only:
        return PLAIN if store is None else Options(store=store)
    return request_options(rules, scenario=scenario, store=store, new_only=new_only)


def checked_exclude(
    exclude: str | None, where: tuple[str, ...] = ("query", "exclude")
) -> list[int]:
    """``1,2,3`` as item ids; anything else, or more than ``MAX_EXCLUDE`` ids -> 422."""
    if not exclude:
        return []
    parts = exclude.split(",")
    if len(parts) > MAX_EXCLUDE or not all(
        p.isascii() and p.isdigit() and len(p) < 19 for p in parts
    ):
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": where,
                    "msg": f"expected at most {MAX_EXCLUDE} comma-separated item ids",
                    "input": exclude[:200],
                }
            ]
        )
    return [int(p) for p in parts]


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
    explain: Explain = False,
    exclude: Exclude = None,
    scenario: Scenario = None,
    store: Store = None,
    new_only: NewOnly = False,
    min_new: MinNew = None,
    max_per_category: MaxPerCategory = None,
    max_per_sub_category: MaxPerSubCategory = None,
    departments: Departments = None,
    exclude_departments: ExcludeDepartments = None,
    brands: Brands = None,
    price_min: PriceMin = None,
    price_max: PriceMax = None,
    promoted_first: PromotedFirst = None,
) -> OrjsonResponse:
    excluded = checked_exclude(exclude)
    n_items = checked_k(k, settings)
    try:
        options = get_options(request, scenario, store, new_only)
        live, found = await lookup.one(user_id, n_items, excluded, explain=explain, options=options)
    except RuleError as exc:
        return rule_error(exc)
    body = answer(user_id, live, found, explain=explain)
    items = found.items
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
    explain: Explain = False,
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
    excludes = payload.exclude or {}
    try:
        for name in request.query_params:
            if name not in POST_PARAMETERS:
                raise unknown_parameter(name, POST_PARAMETERS)
    except RuleError as exc:
        return rule_error(exc)
    try:
        options = PLAIN
        if payload.rules or payload.scenario is not None or payload.new_only:
            options = request_options(
                payload.rules or {},
                scenario=payload.scenario,
                store=payload.store,
                new_only=payload.new_only,
            )
        elif payload.store is not None:
            options = Options(store=payload.store)
        live, found = await lookup.many(
            payload.user_ids,
            n_items,
            [excludes.get(str(u), []) for u in payload.user_ids],
            explain=explain,
            options=options,
        )
    except RuleError as exc:
        return rule_error(exc, "body")
    results = [
        user_result(user_id, one, explain=explain)
        for user_id, one in zip(payload.user_ids, found, strict=True)
    ]
    for result, one in zip(results, found, strict=True):
        if one.live is not None and one.live.version != live.version:
            result["version"] = one.live.version  # an A/B treatment user's version
    if details:
        by_version = {one.live.version: one.live for one in found if one.live is not None}
        attrs: dict[str, dict[int, dict[str, Any]]] = {}
        for version, arm in by_version.items():
            wanted = [i for one in found if one.live is arm for i in one.items]
            attrs[version] = await lookup.details(arm, wanted)
        for result, one in zip(results, found, strict=True):
            mine = attrs.get(one.live.version if one.live else live.version, {})
            result["details"] = [{"item_id": i, **mine.get(i, {})} for i in result["items"]]
    body = {
        "version": live.version,
        "generated_at": live.generated_at,
        "results": results,
        **(ruled_summary(found[0]) if found else {}),
    }
    return OrjsonResponse(body, headers=server_timing(request))
