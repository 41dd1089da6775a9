"""A user's answer from the stored fields: exclusions, the popular refill and the reasons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.errors import Unavailable
from api.live import LiveVersion
from recsys_batch.publish import keys

Plan = tuple[LiveVersion, str, int, Sequence[int], bool]
"""One user of a job: (version to read, variant, user id, exclusions, tail needed)."""
Stored = tuple[Any, Any, Any]
"""A user's raw (head, tail, reasons) field values (None where not read or absent)."""
POPULAR_REASON: dict[str, int | str] = {"code": "popular"}


@dataclass(slots=True)
class Answer:
    """One user's answer: items best first, where they came from, and why."""

    items: list[int]
    source: str
    """``personal`` (the user's own list) or ``fallback`` (unknown user: popular items)."""
    fallback_items: int
    """How many of ``items`` came from the popular list."""
    reasons: list[dict[str, int | str]]
    variant: str = "control"
    """A/B arm: ``control`` (the live version) or ``treatment`` (the experiment's version)."""
    live: LiveVersion | None = None
    """The version the answer was read from (the live one or the experiment's)."""


def pick(
    own: Sequence[int], popular: Sequence[int], k: int, exclude: Sequence[int] = ()
) -> tuple[list[int], int]:
    """The first ``k`` of ``own`` then ``popular``, skipping ``exclude``, never repeating.

    Returns the items and how many came from ``popular``.

    >>> pick([1, 2, 3], [3, 9, 8], 4, exclude=[2])
    ([1, 3, 9, 8], 2)
    """
    if not exclude and len(own) >= k:
        head = list(own[:k])
        if len(set(head)) == k:  # the usual case: k distinct own items
            return head, 0
    seen = set(exclude)
    items: list[int] = []
    from_popular = 0
    for source, candidates in ((0, own), (1, popular)):
        for item in candidates:
            if len(items) == k:
                return items, from_popular
            if item not in seen:
                seen.add(item)
                items.append(item)
                from_popular += source
    return items, from_popular


def answers_of(
    plans: list[Plan], values: list[Any], k: int, explain: bool, counts: list[int]
) -> list[Answer]:
    """Each planned user's answer from its replies; ``counts`` (treatment, personal,
    fallback) is added to once all of them were built."""
    answers: list[Answer] = []
    at = 0
    for live, variant, user_id, exclude, need_tail in plans:
        head = values[at]
        at += 1
        tail = None
        if need_tail:
            tail = values[at]
            at += 1
        reasons = None
        if explain:
            reasons = values[at]
            at += 1
        answers.append(answer_of(live, variant, user_id, (head, tail, reasons), k, exclude))
    for found in answers:
        counts[0] += found.variant == "treatment"
        counts[1 if found.source == "personal" else 2] += 1
    return answers


def answer_of(
    live: LiveVersion,
    variant: str,
    user_id: int,
    got: Stored,
    k: int,
    exclude: Sequence[int],
) -> Answer:
    head, tail, reasons_raw = got
    if head is None:
        items, from_popular = pick((), live.popular, k, exclude)
        popular_why = [POPULAR_REASON] * len(items)
        return Answer(items, "fallback", from_popular, popular_why, variant, live)
    try:
        own = keys.unpack_items(head, tail)
        reasons = keys.decode_reasons(reasons_raw)
    except ValueError:
        detail = f"{live.key(user_id)} field {user_id} is not a packed list of item ids"
        raise Unavailable("corrupt_value", detail) from None
    items, from_popular = pick(own, live.popular, k, exclude)
    if reasons:
        why = dict(zip(own, reasons, strict=False))
        explained = [why.get(i, POPULAR_REASON) for i in items]
    else:
        explained = [POPULAR_REASON] * len(items)
    return Answer(items, "personal", from_popular, explained, variant, live)
