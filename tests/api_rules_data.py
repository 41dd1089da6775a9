"""One small published world for the API tests of scenarios, rules and shop state (#26, #27).

User 1's list, new-items list, item attributes, popular list, unavailable items and
promotions, with the answer each rule must give, worked out by hand from the rules in
docs/api.md (not by calling the engine): the unit tests (fakeredis) and the real-Redis tests
check the same table.
"""

from __future__ import annotations

from typing import Any

from recsys_batch.config import RedisConfig
from recsys_batch.publish.store import Client
from recsys_batch.rules import RuleSet
from tests.publishing import publish_users

USERS = {1: [11, 12, 13, 14, 15, 16], 2: [21, 22, 23]}
REASONS = {1: ["r3.4", "a", "r2.1", "b", "t", "a"], 2: ["a", "a", "a"]}
"""User 1 bought 11 and 13 (repeat reasons); the other items they never bought."""
BOUGHT = {11, 13}
NEW_ITEMS = {1: [(31, "promoted"), (32, "category"), (33, "similar_customers")]}
NEW_REASONS = [{"code": "promoted"}, {"code": "category"}, {"code": "als"}]
POPULAR = [91, 92, 93, 11, 94]


def _item(department: str, category: str, brand: str, price: float) -> dict[str, Any]:
    return {
        "department": department,
        "category": category,
        "sub_category": category.lower(),
        "brand": brand,
        "price": price,
    }


ITEMS = {
    11: _item("GROCERY", "A", "National", 1.0),
    12: _item("GROCERY", "A", "Private", 2.0),
    13: _item("PRODUCE", "B", "National", 3.0),
    14: _item("PRODUCE", "B", "Private", 4.0),
    15: _item("DRUG GM", "C", "National", 5.0),
    16: _item("DRUG GM", "C", "Private", 6.0),
    31: _item("GROCERY", "D", "National", 1.5),
    32: _item("PRODUCE", "E", "National", 2.5),
    33: _item("MEAT", "F", "National", 3.5),
    **{i: _item("GROCERY", "G", "National", 9.0) for i in (21, 22, 23, 91, 92, 93, 94)},
}
PROMOTED = [15, 91]
"""On promotion: 15 (user 1's own) and 91 (popular, never led by ``promoted_first``)."""
UNAVAILABLE = [11]
"""Unavailable in every store."""
STORE, STORE_UNAVAILABLE = 7, [12]
SCENARIOS = {
    "one_per_category": RuleSet(max_per_category=1),
    "weekend": RuleSet(min_new=2, max_per_category=1),
}

RULE_CASES: list[tuple[str, str, list[int]]] = [
    # (rule, query for user 1, the answer)
    ("min_new", "min_new=3&k=4", [11, 12, 14, 15]),
    ("max_per_category", "max_per_category=1&k=5", [11, 13, 15, 31, 32]),
    ("max_per_sub_category", "max_per_sub_category=1&k=5", [11, 13, 15, 31, 32]),
    ("departments", "departments=produce&k=3", [13, 14, 32]),
    ("exclude_departments", "exclude_departments=GROCERY,DRUG%20GM&k=3", [13, 14, 32]),
    ("brands", "brands=Private&k=3", [12, 14, 16]),
    ("price_min", "price_min=5&k=3", [15, 16, 91]),
    ("price_max", "price_max=1.5&k=3", [11, 31]),
    ("promoted_first", "promoted_first=2&k=3", [15, 11, 12]),
    ("scenario", "scenario=weekend&k=4", [12, 14, 15, 31]),
    ("scenario overridden", "scenario=one_per_category&max_per_category=2&k=5", USERS[1][:5]),
    ("new_only", "new_only=true&k=3", [31, 32, 33]),
    ("new_only refill skips bought", "new_only=true&k=7&exclude=32", [31, 33, 91, 92, 93, 94]),
]
"""Every rule, a scenario, a request rule over a scenario's, and the new-items list (the
shop state of :func:`publish_world` applies only where a case names it: see ``SHOP_CASES``)."""
SHOP_CASES: list[tuple[str, str, list[int]]] = [
    ("unavailable", "k=3", [12, 13, 14]),
    ("unavailable in the store", "store=7&k=3", [13, 14, 15]),
    ("unavailable with rules", "max_per_category=1&k=4", [12, 13, 15, 31]),
]
"""Answers once ``UNAVAILABLE`` (and the store's) are marked (:func:`mark_shop`)."""


def publish_world(client: Client, cfg: RedisConfig) -> str:
    """Publish the world (lists, new items, attributes) and store its scenarios; returns the
    live version. No item is unavailable yet and the promotion runs."""
    from recsys_batch.publish import shop_state  # noqa: PLC0415 - polars-free importers first

    version = publish_users(
        client,
        USERS,
        POPULAR,
        cfg,
        reasons=REASONS,
        items=ITEMS,
        new_items=NEW_ITEMS,
    )
    for name, rules in SCENARIOS.items():
        shop_state.set_scenario(client, name, rules, cfg)
    shop_state.set_promotion(client, PROMOTED, _far_future(), cfg)
    return version


def mark_shop(client: Client, cfg: RedisConfig) -> None:
    """Mark ``UNAVAILABLE`` everywhere and ``STORE_UNAVAILABLE`` at ``STORE``."""
    from recsys_batch.publish import shop_state  # noqa: PLC0415

    shop_state.mark_unavailable(client, UNAVAILABLE, cfg)
    shop_state.mark_unavailable(client, STORE_UNAVAILABLE, cfg, store=STORE)


def _far_future() -> Any:
    from datetime import date  # noqa: PLC0415

    return date(2099, 12, 31)
