"""Request and response shapes, for validation of requests and for the OpenAPI docs.

Responses are built as plain dicts and rendered by orjson (no pydantic validation on the hot
path); these models document them and the tests check the answers against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from recsys_batch.publish.keys import MAX_USER_ID

UserId = Annotated[StrictInt, Field(ge=0, le=MAX_USER_ID)]
ItemId = Annotated[StrictInt, Field(ge=0, le=MAX_USER_ID)]
MAX_EXCLUDE = 100
"""Most item ids one user's exclusion list may hold."""
Reason = dict[str, int | str]
Source = Literal["own", "new", "popular"]
_SOURCES = (
    "With a scenario, rules or `new_only`: per item, `own` (the customer's list), `new` "
    "(their new-items list) or `popular` (the refill)."
)
_PROMOTED = "With a scenario, rules or `new_only`: how many items lead because promoted."
_SHORT_BY = (
    "With a scenario, rules or `new_only`: places left empty because too few items "
    "satisfy every rule (an answer is never padded with an item breaking one)."
)
_RULES = "The rules applied: the scenario's, with the request's on top (null: none)."


class Recommendation(BaseModel):
    """One user's recommendations from one version."""

    user_id: int = Field(examples=[1001])
    items: list[int] = Field(description="Item ids, best first.", examples=[[840361, 1029743]])
    source: Literal["personal", "fallback"] = Field(
        description="`fallback`: the user is unknown to the version; popular items instead."
    )
    fallback_items: int = Field(
        description="How many of `items` came from the popular list (all of them for an "
        "unknown user; for a known one, those refilled after exclusions or a short list)."
    )
    variant: Literal["control", "treatment"] = Field(
        description="A/B arm: `control` (the live version) or `treatment` (the version a "
        "running `recsys ab` experiment serves to a stable share of the users)."
    )
    reasons: list[Reason] | None = Field(
        default=None,
        description="With `explain=true`: per item, why it was proposed, e.g. "
        '`{"code": "repeat", "times": 9, "last_days": 12}`, `{"code": "bought_with"}`, '
        '`{"code": "als"}`, `{"code": "trending"}`, `{"code": "popular"}`.',
    )
    version: str = Field(description="The version the items were read from.")
    generated_at: str | None = Field(description="When the batch generated the version (ISO).")
    details: list[dict[str, Any]] | None = Field(
        default=None,
        description="With `details=true`: attributes of each item, in the order of `items`.",
    )
    sources: list[Source] | None = Field(default=None, description=_SOURCES)
    promoted: int | None = Field(default=None, description=_PROMOTED)
    short_by: int | None = Field(default=None, description=_SHORT_BY)
    scenario: str | None = Field(default=None, description="The scenario applied, if any.")
    rules: dict[str, Any] | None = Field(default=None, description=_RULES)
    new_only: bool | None = Field(
        default=None, description="Whether the new-items list was served."
    )


class BatchRequest(BaseModel):
    """Users to look up in one round trip."""

    model_config = ConfigDict(extra="forbid")

    user_ids: list[UserId] = Field(
        description="Non-negative integer user ids; at most `settings.api.max_batch` (1000).",
        examples=[[1, 2, 3]],
    )
    exclude: dict[str, Annotated[list[ItemId], Field(max_length=MAX_EXCLUDE)]] | None = Field(
        default=None,
        description=f"Per user id (as a string): item ids never to return, at most "
        f"{MAX_EXCLUDE} each.",
        examples=[{"1": [840361, 1029743]}],
    )
    scenario: str | None = Field(
        default=None,
        description="A stored scenario applied to every user (unknown: 422 naming it).",
        examples=["weekend"],
    )
    rules: dict[str, Any] | None = Field(
        default=None,
        description="Rules applied to every user, over the scenario's (docs/api.md#rules); "
        "an unknown rule or a bad value is a 422 naming it.",
        examples=[{"min_new": 2, "departments": ["GROCERY"]}],
    )
    store: UserId | None = Field(
        default=None, description="The store: its unavailable items are left out too."
    )
    new_only: StrictBool = Field(
        default=False, description="Serve each user's new-items list (items never bought)."
    )


class BatchResult(BaseModel):
    """One user's answer inside a batch."""

    user_id: int
    items: list[int]
    source: Literal["personal", "fallback"]
    fallback_items: int
    variant: Literal["control", "treatment"]
    version: str | None = Field(
        default=None,
        description="Only for an A/B treatment user: the experiment's version (the others "
        "come from the batch's top-level `version`).",
    )
    reasons: list[Reason] | None = None
    details: list[dict[str, Any]] | None = None
    sources: list[Source] | None = Field(default=None, description=_SOURCES)
    promoted: int | None = Field(default=None, description=_PROMOTED)
    short_by: int | None = Field(default=None, description=_SHORT_BY)


class BatchResponse(BaseModel):
    """One answer per requested id, in request order, all from one version."""

    version: str
    generated_at: str | None
    results: list[BatchResult]
    scenario: str | None = None
    rules: dict[str, Any] | None = Field(default=None, description=_RULES)
    new_only: bool | None = None


class ErrorBody(BaseModel):
    """A 503: Redis unreachable, no live version, or a version this API cannot read."""

    error: str = Field(examples=["redis_unavailable"])
    detail: str


class BadRequest(BaseModel):
    """A 400: the body is not JSON at all (a JSON body of the wrong shape is a 422)."""

    detail: str = Field(examples=["There was an error parsing the body"])


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    version: str
    generated_at: str | None
    age_seconds: float | None
