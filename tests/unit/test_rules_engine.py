"""The rule engine (#27): every answer honours every rule, checked against a naive reference.

The property tests draw random lists (with repeats and overlaps), item attributes (some
missing), rule sets, exclusions, unavailable and promoted items from a small id range, so
the lists collide often. Three independent checks:

- :func:`violations` states each rule from its definition and lists what an answer breaks;
- :func:`reference` builds the answer the naive way (re-checking the whole answer for every
  item) and must give exactly the engine's answer;
- :func:`fits` proves an answer short of k could not take one more item without breaking
  a rule.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from api.answers import pick
from recsys_batch.rules import (
    NO_RULES,
    Lists,
    RuleError,
    RuleSet,
    ShopState,
    apply_rules,
    bought_items,
    parse_rules,
    prepare,
    serve,
)


@dataclass(frozen=True)
class Case:
    """Everything one answer is built from."""

    lists: Lists
    popular: list[int]
    attributes: dict[int, dict[str, Any]]
    rules: RuleSet
    k: int
    exclude: frozenset[int]
    shop: ShopState

    def served(self) -> Any:
        return apply_rules(
            self.lists,
            self.popular,
            self.attributes,
            self.rules,
            self.k,
            exclude=self.exclude,
            shop=self.shop,
        )


# --- the rules from their definitions ---------------------------------------------------------


def attr(case: Case, item: int, name: str) -> Any:
    return case.attributes.get(item, {}).get(name)


def allowed_alone(case: Case, item: int) -> bool:
    """Not excluded, available, and passing the department, brand and price rules."""
    r = case.rules
    if item in case.exclude or item in case.shop.unavailable:
        return False
    dept = attr(case, item, "department")
    dept = dept.lower() if isinstance(dept, str) else None
    if r.departments is not None and dept not in {d.lower() for d in r.departments}:
        return False
    if dept is not None and dept in {d.lower() for d in r.exclude_departments}:
        return False
    brand = attr(case, item, "brand")
    if r.brands is not None and (
        not isinstance(brand, str) or brand.lower() not in {b.lower() for b in r.brands}
    ):
        return False
    if r.price_min is not None or r.price_max is not None:
        price = attr(case, item, "price")
        if isinstance(price, bool) or not isinstance(price, int | float):
            return False
        if r.price_min is not None and price < r.price_min:
            return False
        if r.price_max is not None and price > r.price_max:
            return False
    return True


def fits(case: Case, items: Sequence[int]) -> bool:
    """Whether ``items`` as a set honours every rule (order and promotions aside)."""
    r, k = case.rules, max(case.k, 0)
    if len(items) > k or len(set(items)) != len(items):
        return False
    if not all(allowed_alone(case, i) for i in items):
        return False
    for name, cap in (("category", r.max_per_category), ("sub_category", r.max_per_sub_category)):
        groups = Counter(attr(case, i, name) for i in items)
        if cap is not None and groups and max(groups.values()) > cap:
            return False
    bought = sum(not known_new(case, i) for i in items)
    return bought <= k - min(r.min_new, k)


def known_new(case: Case, item: int) -> bool:
    """Known never bought: not a bought item and held by the own or the new-items list (a
    version does not store which popular items the customer bought)."""
    listed = item in case.lists.own or item in case.lists.new
    return item not in case.lists.bought and listed


def relevance(case: Case) -> dict[int, tuple[int, str]]:
    """Each item of the lists -> (position among own, new, popular; source of its first
    occurrence)."""
    found: dict[int, tuple[int, str]] = {}
    for source, items in (
        ("own", case.lists.own),
        ("new", case.lists.new),
        ("popular", case.popular),
    ):
        for item in items:
            found.setdefault(item, (len(found), source))
    return found


def violations(case: Case, served: Any) -> list[str]:
    """What ``served`` breaks, each rule stated from its definition (empty: nothing)."""
    broken = []
    items, order = served.items, relevance(case)
    if not fits(case, items):
        broken.append("the items break k, distinctness, a filter, a cap or min_new")
    if served.short_by != max(case.k, 0) - len(items) or len(served.sources) != len(items):
        broken.append("short_by or sources do not match the items")
    if any(i not in order or order[i][1] != s for i, s in zip(items, served.sources, strict=False)):
        broken.append("an item not from the lists, or with the wrong source")
    head, rest = items[: served.promoted], items[served.promoted :]
    if served.promoted > case.rules.promoted_first or any(
        i not in case.shop.promoted or order[i][1] == "popular" for i in head
    ):
        broken.append("a promoted item that is not the customer's own or not on promotion")
    for part in (head, rest):
        if [order[i][0] for i in part] != sorted(order[i][0] for i in part):
            broken.append("relevance order not kept")
    promoted_left = [i for i in rest if i in case.shop.promoted and order[i][1] != "popular"]
    if promoted_left and served.promoted < case.rules.promoted_first:
        broken.append("an own item on promotion left below while promoted_first has room")
    return broken


def reference(case: Case) -> tuple[list[int], int]:
    """The answer built naively: re-check the whole answer before taking each item."""
    order = sorted(relevance(case).items(), key=lambda pair: pair[1][0])
    pool = [(i, src) for i, (_, src) in order if allowed_alone(case, i)]
    chosen: list[int] = []
    min_new = min(case.rules.min_new, max(case.k, 0))
    for item, _ in pool:
        if sum(known_new(case, c) for c in chosen) >= min_new:
            break
        if known_new(case, item) and fits(case, [*chosen, item]):
            chosen.append(item)
    head: list[int] = []
    for item, src in pool:
        if len(head) >= case.rules.promoted_first:
            break
        if src != "popular" and item in case.shop.promoted:
            if item in chosen:
                head.append(item)
            elif fits(case, [*chosen, item]):
                chosen.append(item)
                head.append(item)
    for item, _ in pool:
        if item not in chosen and fits(case, [*chosen, item]):
            chosen.append(item)
    return head + [i for i, _ in pool if i in chosen and i not in head], len(head)


# --- strategies ------------------------------------------------------------------------------

ids = st.integers(0, 12)
item_lists = st.lists(ids, max_size=12)
id_sets = st.frozensets(ids, max_size=8)
names = ["GROCERY", "grocery", "PRODUCE", "DRUG GM", "MEAT"]
attribute_values = st.fixed_dictionaries(
    {},
    optional={
        "category": st.sampled_from(["a", "b", "c"]) | st.none(),
        "sub_category": st.sampled_from(["x", "y"]) | st.none(),
        "department": st.sampled_from(names) | st.none(),
        "brand": st.sampled_from(["National", "Private", "private"]) | st.none(),
        "price": st.none() | st.integers(0, 9) | st.floats(0, 9, allow_nan=False),
    },
)
name_lists = st.lists(st.sampled_from([*names, "Private", "national"]), min_size=1, max_size=3)
rule_values = st.fixed_dictionaries(
    {},
    optional={
        "min_new": st.integers(0, 6),
        "max_per_category": st.integers(1, 3),
        "max_per_sub_category": st.integers(1, 4),
        "departments": name_lists,
        "exclude_departments": name_lists,
        "brands": name_lists,
        "price_min": st.floats(0, 9, allow_nan=False),
        "price_max": st.floats(0, 9, allow_nan=False),
        "promoted_first": st.integers(0, 4),
    },
)


FILTER_RULES = ("departments", "exclude_departments", "brands", "price_min", "price_max")


@st.composite
def cases(draw: st.DrawFn, filters: bool = True) -> Case:
    """A random case; ``filters=False`` draws no filter rule, so the rules that interact
    (``min_new``, the caps, ``promoted_first``) meet long candidate lists more often."""
    values = draw(rule_values)
    if not filters:
        values = {name: v for name, v in values.items() if name not in FILTER_RULES}
    assume(values.get("price_min", 0) <= values.get("price_max", math.inf))
    return Case(
        lists=Lists(draw(item_lists), draw(item_lists), draw(id_sets)),
        popular=draw(item_lists),
        attributes=draw(st.dictionaries(ids, attribute_values)),
        rules=parse_rules(values),
        k=draw(st.integers(-1, 10)),
        exclude=draw(id_sets),
        shop=ShopState(unavailable=draw(id_sets), promoted=draw(id_sets)),
    )


class TestProperties:
    @settings(max_examples=300)
    @given(cases() | cases(filters=False))
    def test_every_answer_honours_every_rule(self, case: Case) -> None:
        assert violations(case, case.served()) == []

    @settings(max_examples=300)
    @given(cases() | cases(filters=False))
    def test_same_answer_as_the_naive_reference(self, case: Case) -> None:
        """Catches any change of which items are taken or their order, e.g. ``min_new``
        counting bought items, promotions from the popular list, or a list read out of turn."""
        served = case.served()
        assert (served.items, served.promoted) == reference(case)

    @given(cases() | cases(filters=False))
    def test_a_short_answer_could_not_take_one_more_item(self, case: Case) -> None:
        """Catches a refill that stops early or skips a list (shorter than the rules force)."""
        served = case.served()
        left_out = set(relevance(case)) - set(served.items)
        if served.short_by > 0:
            assert not [i for i in left_out if fits(case, [*served.items, i])]

    @settings(max_examples=150)
    @given(
        cases() | cases(filters=False),
        st.lists(st.tuples(item_lists, item_lists, id_sets, id_sets), max_size=4),
    )
    def test_one_preparation_serves_every_customer(
        self, case: Case, others: list[tuple[list[int], list[int], frozenset[int], frozenset[int]]]
    ) -> None:
        """The API prepares once per rule set and shop state and serves every customer from
        it (``prepare`` then ``serve``): each answer is still the naive reference's. Catches
        a preparation that remembers one customer's lists or exclusions for the next."""
        prepared = prepare(case.popular, case.attributes, case.rules, case.shop)
        customers = [case] + [
            Case(
                Lists(own, new, bought),
                case.popular,
                case.attributes,
                case.rules,
                case.k,
                exclude,
                case.shop,
            )
            for own, new, bought, exclude in others
        ]
        for customer in customers + customers[::-1]:
            served = serve(prepared, customer.lists, customer.k, exclude=customer.exclude)
            assert (served.items, served.promoted) == reference(customer)
            assert violations(customer, served) == []

    @given(item_lists, item_lists, st.lists(ids, max_size=6), st.integers(0, 10))
    def test_without_rules_it_is_todays_answer(
        self, own: list[int], popular: list[int], exclude: list[int], k: int
    ) -> None:
        """No rule, no new-items list, no shop state: exactly ``api.answers.pick`` (own, then
        the popular refill, minus exclusions)."""
        served = apply_rules(Lists(own), popular, {}, NO_RULES, k, exclude=frozenset(exclude))
        items, from_popular = pick(own, popular, k, exclude)
        assert (served.items, served.sources.count("popular")) == (items, from_popular)


