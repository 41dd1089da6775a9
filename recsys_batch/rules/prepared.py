"""What the answers under one rule set and shop state share, worked out once (#27).

Every customer's answer under a scenario reads the same things besides their own lists:
whether each item may be served at all (unavailable, or refused by a filter rule:
``departments``, ``exclude_departments``, ``brands``, ``price_min``, ``price_max``), each
item's category and sub-category (the caps), and the popular list without the items that
may not be served. :func:`prepare` gathers them in a :class:`Prepared` (each item judged on
first use, then remembered), and :func:`~recsys_batch.rules.serve` builds a customer's
answer from it: the API keeps one per version, rule set and shop-state read, so a request
only walks its customer's own lists; :func:`~recsys_batch.rules.apply_rules` prepares for
one answer. Standard library only, like the engine.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from recsys_batch.rules.ruleset import NO_RULES, RuleSet

CATEGORY, SUB_CATEGORY, DEPARTMENT, BRAND = "category", "sub_category", "department", "brand"
PRICE = "price"
"""Item attribute read by ``price_min`` / ``price_max``: the item's median unit price."""

Attributes = Mapping[int, Mapping[str, object]]
"""item_id -> its attributes (the version's ``items`` hash, JSON-decoded)."""
Groups = tuple[object, object]
"""An item's ``(category, sub_category)``: what the caps count (None where it has none)."""


@dataclass(frozen=True, slots=True)
class ShopState:
    """Shop state at request time, shared by every customer."""

    unavailable: Collection[int] = frozenset()
    """Items never served (for all stores, plus the request's store)."""
    promoted: Collection[int] = frozenset()
    """Items on the current promotion list."""


NO_SHOP_STATE = ShopState()


def _folded(names: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(n.casefold() for n in names)


def _text(value: object) -> str | None:
    return value.casefold() if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class _Filters:
    """The rules that judge an item alone."""

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


class _Verdicts(dict[int, "Groups | None"]):
    """item -> ``(category, sub_category)`` when an answer may hold it, None when it may not
    (unavailable, or refused by a filter rule); each item is judged once, on first use."""

    __slots__ = ("_attributes", "_filters", "_unavailable")

    def __init__(
        self, attributes: Attributes, filters: _Filters | None, unavailable: Collection[int]
    ) -> None:
        super().__init__()
        self._attributes = attributes
        self._filters = filters
        self._unavailable = unavailable

    def __missing__(self, item: int) -> Groups | None:
        attrs = self._attributes.get(item, _NO_ATTRIBUTES)
        verdict = None
        if item not in self._unavailable and (self._filters is None or self._filters.allow(attrs)):
            verdict = (attrs.get(CATEGORY), attrs.get(SUB_CATEGORY))
        self[item] = verdict
        return verdict


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """What every answer under one rule set, shop state and popular list shares, worked out
    once by :func:`prepare`: the API keeps one per version, rule set and shop-state read, so
    a request only walks its customer's own lists (#27: the CPU of a scenario lookup). Its
    verdicts fill in as items are first met: one thread at a time (the API's event loop)."""

    rules: RuleSet
    popular: tuple[int, ...]
    """The popular list, each item once, without the items no answer may hold."""
    promoted: Collection[int]
    verdicts: _Verdicts
    """item -> its ``(category, sub_category)`` when an answer may hold it, else None."""
    leads: bool
    """Promotions can move items to the top (``promoted_first`` and a promotion running)."""
    open: bool
    """No rule and nothing unavailable: a customer's first k distinct items are the answer."""


def prepare(
    popular: Sequence[int],
    attributes: Attributes,
    rules: RuleSet,
    shop: ShopState = NO_SHOP_STATE,
) -> Prepared:
    """The shared part of the answers under ``rules`` and ``shop``, from the version's
    ``popular`` list and item ``attributes``: what :func:`~recsys_batch.rules.serve` needs
    besides a customer's lists."""
    filters = _Filters.of(rules)
    verdicts = _Verdicts(attributes, filters if filters.any else None, shop.unavailable)
    kept = tuple(item for item in dict.fromkeys(popular) if verdicts[item] is not None)
    leads = bool(rules.promoted_first and shop.promoted)
    open_ = rules.is_empty and not shop.unavailable
    return Prepared(rules, kept, shop.promoted, verdicts, leads, open_)
