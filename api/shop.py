"""Shop state as the lookups see it: scenarios, unavailable items, promotions (#27).

The shop state (``recsys scenario|catalog|promo``, keys in
:mod:`recsys_batch.publish.shop_keys`) is small and shared by every customer, so the service
keeps a copy and refreshes it *inside the lookups' own pipeline*: a lookup pipeline sent
while the copy is older than ``shop_cache_seconds`` also carries ``HGETALL P:scenarios``,
``ZRANGEBYSCORE P:unavailable``, ``ZRANGEBYSCORE P:promo`` (and ``P:unavailable:S`` for each
store its requests name), and its answers use what that pipeline read. A lookup therefore
stays one round trip, and the staleness is bounded: the state an answer uses was read by a
pipeline *sent* at most ``shop_cache_seconds`` before the request's own pipeline, so a change
that ``recsys scenario|catalog|promo`` finished writing at T applies to every request sent
after ``T + shop_cache_seconds``. With ``shop_cache_seconds = 0`` every pipeline reads it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.errors import Unavailable
from api.live import LiveVersion
from recsys_batch.publish import shop_keys
from recsys_batch.rules import (
    NO_RULES,
    RULE_NAMES,
    Prepared,
    RuleError,
    RuleSet,
    ShopState,
    parse_rules,
    prepare,
)

log = logging.getLogger(__name__)

MAX_STORES = 4096
"""Stores whose unavailable items are kept at once (the oldest read is dropped beyond)."""
Command = tuple[bytes, ...]
"""One Redis command as its arguments."""
Ruling = tuple[Prepared, dict[str, Any]]
"""What the answers to one request shape share: the rule engine's prepared part
(:func:`recsys_batch.rules.prepare`) and the rules applied (``RuleSet.to_dict()``, shown in
every answer and never changed by its readers)."""
MAX_RULINGS = 256
"""Rulings kept per store (request shapes times live versions); beyond, they are dropped."""


@dataclass(frozen=True, slots=True)
class Options:
    """What a request asks of its answer beyond ``k`` and ``exclude`` (all optional)."""

    scenario: str | None = None
    """A stored scenario's name (checked well-formed, not yet known to exist)."""
    rules: tuple[tuple[str, object], ...] = ()
    """Rules given with the request (already checked alone), applied over the scenario's."""
    store: int | None = None
    """The request's store: its unavailable items are left out too."""
    new_only: bool = False
    """Serve the customer's new-items list (items they never bought) instead of their list."""
    ruled: bool = field(init=False, compare=False, repr=False)
    """True when the answer is built by the rule engine (and reads every list); worked out
    once, as a request's options are (a query's parse is cached) and read per lookup."""

    def __post_init__(self) -> None:
        ruled = self.scenario is not None or bool(self.rules) or self.new_only
        object.__setattr__(self, "ruled", ruled)  # frozen: the one way to set it


PLAIN = Options()


def scenario_name(name: str) -> str:
    """``name`` if well-formed, else :class:`RuleError` naming ``scenario``."""
    try:
        return shop_keys.check_scenario_name(name)
    except ValueError as exc:
        raise RuleError("scenario", str(exc)) from None


def request_options(
    values: Mapping[str, object],
    *,
    scenario: str | None = None,
    store: int | None = None,
    new_only: bool = False,
) -> Options:
    """The :class:`Options` of a request: ``values`` are its rules by name (checked here, so
    an unknown rule or a bad value is a :class:`RuleError` before anything is read)."""
    parse_rules(values)
    if scenario is not None:
        scenario_name(scenario)
    rules = tuple((name, tuple(v) if isinstance(v, list) else v) for name, v in values.items())
    return Options(scenario, rules, store, new_only)  # hashable: the rule sets are cached


