"""The offline cost of a rule set (#27 item 4) on a literal backtest-sized example.

Three evaluated users, lists, attributes, a popular list and a test window small enough that
every served answer and every figure is known by hand.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from recsys_batch.config import EvaluationConfig
from recsys_batch.data import columns as C
from recsys_batch.evaluation.protocol import HeldOut
from recsys_batch.evaluation.scenario_eval import (
    PLAIN,
    SCENARIO,
    ServedInputs,
    item_attributes,
    scenario_comparison,
    served_answers,
)
from recsys_batch.publish.versions import items_mapping
from recsys_batch.rules import NO_RULES, Lists, apply_rules, bought_items, parse_rules
from recsys_batch.run.executors import _item_attributes

CATEGORY = {
    **{101: "A", 102: "A", 103: "B", 104: "B", 105: "C", 106: "D", 107: "E"},
    **{201: "F", 202: "G", 203: "H", 204: "I", 205: "J", 206: "K"},
    **{301: "A", 302: "A", 303: "A"},
    **{901: "L", 902: "M", 903: "A", 904: "N"},
    **{150: "X", 151: "Y"},
}
OWN = {
    10: [101, 102, 103, 104, 105, 106, 107],  # two categories repeat in the top 5
    20: [201, 202, 203, 204, 205, 206],  # six categories: no cap binds
    30: [301, 302, 303],  # a short list, all of category A
}
POPULAR = [901, 902, 903, 904]
TRUTH = {10: [102, 106], 20: [201, 202], 30: [302]}
USERS = pl.DataFrame({C.USER: [10, 20, 30]}, schema={C.USER: pl.Int64})
CFG = EvaluationConfig(bootstrap_draws=200)


def ranked(lists: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(u, i, r) for u, items in lists.items() for r, i in enumerate(items, 1)]
    return pl.DataFrame(
        rows, schema=[(C.USER, pl.Int64), (C.ITEM, pl.Int64), (C.RANK, pl.Int32)], orient="row"
    )


def pairs(lists: dict[int, list[int]]) -> pl.DataFrame:
    return ranked(lists).select(C.USER, C.ITEM)


def attributes() -> dict[int, dict[str, object]]:
    return {item: {C.CATEGORY: cat, C.DEPARTMENT: "GROCERY"} for item, cat in CATEGORY.items()}


def held(bought: dict[int, list[int]]) -> HeldOut:
    truth = pairs(TRUTH)
    return HeldOut(
        truth=truth,
        spend=truth.with_columns(pl.lit(2.0).alias(C.SALES)),
        bought=pairs(bought),
    )


def inputs(bought: dict[int, list[int]], new: dict[int, list[int]] | None = None) -> ServedInputs:
    return ServedInputs(
        own=ranked(OWN),
        bought=pairs(bought),
        popular=POPULAR,
        attributes=attributes(),
        new=None if new is None else ranked(new),
    )


def answers_of(frame: pl.DataFrame) -> dict[int, list[int]]:
    return {
        u: frame.filter(pl.col(C.USER) == u).sort(C.RANK)[C.ITEM].to_list()
        for u in frame[C.USER].unique().sort()
    }


class TestMaxPerCategory:
    """``max_per_category = 1``: exactly the slots of a repeated category change."""

    rules = parse_rules({"max_per_category": 1})

    def test_answers_by_hand(self) -> None:
        """Catches a cap applied to the plain answer, a refill that breaks the cap, or a
        short answer padded with a violation (user 30 has only 4 categories to offer)."""
        ruled = served_answers(inputs({}), USERS, self.rules, 5)
        plain = served_answers(inputs({}), USERS, NO_RULES, 5)
        assert answers_of(plain.recommendations) == {
            10: [101, 102, 103, 104, 105],
            20: [201, 202, 203, 204, 205],
            30: [301, 302, 303, 901, 902],  # the short own list refilled from popular
        }
        assert answers_of(ruled.recommendations) == {
            10: [101, 103, 105, 106, 107],  # 102 (A) and 104 (B) make way for 106, 107
            20: [201, 202, 203, 204, 205],
            30: [301, 901, 902, 904],  # 302, 303 and 903 are A: one place stays empty
        }
        assert dict(ruled.short.iter_rows()) == {10: 0, 20: 0, 30: 1}
        sources = ruled.recommendations.filter(pl.col(C.USER) == 30)["source"].to_list()
        assert sources == ["own", "popular", "popular", "popular"]

    def test_figures_by_hand(self) -> None:
        """P@5 counts a short answer's empty place as a miss; the interval is the paired
        difference (scenario minus plain) over the same three users."""
        found = scenario_comparison(inputs({}), self.rules, held({}), USERS, CFG)
        plain, ruled = ({r["list"]: r for r in found["rows"]}[n] for n in (PLAIN, SCENARIO))
        # hits: plain 102 | 201, 202 | 302; scenario 106 | 201, 202 | none
        assert plain["precision@5"] == pytest.approx((1 + 2 + 1) / 15)
        assert ruled["precision@5"] == pytest.approx((1 + 2 + 0) / 15)
        assert plain["revenue@5"] == pytest.approx((2 + 4 + 2) / 3)
        assert ruled["revenue@5"] == pytest.approx((2 + 4 + 0) / 3)
        assert (plain["short_share"], ruled["short_share"]) == (0.0, pytest.approx(1 / 3))
        assert ruled["mean_short_by"] == pytest.approx(1 / 3)
        assert found["changed_share"] == pytest.approx(2 / 3)
        diff = found["precision_diff"]
        assert diff["mean"] == pytest.approx(-1 / 15) and diff["users"] == 3
        assert diff["lo"] <= diff["mean"] <= diff["hi"] <= 0.0
        # nothing was bought before: every slot is new, so new_hit is the hit rate
        assert plain["new_share"] == ruled["new_share"] == 1.0
        assert plain["new_hit"] == pytest.approx(4 / 15)
        assert ruled["new_hit"] == pytest.approx(3 / 14)
        new_hit = found["new_hit_diff"]
        assert (new_hit["model"], new_hit["anchor"]) == (SCENARIO, PLAIN)
        assert new_hit["mean"] == pytest.approx(3 / 14 - 4 / 15)
        assert found["rules"] == {"max_per_category": 1} and found["k"] == 5


class TestMinNew:
    """``min_new = 2`` moves two items never bought into a list of repeat purchases."""

    rules = parse_rules({"min_new": 2})
    bought = {10: OWN[10], 20: [], 30: []}  # user 10 bought their whole own list before

    def test_new_items_list_fills_the_reserved_places(self) -> None:
        """Catches the optional new-items list being ignored (popular would come in)."""
        served = served_answers(inputs(self.bought, {10: [150, 151]}), USERS, self.rules, 5)
        mine = served.recommendations.filter(pl.col(C.USER) == 10)
        assert mine[C.ITEM].to_list() == [101, 102, 103, 150, 151]
        assert mine["source"].to_list() == ["own", "own", "own", "new", "new"]

    def test_without_a_new_items_list_the_reserved_places_stay_empty(self) -> None:
        """Catches bought items read from the wrong list (with no bought items known, the
        plain top 5 of user 10 would stay) and popular items counted as new (a version does
        not store which popular items the customer bought: 901 and 902 would come in)."""
        served = served_answers(inputs(self.bought), USERS, self.rules, 5)
        assert answers_of(served.recommendations)[10] == [101, 102, 103]

    def test_bought_is_what_the_repeat_reasons_tell_the_api(self) -> None:
        """The engine sees the own items whose stored reason is a repeat purchase as bought,
        and never counts a popular item as new: user 10 bought popular item 901 too, which
        no reason says, so neither the API nor this evaluation serves it in a reserved
        place."""
        bought = {10: [*OWN[10], 901]}
        served = served_answers(inputs(bought), USERS.head(1), self.rules, 5)
        own = OWN[10][:20]
        reasons = [{"code": "repeat" if i in bought[10] else "als"} for i in own]
        api = apply_rules(
            Lists(own, (), bought_items(own, reasons)), POPULAR, attributes(), self.rules, 5
        )
        assert served.recommendations[C.ITEM].to_list() == api.items == [101, 102, 103]
        assert api.short_by == 2
        found = scenario_comparison(inputs(bought), self.rules, held(bought), USERS.head(1), CFG)
        ruled = {r["list"]: r for r in found["rows"]}[SCENARIO]
        assert ruled["new_share"] == pytest.approx(0.0)  # three own items, all bought


def test_item_attributes_are_the_nightlys() -> None:
    """The attributes a version publishes for the served items, decoded as the API decodes
    them (catches a second, drifting definition of the columns or of missing values)."""
    items = pl.DataFrame(
        {
            C.ITEM: [101, 102, 103],
            C.DEPARTMENT: ["GROCERY", "PRODUCE", None],
            C.BRAND: ["National", "Private", "National"],
            C.CATEGORY: ["A", None, "B"],
            C.SUB_CATEGORY: ["A1", "B1", "B2"],
            C.PACKAGE_SIZE: ["1 LB", None, "12 OZ"],
            "manufacturer": [1, 2, 3],  # not an attribute a version publishes
        }
    )
    served = [101, 102]
    nightly = items_mapping(_item_attributes(items, served))
    assert item_attributes(items.lazy(), served) == {
        int(item): json.loads(value) for item, value in nightly.items()
    }
    assert item_attributes(None, served) == {}
