"""A user's answer from the stored fields: exclusions, the popular refill and the reasons.

A plain lookup takes the user's list, skips the excluded and unavailable items and refills
from the popular list (:func:`pick`). A lookup with a scenario, rules or ``new_only`` is
built by the rule engine shared with ``recsys evaluate`` (:func:`ruled_answer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.errors import Unavailable
from api.live import LiveVersion
from api.shop import Options, ShopCache
from recsys_batch.publish import keys
from recsys_batch.rules import POPULAR, Lists, serve

Plan = tuple[LiveVersion, str, int, Sequence[int], bool, Options]
"""One user of a job: (version to read, variant, user id, exclusions, tail needed, options).
With ``options.ruled`` every family is read: head, tail, reasons, new items, their reasons."""
Stored = tuple[Any, Any, Any]
"""A user's raw (head, tail, reasons) field values (None where not read or absent)."""
POPULAR_REASON: dict[str, int | str] = {"code": "popular"}
RULED_FAMILIES = (b"u", b"t", b"r", b"n", b"w")
"""The bucket families a ruled lookup with ``explain`` reads, in reply order: head, tail,
reasons, new items, their reasons; without ``explain`` the last is not read (those reasons
are only shown)."""

_PLAIN_FAMILIES = {
    (tail, reasons): (b"u", *((b"t",) if tail else ()), *((b"r",) if reasons else ()))
    for tail in (False, True)
    for reasons in (False, True)
}


def families_read(ruled: bool, need_tail: bool, explain: bool) -> tuple[bytes, ...]:
    """The bucket families read for a user, in reply order (:func:`answers_of`): a ruled
    lookup's four (five with ``explain``: :data:`RULED_FAMILIES`); else the head, the tail
    when needed and the reasons with ``explain``."""
    if ruled:
        return RULED_FAMILIES if explain else RULED_FAMILIES[:4]
    return _PLAIN_FAMILIES[need_tail, explain]


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
    ruled: Ruled | None = None
    """What the rule engine added (a lookup with a scenario, rules or ``new_only``)."""


@dataclass(slots=True)
class Ruled:
    """The rule engine's side of an answer."""

    sources: list[str]
    """Per item: ``own`` (the user's list), ``new`` (their new-items list) or ``popular``."""
    promoted: int
    """How many items lead the answer because they are on promotion."""
    short_by: int
    """Places left empty because too few items satisfy the rules."""
    rules: dict[str, Any]
    """The rules applied (the scenario's with the request's on top)."""
    scenario: str | None
    new_only: bool


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
    plans: list[Plan],
    values: list[Any],
    k: int,
    explain: bool,
    counts: list[int],
    shop: ShopCache,
) -> list[Answer]:
    """Each planned user's answer from its replies; ``counts`` (treatment, personal,
    fallback) is added to once all of them were built."""
    answers: list[Answer] = []
    at = 0
    ruled_reads = len(RULED_FAMILIES) if explain else len(RULED_FAMILIES) - 1
    for live, variant, user_id, exclude, need_tail, options in plans:
        if options.ruled:
            got = values[at : at + ruled_reads]
            at += ruled_reads
            answers.append(
                ruled_answer(live, variant, user_id, got, k, exclude, options, shop, explain)
            )
            continue
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
        blocked = _blocked(exclude, shop.unavailable_at(options.store))
        answers.append(answer_of(live, variant, user_id, (head, tail, reasons), k, blocked))
    for found in answers:
        counts[0] += found.variant == "treatment"
        counts[1 if found.source == "personal" else 2] += 1
    return answers


def _blocked(exclude: Sequence[int], unavailable: frozenset[int]) -> Sequence[int]:
    if not unavailable:
        return exclude
    return [*exclude, *unavailable] if exclude else list(unavailable)


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
        raise _corrupt(live, user_id) from None
    items, from_popular = pick(own, live.popular, k, exclude)
    if reasons:
        why = dict(zip(own, reasons, strict=False))
        explained = [why.get(i, POPULAR_REASON) for i in items]
    else:
        explained = [POPULAR_REASON] * len(items)
    return Answer(items, "personal", from_popular, explained, variant, live)


def _corrupt(live: LiveVersion, user_id: int) -> Unavailable:
    detail = f"{live.key(user_id)} field {user_id} is not a packed list of item ids"
    return Unavailable("corrupt_value", detail)


def ruled_answer(
    live: LiveVersion,
    variant: str,
    user_id: int,
    got: Sequence[Any],
    k: int,
    exclude: Sequence[int],
    options: Options,
    shop: ShopCache,
    explain: bool = True,
) -> Answer:
    """One user's answer under the request's rules (:func:`recsys_batch.rules.serve`, the
    evaluation's own engine, prepared once per shop-state read: :meth:`ShopCache.ruling`),
    from the stored fields (:data:`RULED_FAMILIES`; the new items' reasons with ``explain``).

    With ``new_only`` the candidates are the user's new-items list, then the popular items
    the stored list does not say they bought (a repeat reason); otherwise their list, their
    new-items list, then the popular list.

    Raises
    ------
    RuleError
        An unknown scenario, or request rules that contradict the scenario's (a 422).
    """
    prepared, applied = shop.ruling(options, live)
    head, tail, reasons_raw, new_raw = got[:4]
    new_reasons_raw = got[4] if explain else None
    try:
        own = keys.unpack_items(head, tail)
        new = keys.unpack_items(new_raw)
        bought = keys.repeat_items(own, reasons_raw)
        reasons = keys.decode_reasons(reasons_raw) if explain else []
        new_reasons = keys.decode_reasons(new_reasons_raw) if explain else []
    except ValueError:
        raise _corrupt(live, user_id) from None
    excluded = frozenset(exclude)
    if options.new_only:
        lists = Lists(new=new, bought=bought)
        # The popular refill leaves out what they bought, the new-items list keeps its own:
        # excluding the bought items it does not hold does exactly that (no other list).
        excluded |= bought.difference(new)
    else:
        lists = Lists(own, new, bought)
    served = serve(prepared, lists, k, exclude=excluded)
    sources = served.sources
    explained = [POPULAR_REASON] * len(served.items)
    if explain:
        why = {**dict(zip(new, new_reasons, strict=False)), **dict(zip(own, reasons, strict=False))}
        explained = [
            POPULAR_REASON if source == POPULAR else why.get(item, POPULAR_REASON)
            for item, source in zip(served.items, sources, strict=True)
        ]
    ruled = Ruled(
        sources, served.promoted, served.short_by, applied, options.scenario, options.new_only
    )
    source = "personal" if head is not None else "fallback"
    return Answer(served.items, source, sources.count(POPULAR), explained, variant, live, ruled)
