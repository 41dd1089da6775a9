"""A rule set (a *scenario*): its names, values and how they are read and checked (#27).

Standard library only, like :mod:`recsys_batch.publish.keys`: the API imports it to read
``?scenario=`` and the rules given as query parameters, the CLI to read a scenario's TOML
file, and both get the same error for the same bad input.

The rules and their values (every rule is optional and all combine)::

    min_new = 2                     at least 2 items the customer never bought
    max_per_category = 1            at most 1 item per item attribute ``category``
    max_per_sub_category = 1        at most 1 item per ``sub_category``
    departments = ["GROCERY"]       only items of these departments
    exclude_departments = ["DRUG GM"]   no item of these departments
    brands = ["Private"]            only items of these brands
    price_min = 0.5                 only items whose median unit price is at least this
    price_max = 5.0                 ... and at most this
    promoted_first = 2              up to 2 of the customer's own items on promotion go first

Department and brand names match whatever their case. A query parameter gives a list as
comma-separated names (``departments=GROCERY,PRODUCE``) and a number as its decimal text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from recsys_batch.errors import ConfigError

MAX_COUNT = 1000
"""Largest value of a count rule (``min_new``, ``max_per_*``, ``promoted_first``)."""
MAX_NAMES = 100
"""Most names a list rule (``departments``, ``exclude_departments``, ``brands``) may hold."""
MAX_NAME_CHARS = 100
"""Longest department or brand name accepted."""


class RuleError(ConfigError):
    """A rule set names an unknown rule or gives a rule a bad value (exit code 2, HTTP 422).

    Attributes
    ----------
    rule
        The rule's name as given (the unknown name, or the rule whose value is bad).
    """

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Business rules applied to a customer's answer; the defaults apply no rule."""

    min_new: int = 0
    """At least this many items the customer has never bought (0: no such rule)."""
    max_per_category: int | None = None
    """At most this many items per item ``category`` (None: no cap)."""
    max_per_sub_category: int | None = None
    """At most this many items per item ``sub_category`` (None: no cap)."""
    departments: tuple[str, ...] | None = None
    """Only items of these departments (None: any department)."""
    exclude_departments: tuple[str, ...] = ()
    """No item of these departments."""
    brands: tuple[str, ...] | None = None
    """Only items of these brands (None: any brand)."""
    price_min: float | None = None
    """Only items whose median unit price is at least this (None: no floor)."""
    price_max: float | None = None
    """Only items whose median unit price is at most this (None: no ceiling)."""
    promoted_first: int = 0
    """Up to this many of the customer's own items on promotion move to the top."""

    @property
    def is_empty(self) -> bool:
        """True when no rule is set (the answer is the plain list with its refill)."""
        return self is NO_RULES or self == NO_RULES

    def to_dict(self) -> dict[str, Any]:
        """The rules that are set, by name, with JSON/TOML values (what :func:`parse_rules`
        reads back to an equal rule set)."""
        found: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value != getattr(NO_RULES, field.name):
                found[field.name] = list(value) if isinstance(value, tuple) else value
        return found


NO_RULES = RuleSet()


def _number_text(raw: object) -> str | None:
    """A query parameter's text, stripped, or None for anything that is not a string."""
    return raw.strip() if isinstance(raw, str) else None


def _count(name: str, raw: object, low: int) -> int:
    text = _number_text(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif text is not None and text.isascii() and text.isdigit():
        value = int(text)
    else:
        value = None
    if value is None or not low <= value <= MAX_COUNT:
        expected = f"expected a whole number {low}..{MAX_COUNT}"
        msg = f"bad value for rule {name!r}: {_shown(raw)} ({expected})"
        raise RuleError(name, msg)
    return value


def _at_least_zero(name: str, raw: object) -> int:
    return _count(name, raw, 0)


def _at_least_one(name: str, raw: object) -> int:
    return _count(name, raw, 1)


def _price(name: str, raw: object) -> float:
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif (text := _number_text(raw)) is not None:
        try:
            value = float(text)
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or value < 0:
        msg = f"bad value for rule {name!r}: {_shown(raw)} (expected a price >= 0, e.g. 2.5)"
        raise RuleError(name, msg)
    return value


def _names(name: str, raw: object) -> tuple[str, ...]:
    parts: list[object]
    if isinstance(raw, str):
        parts = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        parts = list(raw)
    else:
        parts = [None]  # neither a list nor text: bad value below
    names = tuple(p.strip() for p in parts if isinstance(p, str))
    if (
        len(names) != len(parts)
        or not names
        or len(names) > MAX_NAMES
        or not all(0 < len(n) <= MAX_NAME_CHARS for n in names)
    ):
        msg = (
            f"bad value for rule {name!r}: {_shown(raw)} (expected a list of 1..{MAX_NAMES} "
            f'non-empty names, e.g. ["GROCERY", "PRODUCE"], or "GROCERY,PRODUCE" in a query)'
        )
        raise RuleError(name, msg)
    return names


def _shown(raw: object) -> str:
    """The bad value as an error message quotes it (at most 80 characters)."""
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "min_new": _at_least_zero,
    "max_per_category": _at_least_one,
    "max_per_sub_category": _at_least_one,
    "departments": _names,
    "exclude_departments": _names,
    "brands": _names,
    "price_min": _price,
    "price_max": _price,
    "promoted_first": _at_least_zero,
}
RULE_NAMES = tuple(_PARSERS)
"""Every rule name, in the order the docs list them."""


def parse_rules(values: Mapping[str, object], base: RuleSet = NO_RULES) -> RuleSet:
    """The rule set ``base`` with the rules of ``values`` set on top (they override it).

    ``values`` is a parsed TOML file, a stored scenario (JSON) or a request's query
    parameters: numbers may be given as their decimal text and lists as comma-separated
    names.

    Raises
    ------
    RuleError
        A name that is not a rule, a value of the wrong type or out of range, or a
        ``price_min`` above the ``price_max`` of the result; the error names the rule.
    """
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        parser = _PARSERS.get(name)
        if parser is None:
            msg = f"unknown rule {_shown(name)}: the rules are {', '.join(RULE_NAMES)}"
            raise RuleError(str(name), msg)
        changes[name] = parser(name, raw)
    rules = replace(base, **changes) if changes else base
    if rules.price_min is not None and rules.price_max is not None:
        if rules.price_min > rules.price_max:
            name = "price_min" if "price_min" in changes else "price_max"
            msg = (
                f"bad value for rule {name!r}: price_min {rules.price_min:g} is above "
                f"price_max {rules.price_max:g}, so no item could be served"
            )
            raise RuleError(name, msg)
    return rules