def engine(
    own: Sequence[int],
    rules: Mapping[str, object],
    k: int,
    *,
    new: Sequence[int] = (),
    bought: Collection[int] = (),
    popular: Sequence[int] = (),
    attributes: Mapping[int, Mapping[str, object]] | None = None,
    unavailable: Collection[int] = (),
    promoted: Collection[int] = (),
) -> tuple[list[int], list[str], int, int]:
    served = apply_rules(
        Lists(own, new, frozenset(bought)),
        popular,
        attributes or {},
        parse_rules(rules),
        k,
        shop=ShopState(frozenset(unavailable), frozenset(promoted)),
    )
    return served.items, served.sources, served.promoted, served.short_by


CATS = {1: {"category": "a"}, 2: {"category": "a"}, 3: {"category": "b"}, 4: {}, 5: {}}


class TestExamples:
    def test_min_new_leaves_places_empty_rather_than_give_them_to_bought_items(self) -> None:
        """Catches padding the reserved places with bought items when no new item is left."""
        assert engine([1, 2, 3], {"min_new": 2}, 3, bought={1, 2, 3}, new=[9]) == (
            [1, 9],
            ["own", "new"],
            0,
            1,
        )

    def test_min_new_secures_new_items_before_the_caps_fill(self) -> None:
        """Catches a ``min_new`` step that lets a bought item take the category first."""
        attrs = {1: {"category": "a"}, 2: {"category": "a"}}
        rules = {"min_new": 1, "max_per_category": 1}
        assert engine([1, 2], rules, 2, bought={1}, attributes=attrs) == ([2], ["own"], 0, 1)

    def test_min_new_takes_the_new_list_never_a_popular_item(self) -> None:
        """A popular item may have been bought (not stored): it never fills a min_new place,
        the answer is short instead. Mutation caught: counting popular items as new."""
        got = engine([1, 2], {"min_new": 2}, 3, bought={1, 2}, new=[7], popular=[1, 8])
        assert got == ([1, 7], ["own", "new"], 0, 1)
        got = engine([1, 2], {"min_new": 2}, 3, bought={1, 2}, new=[7, 9], popular=[1, 8])
        assert got == ([1, 7, 9], ["own", "new", "new"], 0, 0)

    def test_category_cap_counts_items_without_a_category_together(self) -> None:
        assert engine([1, 2, 3, 4, 5], {"max_per_category": 1}, 5, attributes=CATS)[0] == [1, 3, 4]

    def test_departments_match_whatever_the_case_and_need_a_department(self) -> None:
        attrs = {1: {"department": "grocery"}, 2: {"department": "MEAT"}, 3: {}}
        assert engine([1, 2, 3], {"departments": "GROCERY"}, 3, attributes=attrs)[0] == [1]
        kept = engine([1, 2, 3], {"exclude_departments": ["Meat"]}, 3, attributes=attrs)[0]
        assert kept == [1, 3]

    def test_a_price_rule_serves_no_item_without_a_price(self) -> None:
        """The version's items hash has no ``price`` today: a price rule empties the answer."""
        attrs = {1: {"price": 1.5}, 2: {"department": "MEAT"}, 3: {"price": 4}}
        assert engine([1, 2, 3], {"price_max": 2}, 3, attributes=attrs) == ([1], ["own"], 0, 2)

    def test_promoted_first_moves_only_the_customers_own_items(self) -> None:
        got = engine([1, 2, 3], {"promoted_first": 2}, 4, new=[4], popular=[5], promoted={3, 4, 5})
        assert got == ([3, 4, 1, 2], ["own", "new", "own", "own"], 2, 0)

    def test_unavailable_items_are_never_served_even_from_the_refill(self) -> None:
        assert engine([1, 2], {}, 3, popular=[2, 3, 4], unavailable={2, 3})[0] == [1, 4]

    def test_bought_items_are_the_own_items_with_a_repeat_reason(self) -> None:
        reasons: list[dict[str, object]] = [{"code": "repeat"}, {"code": "als"}, {"code": "repeat"}]
        assert bought_items([7, 8, 9], reasons) == {7, 9}

    def test_no_places_no_items(self) -> None:
        assert engine([1], {"min_new": 3}, 0) == ([], [], 0, 0)


def test_bad_rules_never_reach_the_engine() -> None:
    with pytest.raises(RuleError, match="min_new"):
        parse_rules({"min_new": -1})


def test_import_loads_no_third_party_module() -> None:
    """The API imports the engine: it must load none of polars, numpy, redis, pydantic."""
    code = (
        "import sys, recsys_batch.rules; "
        "print(','.join(m for m in ('polars', 'numpy', 'redis', 'pydantic', 'fastapi') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
