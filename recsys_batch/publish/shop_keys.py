"""Redis keys and value shapes of the shop state: scenarios, availability, promotions (#27).

Standard library only, like :mod:`recsys_batch.publish.keys` (whose key prefix rules it
shares): the API imports it to read the shop state in the same round trip as a customer's
lists. Shop state lives outside every version (``P:v:*``), so it survives publishes,
cleanups and rollbacks::

    P:scenarios             hash    scenario name -> its rule set as JSON ({"min_new": 2})
    P:unavailable           zset    item_id -> unix s when it becomes available again
                                    (+inf: until marked available), for all stores
    P:unavailable:{store}   zset    the same for one store (store id, decimal)
    P:promo                 zset    item_id -> unix s when the promotion ends

A reader takes the members still in force with ``ZRANGEBYSCORE key (now +inf``
(:func:`in_force`), so an unavailability with a TTL or a promotion past its end stops
applying at that second, whenever its member is removed. Members are decimal item ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from recsys_batch.publish.keys import check_prefix, check_user_id

NO_EXPIRY = float("inf")
"""Score of a member that stays until removed (``+inf`` in Redis)."""
_SCENARIO_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,63}$")


def check_scenario_name(name: object) -> str:
    """Return ``name`` if it is a well-formed scenario name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _SCENARIO_RE.match(name):
        msg = f"invalid scenario name {name!r}: use up to 64 letters, digits, '_', '.', '-'"
        raise ValueError(msg)
    return name


def check_store_id(store: object) -> int:
    """Return the store id as a non-negative int, else raise ``ValueError`` (so no request
    text reaches a key name)."""
    try:
        return check_user_id(store)
    except ValueError:
        msg = f"invalid store id {store!r}: expected a non-negative integer"
        raise ValueError(msg) from None


def scenarios_key(prefix: str = "recsys") -> str:
    """Hash of the scenarios: name -> rule set as JSON (``recsys scenario set``)."""
    return f"{check_prefix(prefix)}:scenarios"


def unavailable_key(prefix: str = "recsys", store: object = None) -> str:
    """Sorted set of the items unavailable in every store, or in ``store``: item id -> unix
    time it becomes available again (:data:`NO_EXPIRY`: until marked available)."""
    if store is None:
        return f"{check_prefix(prefix)}:unavailable"
    return f"{check_prefix(prefix)}:unavailable:{check_store_id(store)}"


def promo_key(prefix: str = "recsys") -> str:
    """Sorted set of the promoted items: item id -> unix time the promotion ends."""
    return f"{check_prefix(prefix)}:promo"


def in_force(now: float) -> tuple[str, str]:
    """``ZRANGEBYSCORE`` bounds of the members still in force at ``now`` (unix s): those
    whose end is after ``now``.

    >>> in_force(1765000000.5)
    ('(1765000000.5', '+inf')
    """
    return f"({now!r}", "+inf"


def decode_item_set(members: Sequence[bytes | str]) -> frozenset[int]:
    """Members of a shop-state set (decimal item ids) as ints.

    Raises
    ------
    ValueError
        A member that is not a decimal item id.
    """
    found: set[int] = set()
    for member in members:
        text = member.decode() if isinstance(member, bytes) else member
        if not (text.isascii() and text.isdigit()):
            msg = f"shop-state member {text[:40]!r} is not an item id"
            raise ValueError(msg)
        found.add(int(text))
    return frozenset(found)
