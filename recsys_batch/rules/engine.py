"""The rule engine: a customer's k items under a rule set, with where each came from (#27).

Standard library only and pure (no Redis, no polars, no FastAPI): the API applies it to the
lists it reads and ``recsys evaluate`` to its backtest lists, so what is measured offline is
what is served.

How an answer is built (:func:`apply_rules`; a caller answering many customers under the
same rules prepares their shared part once, :func:`~recsys_batch.rules.prepared.prepare`,
and calls :func:`serve` for each):

1. **Candidates**, in relevance order: the customer's own list (best first), then their
   new-items list, then the popular list; an item is a candidate once, from the first list
   that holds it (its *source*: ``own``, ``new`` or ``popular``). Items excluded by the
   request, unavailable (for all stores or the request's store), or failing a filter rule
   (``departments``, ``exclude_departments``, ``brands``, ``price_min``, ``price_max``)
   never become candidates.
2. **New items first** (``min_new = N``): walking the candidates, items the customer is
   known never to have bought are taken until N are in: own items without a repeat reason
   first, then the new-items list. A popular item counts as possibly bought: a version
   does not store which popular items a customer bought, so a popular item never fills a
   place ``min_new`` reserves (the answer is short instead).
3. **Promotions** (``promoted_first = P``): the first P candidates from the customer's own
   lists (never the popular list) that are on the promotion list are taken, or kept if
   already taken, and will lead the answer.
4. **Refill**: the remaining places go to the candidates in relevance order.

Every step takes an item only when the answer still honours every rule with it: at most k
items, each cap (``max_per_category``, ``max_per_sub_category``; an item without the
attribute counts under "none"), and at most ``k - min(N, k)`` items the customer bought or
may have bought (popular ones), so the places ``min_new`` reserves are never given to them.
Steps 2-4 never undo a choice, so a candidate left out would break a rule if added. When too
few candidates fit, the answer is shorter (``short_by``), never padded with an item that
breaks a rule.

The answer lists the promoted items first (at most P, in relevance order), then the other
items taken, in relevance order. An item counts as *bought* when it is in ``Lists.bought``
(the API passes the own items whose stored reason is a repeat purchase; see
:func:`bought_items`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from recsys_batch.rules.prepared import (
    NO_SHOP_STATE,
    Attributes,
    Groups,
    Prepared,
    ShopState,
    prepare,
)
from recsys_batch.rules.ruleset import RuleSet

OWN, NEW, POPULAR = "own", "new", "popular"
"""Where an item of an answer came from: the customer's list, their new-items list, or the
popular list."""
Candidate = tuple[int, str]
"""An item that may be served, and its source (``own``, ``new`` or ``popular``)."""
_NO_GROUPS: Groups = (None, None)


@dataclass(slots=True)  # not frozen: built for every ruled lookup, and a frozen init is slow
class Lists:
    """What is stored for one customer (all empty for an unknown customer)."""

    own: Sequence[int] = ()
    """Their recommended items, best first."""
    new: Sequence[int] = ()
    """Their new-items list (items they never bought), best first."""
    bought: Collection[int] = frozenset()
    """Items known to be bought by them (read by ``min_new``)."""


@dataclass(slots=True)
class Served:
    """One answer: at most k distinct items, best first, and where each came from."""

    items: list[int]
    sources: list[str]
    """``own``, ``new`` or ``popular``, one per item."""
    promoted: int
    """How many items lead the answer because they are on promotion."""
    short_by: int
    """How many places stayed empty because too few items satisfy the rules (k - len)."""


def bought_items(own: Sequence[int], reasons: Sequence[Mapping[str, object]]) -> frozenset[int]:
    """The own items whose reason (``keys.decode_reasons``, aligned with ``own``) is a repeat
    purchase: the items the stored lists tell the customer bought.

    >>> sorted(bought_items([7, 8], [{"code": "repeat", "times": 2}, {"code": "als"}]))
    [7]
    """
    return frozenset(i for i, why in zip(own, reasons, strict=False) if why.get("code") == "repeat")


def apply_rules(
    lists: Lists,
    popular: Sequence[int],
    attributes: Attributes,
    rules: RuleSet,
    k: int,
    *,
    exclude: Collection[int] = (),
    shop: ShopState = NO_SHOP_STATE,
) -> Served:
    """A customer's answer of at most ``k`` distinct items under ``rules`` (module doc).

    :func:`prepare` then :func:`serve`: a caller answering many customers under the same
    rules, shop state and popular list prepares once and serves each.

    Parameters
    ----------
    lists
        The customer's stored lists and the items they bought.
    popular
        The version's popular list, best first (the refill).
    attributes
        Item attributes (``category``, ``sub_category``, ``department``, ``brand``,
        ``price``); only read by the rules that need them.
    rules
        The rule set (a scenario with the request's rules on top).
    k
        Places in the answer.
    exclude
        Items the request excludes.
    shop
        Unavailable items and the promotion list.
    """
    return serve(prepare(popular, attributes, rules, shop), lists, k, exclude=exclude)


def serve(prepared: Prepared, lists: Lists, k: int, *, exclude: Collection[int] = ()) -> Served:
    """A customer's answer of at most ``k`` distinct items (:func:`apply_rules`).

    The steps of the module doc each walk the candidates in relevance order and take an item
    when the answer still honours every rule with it. So when no promotion can lead and the
    first k candidates honour every rule together, every step takes them and nothing else:
    they are the answer, and the candidates after them are never looked at.
    """
    if k <= 0:
        return Served([], [], 0, 0)
    own = lists.own
    if prepared.open and not exclude and len(set(own[:k])) == k:
        return Served(list(own[:k]), [OWN] * k, 0, 0)  # the usual plain case
    if not prepared.leads:
        first = _first_together(prepared, lists, exclude, k)
        if first is not None:
            items, sources = first
            return Served(items, sources, 0, k - len(items))
        return _stepped(prepared, lists, exclude, k)
    return _built(prepared, lists, k, [], _walk(prepared, lists, exclude))


def _walk(prepared: Prepared, lists: Lists, exclude: Collection[int]) -> Iterator[Candidate]:
    """``(item, source)`` in relevance order: own, new, popular, each item once, without the
    excluded items and those no answer may hold (unavailable, refused by a filter rule)."""
    verdicts = prepared.verdicts
    seen: set[int] = set()
    for source, items in ((OWN, lists.own), (NEW, lists.new)):
        for item in items:
            if item not in seen:
                seen.add(item)
                if verdicts[item] is not None and item not in exclude:
                    yield item, source
    for item in prepared.popular:
        if item not in seen and item not in exclude:
            yield item, POPULAR


def _first_together(
    prepared: Prepared, lists: Lists, exclude: Collection[int], k: int
) -> tuple[list[int], list[str]] | None:
    """The first k candidates and their sources when they honour the caps and the places
    ``min_new`` reserves all together, else None (the answer needs the steps).

    It walks the candidates as :func:`_walk` does, written out: this is the whole of most
    scenario lookups (#27).
    """
    rules = prepared.rules
    cap, sub_cap = rules.max_per_category, rules.max_per_sub_category
    bought, verdicts = lists.bought, prepared.verdicts
    bought_left = k - min(rules.min_new, k)
    per_category: dict[object, int] = {}
    per_sub: dict[object, int] = {}
    items: list[int] = []
    sources: list[str] = []
    seen: set[int] = set()
    for source, candidates in ((OWN, lists.own), (NEW, lists.new), (POPULAR, prepared.popular)):
        for item in candidates:
            if item in seen:
                continue
            seen.add(item)
            groups = verdicts[item]
            if groups is None or item in exclude:
                continue
            if source is POPULAR or item in bought:  # not known to be new
                bought_left -= 1
                if bought_left < 0:
                    return None
            category, sub_category = groups
            if cap is not None:
                per_category[category] = per_category.get(category, 0) + 1
                if per_category[category] > cap:
                    return None
            if sub_cap is not None:
                per_sub[sub_category] = per_sub.get(sub_category, 0) + 1
                if per_sub[sub_category] > sub_cap:
                    return None
            items.append(item)
            sources.append(source)
            if len(items) == k:
                return items, sources
    return items, sources


_Found = tuple[int, str, bool, Groups]
"""A candidate from the customer's lists: item, source, whether bought, its groups."""


def _own_candidates(
    verdicts: Mapping[int, Groups | None], lists: Lists, exclude: Collection[int]
) -> tuple[list[_Found], set[int]]:
    """The candidates of the own and new lists in relevance order (as :func:`_walk`), and
    every item of those lists (the popular list's candidates are the items after them)."""
    bought = lists.bought
    seen: set[int] = set()
    found: list[_Found] = []
    for source, items in ((OWN, lists.own), (NEW, lists.new)):
        for item in items:
            if item not in seen:
                seen.add(item)
                groups = verdicts[item]
                if groups is not None and item not in exclude:
                    found.append((item, source, item in bought, groups))
    return found, seen


def _stepped(prepared: Prepared, lists: Lists, exclude: Collection[int], k: int) -> Served:
    """The answer step by step (module doc) when no promotion leads: :func:`_built` without
    step 3, written out (#27: the quarter of scenario lookups the shortcut cannot answer).

    Step 2 takes known-new items only, never popular ones, so it walks the own and new lists
    alone. The refill walks them again, then the popular list, where every item counts as
    possibly bought: it stops there once no place for such an item is left, as no later
    candidate could be taken.
    """
    rules = prepared.rules
    cap, sub_cap = rules.max_per_category, rules.max_per_sub_category
    verdicts = prepared.verdicts
    min_new = min(rules.min_new, k)
    bought_left = k - min_new
    per_category: dict[object, int] = {}
    per_sub: dict[object, int] = {}
    taken: dict[int, str] = {}  # item -> source, in the order taken
    found, seen = _own_candidates(verdicts, lists, exclude)
    for refill in (False, True):  # step 2 (new items first), then step 4 (the refill)
        if refill and len(taken) >= k or not refill and not min_new:
            continue
        for item, source, is_bought, (category, sub_category) in found:
            if item in taken or is_bought and (not refill or bought_left <= 0):
                continue
            if cap is not None and per_category.get(category, 0) >= cap:
                continue
            if sub_cap is not None and per_sub.get(sub_category, 0) >= sub_cap:
                continue
            taken[item] = source
            bought_left -= is_bought
            per_category[category] = per_category.get(category, 0) + 1
            per_sub[sub_category] = per_sub.get(sub_category, 0) + 1
            if len(taken) == (k if refill else min_new):
                break
    for item in prepared.popular:
        if len(taken) >= k or bought_left <= 0:
            break
        if item in seen or item in exclude:
            continue
        category, sub_category = verdicts[item] or _NO_GROUPS
        if cap is not None and per_category.get(category, 0) >= cap:
            continue
        if sub_cap is not None and per_sub.get(sub_category, 0) >= sub_cap:
            continue
        taken[item] = POPULAR
        bought_left -= 1
        per_category[category] = per_category.get(category, 0) + 1
        per_sub[sub_category] = per_sub.get(sub_category, 0) + 1
    items = [found_item[0] for found_item in found if found_item[0] in taken]
    items += [item for item, source in taken.items() if source is POPULAR]
    return Served(items, [taken[item] for item in items], 0, k - len(items))


class _Answer:
    """Items taken so far and what the rules have left: places for bought items, and per
    category and sub-category."""

    __slots__ = (
        "bought",
        "bought_left",
        "cap",
        "k",
        "per_category",
        "per_sub",
        "sub_cap",
        "taken",
        "verdicts",
    )

    def __init__(self, prepared: Prepared, bought: Collection[int], k: int) -> None:
        self.k = k
        self.cap = prepared.rules.max_per_category
        self.sub_cap = prepared.rules.max_per_sub_category
        self.verdicts = prepared.verdicts
        self.bought = bought
        self.bought_left = k - min(prepared.rules.min_new, k)
        self.taken: set[int] = set()
        self.per_category: dict[object, int] = {}
        self.per_sub: dict[object, int] = {}

    def known_new(self, item: int, source: str) -> bool:
        """Known never bought: not a bought item, and not only on the popular list (which
        popular items the customer bought is not stored)."""
        return source != POPULAR and item not in self.bought

    def take(self, item: int, source: str) -> bool:
        """Take ``item`` (a candidate) if the answer still honours every rule with it; say
        whether."""
        taken = self.taken
        if len(taken) >= self.k or item in taken:
            return False
        is_bought = not self.known_new(item, source)
        if is_bought and self.bought_left <= 0:
            return False
        category, sub_category = self.verdicts[item] or _NO_GROUPS
        if self.cap is not None and self.per_category.get(category, 0) >= self.cap:
            return False
        if self.sub_cap is not None and self.per_sub.get(sub_category, 0) >= self.sub_cap:
            return False
        taken.add(item)
        self.bought_left -= is_bought
        self.per_category[category] = self.per_category.get(category, 0) + 1
        self.per_sub[sub_category] = self.per_sub.get(sub_category, 0) + 1
        return True


def _replay(found: list[Candidate], walk: Iterator[Candidate]) -> Iterator[Candidate]:
    """The candidates ``found`` so far, then those ``walk`` still holds, added to ``found``
    as they come: each step walks the candidates only as far as it needs."""
    yield from found
    for candidate in walk:
        found.append(candidate)
        yield candidate


def _built(
    prepared: Prepared, lists: Lists, k: int, found: list[Candidate], walk: Iterator[Candidate]
) -> Served:
    """The answer step by step (module doc) from the candidates (``found`` so far, then
    ``walk``)."""
    rules = prepared.rules
    answer = _Answer(prepared, lists.bought, k)
    min_new = min(rules.min_new, k)
    if min_new:
        new_taken = 0
        for item, source in _replay(found, walk):
            if new_taken == min_new:
                break
            if answer.known_new(item, source) and answer.take(item, source):
                new_taken += 1
    leading = _promoted(answer, _replay(found, walk), prepared.promoted, rules.promoted_first)
    if len(answer.taken) < k:
        for item, source in _replay(found, walk):
            if answer.take(item, source) and len(answer.taken) >= k:
                break
    first = set(leading)
    rest = [(i, s) for i, s in found if i in answer.taken and i not in first]
    sources = dict(found)
    items = leading + [i for i, _ in rest]
    return Served(items, [sources[i] for i in items], len(leading), k - len(items))


def _promoted(
    answer: _Answer, found: Iterator[Candidate], promoted: Collection[int], limit: int
) -> list[int]:
    """Up to ``limit`` items of the customer's own lists on promotion, in relevance order,
    taken into ``answer`` (or already in it)."""
    leading: list[int] = []
    if not limit or not promoted:
        return leading
    for item, source in found:
        if len(leading) == limit:
            break
        if (
            source != POPULAR
            and item in promoted
            and (item in answer.taken or answer.take(item, source))
        ):
            leading.append(item)
    return leading