def unknown_parameter(name: str, allowed: Iterable[str]) -> RuleError:
    """The error of a query parameter that is neither a documented one nor a rule."""
    known = ", ".join(allowed)
    msg = f"unknown parameter or rule {name[:80]!r}: the parameters are {known}; the rules are "
    return RuleError(name[:80], msg + ", ".join(RULE_NAMES))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pairs(raw: Any) -> list[tuple[Any, Any]]:
    """An ``HGETALL`` reply (a flat list from the wire, a dict from redis-py) as pairs."""
    if isinstance(raw, dict):
        return list(raw.items())
    values = list(raw or [])
    return list(zip(values[::2], values[1::2], strict=True))


def stored_scenario(name: str, value: Any) -> RuleSet | Unavailable:
    """A stored scenario's rules, or the 503 a request naming it gets (written by hand?)."""
    try:
        loaded = json.loads(value)
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")  # noqa: TRY301 - one message for both
        return parse_rules(loaded)
    except (ValueError, RuleError) as exc:
        detail = f"stored scenario {name!r} (P:scenarios) is not a rule set: {exc}"
        detail += " (fix: `recsys scenario set` it again from its file)"
        return Unavailable("corrupt_value", detail)


def _items(key: str, raw: Any) -> frozenset[int]:
    try:
        return shop_keys.decode_item_set(raw or [])
    except ValueError as exc:
        detail = f"{key}: {exc} (fix: `recsys catalog` / `recsys promo` write item ids)"
        raise Unavailable("corrupt_value", detail) from None


