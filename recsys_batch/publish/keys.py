"""Redis key and value format: the contract between the batch and the API.

Standard library only: the API imports this module and must not pull in polars or numpy.

Layout (``P`` is the key prefix, ``recsys`` by default; ``V`` a version id such as
``20261128T031500Z-5f3a``)::

    P:current               string  the live version id (flipped in one SET after a verified write)
    P:previous              string  the version that was live before it (for ``recsys rollback``)
    P:versions              zset    every version ever started, scored by start time (unix s)
    P:v:V:u:{user_id}       string  the user's items, best first: "840361,1029743,995242,..."
    P:v:V:popular           string  fallback items for unknown users, same format
    P:v:V:items             hash    item_id -> JSON attributes (department, brand, ...)
    P:v:V:meta              hash    format, state, run_id, created_at, users, metrics, ...

Values stay readable on purpose: ``redis-cli GET recsys:v:V:u:1`` is enough to debug.
Every key of a version carries a safety TTL, so an abandoned version expires by itself.
``FORMAT`` is bumped whenever the shape of a value changes; a reader that meets a format it
does not know refuses it instead of guessing.
"""

from __future__ import annotations

import re

FORMAT = 1
SUPPORTED_FORMATS = frozenset({1})
ITEM_SEPARATOR = ","

STATE_WRITING = "writing"
STATE_COMPLETE = "complete"

_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,63}$")
_PREFIX_RE = re.compile(r"^[0-9A-Za-z_.-]{1,32}$")
MAX_USER_ID = 2**63 - 1


def _check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        msg = f"invalid key prefix {prefix!r}: use 1-32 letters, digits, '_', '.', '-'"
        raise ValueError(msg)
    return prefix


def check_version(version: str) -> str:
    """Return ``version`` if it is a well-formed version id, else raise ``ValueError``."""
    if not _VERSION_RE.match(version):
        msg = f"invalid version id {version!r}: use up to 64 letters, digits, '_', '.', '-'"
        raise ValueError(msg)
    return version


def check_user_id(user_id: object) -> int:
    """Return the user id as a non-negative int; anything else raises ``ValueError``.

    Keys are only ever built from validated integers, so no caller-provided text (``*``,
    ``:``, spaces, newlines) can reach a key name.
    """
    if isinstance(user_id, bool):
        msg = f"invalid user id {user_id!r}: expected a non-negative integer"
        raise ValueError(msg)
    if isinstance(user_id, int):
        value = user_id
    elif isinstance(user_id, str) and user_id.isascii() and user_id.isdigit():
        value = int(user_id)
    else:
        msg = f"invalid user id {user_id!r}: expected a non-negative integer"
        raise ValueError(msg)
    if not 0 <= value <= MAX_USER_ID:
        msg = f"invalid user id {user_id!r}: out of range 0..{MAX_USER_ID}"
        raise ValueError(msg)
    return value


def current_key(prefix: str = "recsys") -> str:
    """Key naming the live version."""
    return f"{_check_prefix(prefix)}:current"


def previous_key(prefix: str = "recsys") -> str:
    """Key naming the version that was live before the current one."""
    return f"{_check_prefix(prefix)}:previous"


def versions_key(prefix: str = "recsys") -> str:
    """Sorted set of every version started, scored by start time."""
    return f"{_check_prefix(prefix)}:versions"


def version_prefix(version: str, prefix: str = "recsys") -> str:
    """Common prefix of every key of one version (for SCAN MATCH ``...*``)."""
    return f"{_check_prefix(prefix)}:v:{check_version(version)}:"


def user_key(version: str, user_id: object, prefix: str = "recsys") -> str:
    """Key of one user's recommendations in ``version``."""
    return f"{version_prefix(version, prefix)}u:{check_user_id(user_id)}"


def popular_key(version: str, prefix: str = "recsys") -> str:
    """Key of the fallback list for unknown users in ``version``."""
    return f"{version_prefix(version, prefix)}popular"


def items_key(version: str, prefix: str = "recsys") -> str:
    """Hash of item attributes (item_id -> JSON) published with ``version``."""
    return f"{version_prefix(version, prefix)}items"


def meta_key(version: str, prefix: str = "recsys") -> str:
    """Hash describing ``version`` (format, state, run id, users, metrics, ...)."""
    return f"{version_prefix(version, prefix)}meta"


def encode_items(items: list[int] | tuple[int, ...]) -> str:
    """Encode item ids, best first, as the readable stored value."""
    return ITEM_SEPARATOR.join(str(int(item)) for item in items)


def decode_items(value: bytes | str | None) -> list[int]:
    """Decode a stored value back to item ids (``None`` or empty -> ``[]``)."""
    if value is None:
        return []
    text = value.decode() if isinstance(value, bytes) else value
    if not text:
        return []
    return [int(part) for part in text.split(ITEM_SEPARATOR)]
