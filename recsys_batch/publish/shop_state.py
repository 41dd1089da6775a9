"""Shop state in Redis: scenarios, unavailable items and the promotion list (#27).

Keys and value shapes are in :mod:`recsys_batch.publish.shop_keys` (docs/redis-format.md).
Every write is one command or one ``MULTI``/``EXEC`` on one key, retried on connection
errors (:func:`~recsys_batch.publish.store.with_retries`): a write lands whole or not at all,
and input is read and checked in full before anything is sent.

- ``recsys scenario set NAME --file F.toml``: ``HSET P:scenarios NAME <rules as JSON>``.
- ``recsys catalog unavailable FILE [--store S] [--ttl-hours H]``: ``ZADD`` of the items
  with the time they become available again (``+inf`` without a TTL), and ``ZREMRANGEBYSCORE``
  of the members already expired (a set never keeps more than the items marked since).
- ``recsys promo set FILE --until D``: replaces ``P:promo`` with the items, scored by the end
  of day D (UTC), and lets the key expire then.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
import tomllib
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError, DataError
from recsys_batch.publish import keys, shop_keys
from recsys_batch.publish.store import Client, with_retries
from recsys_batch.rules import RuleError, RuleSet, parse_rules

log = logging.getLogger(__name__)

ITEM_FILE_FIX = "give one item id per line, or a CSV file with an item_id column"


# --- input files --------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read {path}: {type(exc).__name__}: {exc}"
        raise DataError(
            msg, file=str(path), fix="check the path and that it is UTF-8 text"
        ) from None


def read_item_ids(path: Path) -> list[int]:
    """Item ids of a file, in file order, each once: one id per line, or a CSV file whose
    header has an ``item_id`` column (blank lines are skipped).

    Raises
    ------
    DataError
        The file cannot be read, has no ``item_id`` column, a value that is not an item id
        (naming its line), or no id at all.
    """
    text = _read_text(path)
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and not lines[0][1].isdigit():  # a header: read the file as CSV
        rows = list(csv.reader(io.StringIO(text)))
        header = [name.strip() for name in rows[0]] if rows else []
        if "item_id" not in header:
            msg = f"no item_id column in the header {lines[0][1][:80]!r}"
            raise DataError(msg, file=str(path), column="item_id", fix=ITEM_FILE_FIX)
        at = header.index("item_id")
        lines = [
            (n, row[at].strip() if at < len(row) else "")
            for n, row in enumerate(rows[1:], 2)
            if any(cell.strip() for cell in row)
        ]
    found: dict[int, None] = {}
    for number, value in lines:
        if not (value.isascii() and value.isdigit()) or int(value) > keys.MAX_ITEM_ID:
            msg = f"line {number}: {value[:40]!r} is not an item id (0..{keys.MAX_ITEM_ID})"
            raise DataError(msg, file=str(path), column="item_id", fix=ITEM_FILE_FIX)
        found[int(value)] = None
    if not found:
        raise DataError("no item id in the file", file=str(path), fix=ITEM_FILE_FIX)
    return list(found)


def read_scenario_file(path: Path) -> RuleSet:
    """The rule set of a scenario's TOML file (``min_new = 2``, ``max_per_category = 1``).

    Raises
    ------
    DataError
        The file cannot be read or is not TOML.
    RuleError
        An unknown rule or a bad value; the message names the file and the rule.
    """
    text = _read_text(path)
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"not a TOML file: {exc}"
        fix = "write one rule per line, e.g. min_new = 2 (docs/api.md#rules)"
        raise DataError(msg, file=str(path), fix=fix) from None
    try:
        return parse_rules(values)
    except RuleError as exc:
        raise RuleError(exc.rule, f"{path}: {exc}") from None


# --- scenarios ------------------------------------------------------------------------------


def _scenario_name(name: str) -> str:
    try:
        return shop_keys.check_scenario_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def set_scenario(client: Client, name: str, rules: RuleSet, cfg: RedisConfig) -> None:
    """Store ``rules`` as scenario ``name`` (replacing any scenario of that name)."""
    field, value = _scenario_name(name), json.dumps(rules.to_dict())
    key = shop_keys.scenarios_key(cfg.key_prefix)
    with_retries(lambda: client.hset(key, field, value), cfg, "scenario set")
    log.info("scenario %s set: %s", name, value)


def scenarios(client: Client, cfg: RedisConfig) -> dict[str, RuleSet]:
    """Every stored scenario by name, sorted by name.

    Raises
    ------
    RuleError
        A stored value is not a rule set (written by hand?); the message names it.
    """
    key = shop_keys.scenarios_key(cfg.key_prefix)
    stored = with_retries(lambda: client.hgetall(key), cfg, "scenario list")
    return {
        _text(name): _stored_rules(_text(name), value)
        for name, value in sorted(stored.items(), key=lambda pair: _text(pair[0]))
    }


def scenario(client: Client, name: str, cfg: RedisConfig) -> RuleSet:
    """The rule set of scenario ``name``.

    Raises
    ------
    ConfigError
        No scenario of that name (the message lists the stored ones).
    """
    field, key = _scenario_name(name), shop_keys.scenarios_key(cfg.key_prefix)
    value = with_retries(lambda: client.hget(key, field), cfg, "scenario show")
    if value is None:
        raise _unknown_scenario(client, name, cfg)
    return _stored_rules(name, value)


def delete_scenario(client: Client, name: str, cfg: RedisConfig) -> None:
    """Delete scenario ``name``.

    Raises
    ------
    ConfigError
        No scenario of that name.
    """
    field, key = _scenario_name(name), shop_keys.scenarios_key(cfg.key_prefix)
    removed = with_retries(lambda: client.hdel(key, field), cfg, "scenario delete")
    if not removed:
        raise _unknown_scenario(client, name, cfg)
    log.info("scenario %s deleted", name)


def _unknown_scenario(client: Client, name: str, cfg: RedisConfig) -> ConfigError:
    key = shop_keys.scenarios_key(cfg.key_prefix)
    names = sorted(_text(n) for n in with_retries(lambda: client.hkeys(key), cfg, "scenario list"))
    known = ", ".join(names) if names else "none"
    return ConfigError(
        f"unknown scenario {name!r}: the scenarios are {known} (recsys scenario list)"
    )


def _stored_rules(name: str, value: bytes | str) -> RuleSet:
    fix = "set it again from its file"
    try:
        loaded = json.loads(value)
    except ValueError as exc:
        msg = f"stored scenario {name!r} is not JSON ({exc}); {fix}"
        raise RuleError(name, msg) from None
    if not isinstance(loaded, dict):
        msg = f"stored scenario {name!r} is not a JSON object of rules; {fix}"
        raise RuleError(name, msg)
    try:
        return parse_rules(loaded)
    except RuleError as exc:
        msg = f"stored scenario {name!r}: {exc}; {fix}"
        raise RuleError(exc.rule, msg) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- unavailable items and promotions --------------------------------------------------------


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _store_key(cfg: RedisConfig, store: int | None) -> str:
    try:
        return shop_keys.unavailable_key(cfg.key_prefix, store)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def mark_unavailable(
    client: Client,
    items: Sequence[int],
    cfg: RedisConfig,
    *,
    store: int | None = None,
    ttl_hours: float | None = None,
    now: float | None = None,
) -> float:
    """Mark ``items`` unavailable in every store (or ``store``) until marked available, or
    for ``ttl_hours``; a later mark of the same item replaces its end. Returns the end (unix
    s, ``inf`` without a TTL)."""
    if ttl_hours is not None and not 0 < ttl_hours < float("inf"):
        msg = f"--ttl-hours must be a positive number of hours, got {ttl_hours}"
        raise ConfigError(msg)
    key, start = _store_key(cfg, store), _now(now)
    end = shop_keys.NO_EXPIRY if ttl_hours is None else start + 3600 * ttl_hours

    def write() -> None:
        pipe = client.pipeline(transaction=True)
        pipe.zadd(key, dict.fromkeys(map(str, items), end))
        pipe.zremrangebyscore(key, "-inf", start)
        pipe.execute()

    with_retries(write, cfg, "catalog unavailable")
    log.info("%d items unavailable (%s) until %s", len(items), key, end)
    return end


def mark_available(
    client: Client, items: Sequence[int], cfg: RedisConfig, *, store: int | None = None
) -> int:
    """Mark ``items`` available again in every store (or ``store``); returns how many were
    marked unavailable there. An item unavailable in every store stays so at each store."""
    key = _store_key(cfg, store)
    return int(with_retries(lambda: client.zrem(key, *map(str, items)), cfg, "catalog available"))


def unavailable(
    client: Client, cfg: RedisConfig, *, store: int | None = None, now: float | None = None
) -> dict[int, float]:
    """Items unavailable now in every store (or in ``store`` only) -> when that ends (unix
    s, ``inf``: until marked available), by item id."""
    return dict(sorted(_in_force(client, _store_key(cfg, store), cfg, now, "catalog list")))


def promotion_end(until: date) -> float:
    """Unix time a promotion running through ``until`` ends: the next midnight, UTC."""
    return datetime.combine(until + timedelta(days=1), datetime.min.time(), UTC).timestamp()


def set_promotion(
    client: Client, items: Sequence[int], until: date, cfg: RedisConfig, *, now: float | None = None
) -> float:
    """Replace the promotion list with ``items`` through the end of ``until`` (UTC); the key
    expires then. Returns the end (unix s).

    Raises
    ------
    ConfigError
        ``until`` is already over.
    """
    end = promotion_end(until)
    if end <= _now(now):
        msg = (
            f"--until {until.isoformat()} is over (the promotion runs to the end of that day, UTC)"
        )
        raise ConfigError(msg)
    key = shop_keys.promo_key(cfg.key_prefix)

    def write() -> None:
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zadd(key, dict.fromkeys(map(str, items), end))
        pipe.expireat(key, int(end))
        pipe.execute()

    with_retries(write, cfg, "promo set")
    log.info("%d items promoted until %s", len(items), until.isoformat())
    return end


def clear_promotion(client: Client, cfg: RedisConfig) -> bool:
    """End the promotion now; returns whether one was stored."""
    key = shop_keys.promo_key(cfg.key_prefix)
    return bool(with_retries(lambda: client.unlink(key), cfg, "promo clear"))


def promotion(
    client: Client, cfg: RedisConfig, *, now: float | None = None
) -> tuple[list[int], date | None]:
    """The promoted items in force now, by id, and the last day of the promotion (None and
    ``[]`` when none runs)."""
    found = _in_force(client, shop_keys.promo_key(cfg.key_prefix), cfg, now, "promo show")
    if not found:
        return [], None
    last_day = datetime.fromtimestamp(max(s for _, s in found), UTC).date() - timedelta(days=1)
    return sorted(item for item, _ in found), last_day


def _in_force(
    client: Client, key: str, cfg: RedisConfig, now: float | None, what: str
) -> list[tuple[int, float]]:
    """``(item, end)`` of the members of a shop-state set still in force at ``now``."""
    bounds = shop_keys.in_force(_now(now))
    found: Any = with_retries(
        lambda: client.zrangebyscore(key, *bounds, withscores=True), cfg, what
    )
    return [(int(member), float(score)) for member, score in found]