class ShopCache:
    """The service's copy of the shop state and when each part must be read again.

    Parameters
    ----------
    prefix
        Key prefix (``settings.redis.key_prefix``).
    seconds
        ``settings.api.shop_cache_seconds``: how long a read is used (module doc).
    clock, wall
        ``time.monotonic`` and ``time.time`` (tests pass their own).
    """

    def __init__(
        self,
        prefix: str,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self.wall = wall
        self.scenarios_key = shop_keys.scenarios_key(prefix)
        self.unavailable_key = shop_keys.unavailable_key(prefix)
        self.promo_key = shop_keys.promo_key(prefix)
        self._prefix = prefix
        self.scenarios: dict[str, RuleSet | Unavailable] = {}
        self.unavailable: frozenset[int] = frozenset()
        self.promoted: frozenset[int] = frozenset()
        self._read_at = float("-inf")
        """``clock()`` when the pipeline that read the shared part held now was sent."""
        self._stores: dict[int, tuple[float, frozenset[int]]] = {}
        """Store id -> (when its read was sent, its unavailable items), oldest read first."""
        self._rules: dict[tuple[str | None, tuple[tuple[str, object], ...]], RuleSet] = {}
        self._rulings: dict[int | None, dict[tuple[Options, str], Ruling]] = {}
        """Store -> (options, version) -> :class:`Ruling`, built from the shop state held
        now: dropped with the part (shared, or the store's) they were built from."""

    def reads(self, stores: Iterable[int]) -> tuple[list[Command], list[int | None], float]:
        """What a pipeline sent now must carry: its commands, what each part is (None for
        the shared part: 3 commands; a store id for that store's set: 1 command), and the
        send time to hand to :meth:`update`. A part is carried until a read of it sent less
        than ``seconds`` ago has come back, so a pipeline sent while another one's read is
        still in flight carries it too (the bound holds whichever reply arrives first)."""
        now = self.clock()
        commands: list[Command] = []
        parts: list[int | None] = []
        bounds = tuple(b.encode() for b in shop_keys.in_force(self.wall()))
        if now >= self._read_at + self.seconds:
            commands += [
                (b"HGETALL", self.scenarios_key.encode()),
                (b"ZRANGEBYSCORE", self.unavailable_key.encode(), *bounds),
                (b"ZRANGEBYSCORE", self.promo_key.encode(), *bounds),
            ]
            parts.append(None)
        for store in dict.fromkeys(stores):
            kept = self._stores.get(store)
            if kept is None or now >= kept[0] + self.seconds:
                key = shop_keys.unavailable_key(self._prefix, store)
                commands.append((b"ZRANGEBYSCORE", key.encode(), *bounds))
                parts.append(store)
        return commands, parts, now

    def update(self, parts: list[int | None], replies: list[Any], sent: float) -> None:
        """Keep what the commands of :meth:`reads` (sent at ``sent``) returned, unless a
        read sent later came back first."""
        at = 0
        for part in parts:
            if part is None:
                scenarios, unavailable, promoted = replies[at : at + 3]
                at += 3
                if sent < self._read_at:  # a later read already came back
                    continue
                held = (self.scenarios, self.unavailable, self.promoted)
                self.scenarios = {
                    _text(name): stored_scenario(_text(name), value)
                    for name, value in _pairs(scenarios)
                }
                self.unavailable = _items(self.unavailable_key, unavailable)
                self.promoted = _items(self.promo_key, promoted)
                if held != (self.scenarios, self.unavailable, self.promoted):
                    # Unchanged, the rulings stand, their verdicts too: re-judging every
                    # item met after each read was a CPU cost per request (#27).
                    self._rules = {}
                    self._rulings = {}
                self._read_at = sent
            else:
                raw = replies[at]
                at += 1
                kept = self._stores.pop(part, None)
                if kept is not None and sent < kept[0]:
                    self._stores[part] = kept
                    continue
                key = shop_keys.unavailable_key(self._prefix, part)
                self._stores[part] = (sent, _items(key, raw))
                if kept is None or kept[1] != self._stores[part][1]:
                    self._rulings.pop(part, None)
        while len(self._stores) > MAX_STORES:
            oldest = next(iter(self._stores))
            del self._stores[oldest]
            self._rulings.pop(oldest, None)

    def unavailable_at(self, store: int | None) -> frozenset[int]:
        """Items never served to a request of ``store`` (every store's, plus its own)."""
        if store is None:
            return self.unavailable
        kept = self._stores.get(store)
        if kept is None or not kept[1]:
            return self.unavailable
        return self.unavailable | kept[1]

    def rules(self, options: Options) -> RuleSet:
        """The rule set of a request: its scenario's rules with its own on top.

        Raises
        ------
        RuleError
            An unknown scenario (the message lists the stored ones), or request rules that
            contradict the scenario's (``price_min`` above its ``price_max``).
        Unavailable
            The stored scenario is not a rule set.
        """
        cache_key = (options.scenario, options.rules)
        found = self._rules.get(cache_key)
        if found is not None:
            return found
        base = NO_RULES
        if options.scenario is not None:
            stored = self.scenarios.get(options.scenario)
            if stored is None:
                known = ", ".join(sorted(self.scenarios)) or "none"
                msg = (
                    f"unknown scenario {options.scenario!r}: the scenarios are {known} "
                    "(recsys scenario list)"
                )
                raise RuleError("scenario", msg)
            if isinstance(stored, Unavailable):
                raise stored
            base = stored
        found = parse_rules(dict(options.rules), base)
        if len(self._rules) < 1024:
            self._rules[cache_key] = found
        return found

    def ruling(self, options: Options, live: LiveVersion) -> Ruling:
        """The :class:`Ruling` of the answers to ``options`` from ``live``, built once per
        shop-state read: the rule set, and the engine's popular list less the unavailable
        items with each item's verdict, so a request only walks its customer's lists.

        Raises
        ------
        RuleError, Unavailable
            As :meth:`rules`.
        """
        kept = self._rulings.get(options.store)
        if kept is None:
            kept = self._rulings[options.store] = {}
        found = kept.get((options, live.version))
        if found is None:
            rules = self.rules(options)
            state = ShopState(self.unavailable_at(options.store), self.promoted)
            found = (prepare(live.popular, live.attributes, rules, state), rules.to_dict())
            if len(kept) >= MAX_RULINGS:
                kept.clear()
            kept[(options, live.version)] = found
        return found
