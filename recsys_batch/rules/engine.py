"""The rule engine: a customer's k items under a rule set, with where each came from (#27).

Standard library only and pure (no Redis, no polars, no FastAPI): the API applies it to the
lists it reads and ``recsys evaluate`` to its backtest lists, so what is measured offline is
what is served.

How an answer is built (:func:`apply_rules`):

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

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from recsys_batch.rules.ruleset import NO_RULES, RuleSet

OWN, NEW, POPULAR = "own", "new", "popular"
"""Where an item of an answer came from: the customer's list, their new-items list, or the
popular list."""
CATEGORY, SUB_CATEGORY, DEPARTMENT, BRAND = "category", "sub_category", "department", "brand"
PRICE = "price"
"""Item attribute read by ``price_min`` / ``price_max``: the item's median unit price."""

Attributes = Mapping[int, Mapping[str, object]]
"""item_id -> its attributes (the version's ``items`` hash, JSON-decoded)."""


@dataclass(frozen=True, slots=True)
class Lists:
    """What is stored for one customer (all empty for an unknown customer)."""

    own: Sequence[int] = ()
    """Their recommended items, best first."""
    new: Sequence[int] = ()
    """Their new-items list (items they never bought), best first."""
    bought: Collection[int] = frozenset()
    """Items known to be bought by them (read by ``min_new``)."""


@dataclass(frozen=True, slots=True)
class ShopState:
    """Shop state at request time, shared by every customer."""

    unavailable: Collection[int] = frozenset()
    """Items never served (for all stores, plus the request's store)."""
    promoted: Collection[int] = frozenset()
    """Items on the current promotion list."""


NO_SHOP_STATE = ShopState()


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


def _folded(names: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(n.casefold() for n in names)


def _text(value: object) -> str | None:
    return value.casefold() if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class _Filters:
    """The rules that judge an item alone, prepared once per answer."""

    departments: frozenset[str] | None
    exclude_departments: frozenset[str]
    brands: frozenset[str] | None
    price_min: float | None
    price_max: float | None

    @classmethod
    def of(cls, rules: RuleSet) -> _Filters:
        return cls(
            _folded(rules.departments),
            _folded(rules.exclude_departments) or frozenset(),
            _folded(rules.brands),
            rules.price_min,
            rules.price_max,
        )

    @property
    def any(self) -> bool:
        return self != _NO_FILTERS

    def allow(self, attrs: Mapping[str, object]) -> bool:
        """Whether an item with ``attrs`` passes every filter (a missing attribute never
        proves an item passes a rule that reads it)."""
        department = _text(attrs.get(DEPARTMENT))
        if self.departments is not None and department not in self.departments:
            return False
        if department is not None and department in self.exclude_departments:
            return False
        if self.brands is not None and _text(attrs.get(BRAND)) not in self.brands:
            return False
        if self.price_min is None and self.price_max is None:
            return True
        price = attrs.get(PRICE)
        if not isinstance(price, int | float) or isinstance(price, bool):
            return False
        low = -math.inf if self.price_min is None else self.price_min
        high = math.inf if self.price_max is None else self.price_max
        return low <= price <= high


_NO_FILTERS = _Filters.of(NO_RULES)
_NO_ATTRIBUTES: Mapping[str, object] = {}


def candidates(
    lists: Lists,
    popular: Sequence[int],
    attributes: Attributes,
    rules: RuleSet,
    blocked: Collection[int],
) -> list[tuple[int, str]]:
    """``(item, source)`` in relevance order: own, new, popular, each item once, without
    the ``blocked`` items (excluded or unavailable) and those a filter rule refuses."""
    filters = _Filters.of(rules)
    allow = filters.allow if filters.any else None
    seen: set[int] = set()
    found: list[tuple[int, str]] = []
    for source, items in ((OWN, lists.own), (NEW, lists.new), (POPULAR, popular)):
        for item in items:
            if item in seen:
                continue
            seen.add(item)
            if item in blocked:
                continue
            if allow is None or allow(attributes.get(item, _NO_ATTRIBUTES)):
                found.append((item, source))
    return found


@dataclass(slots=True)
class _Answer:
    """Items taken so far and what the capped rules have used up."""

    k: int
    rules: RuleSet
    attributes: Attributes
    bought: Collection[int]
    max_bought: int
    taken: set[int] = field(default_factory=set)
    bought_taken: int = 0
    per_category: dict[object, int] = field(default_factory=dict)
    per_sub_category: dict[object, int] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return len(self.taken) >= self.k

    def take(self, item: int) -> bool:
        """Take ``item`` if the answer still honours every rule with it; say whether."""
        if self.full or item in self.taken:
            return False
        is_bought = item in self.bought
        if is_bought and self.bought_taken >= self.max_bought:
            return False
        attrs = self.attributes.get(item, _NO_ATTRIBUTES)
        category, sub_category = attrs.get(CATEGORY), attrs.get(SUB_CATEGORY)
        cap, sub_cap = self.rules.max_per_category, self.rules.max_per_sub_category
        if cap is not None and self.per_category.get(category, 0) >= cap:
            return False
        if sub_cap is not None and self.per_sub_category.get(sub_category, 0) >= sub_cap:
            return False
        self.taken.add(item)
        self.bought_taken += is_bought
        self.per_category[category] = self.per_category.get(category, 0) + 1
        self.per_sub_category[sub_category] = self.per_sub_category.get(sub_category, 0) + 1
        return True


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
    if k <= 0:
        return Served([], [], 0, 0)
    blocked = _blocked(exclude, shop.unavailable)
    if rules.is_empty and not blocked and len(set(lists.own[:k])) == k:
        return Served(list(lists.own[:k]), [OWN] * k, 0, 0)  # the usual case
    found = candidates(lists, popular, attributes, rules, blocked)
    min_new = min(rules.min_new, k)
    maybe_bought = not_known_new(lists, found)
    answer = _Answer(k, rules, attributes, maybe_bought, k - min_new)
    if min_new:
        new_taken = 0
        for item, _ in found:
            if new_taken == min_new:
                break
            if item not in maybe_bought and answer.take(item):
                new_taken += 1
    leading = _promoted(answer, found, shop.promoted, rules.promoted_first)
    for item, _ in found:
        if answer.full:
            break
        answer.take(item)
    first = set(leading)
    rest = [(i, s) for i, s in found if i in answer.taken and i not in first]
    sources = dict(found)
    items = leading + [i for i, _ in rest]
    return Served(items, [sources[i] for i in items], len(leading), k - len(items))


def not_known_new(lists: Lists, found: Sequence[tuple[int, str]]) -> frozenset[int]:
    """Candidates not known to be new to the customer: their bought items and every item
    that only the popular list holds (which popular items they bought is not stored)."""
    return frozenset(lists.bought) | {item for item, source in found if source == POPULAR}


def _blocked(exclude: Collection[int], unavailable: Collection[int]) -> Collection[int]:
    if not unavailable:
        return exclude
    if not exclude:
        return unavailable
    return set(exclude) | set(unavailable)


def _promoted(
    answer: _Answer, found: list[tuple[int, str]], promoted: Collection[int], limit: int
) -> list[int]:
    """Up to ``limit`` items of the customer's own lists on promotion, in relevance order,
    taken into ``answer`` (or already in it)."""
    leading: list[int] = []
    if not limit or not promoted:
        return leading
    for item, source in found:
        if len(leading) == limit:
            break
        if source != POPULAR and item in promoted and (item in answer.taken or answer.take(item)):
            leading.append(item)
    return leading
