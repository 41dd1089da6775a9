"""Business rules shared by the API and the evaluation (#27): standard library only.

:mod:`~recsys_batch.rules.ruleset` reads and checks a rule set (a scenario's TOML file, a
stored scenario, a request's query parameters); :mod:`~recsys_batch.rules.engine` builds a
customer's answer under it, from what :mod:`~recsys_batch.rules.prepared` works out once for
every customer. Importing this package loads no third-party module.
"""

from recsys_batch.rules.engine import (
    NEW,
    OWN,
    POPULAR,
    Lists,
    Served,
    apply_rules,
    bought_items,
    serve,
)
from recsys_batch.rules.prepared import NO_SHOP_STATE, Prepared, ShopState, prepare
from recsys_batch.rules.ruleset import NO_RULES, RULE_NAMES, RuleError, RuleSet, parse_rules

__all__ = [
    "NEW",
    "NO_RULES",
    "NO_SHOP_STATE",
    "OWN",
    "POPULAR",
    "RULE_NAMES",
    "Lists",
    "Prepared",
    "RuleError",
    "RuleSet",
    "Served",
    "ShopState",
    "apply_rules",
    "bought_items",
    "parse_rules",
    "prepare",
    "serve",
]
