"""Redis key and value format: the contract between the batch and the API.

Standard library only: this is the one module of the engine the API needs for the contract,
and importing it loads no third-party package and changes nothing in the process.

Layout (``P`` is the key prefix, ``recsys`` by default; ``V`` a version id such as
``20261128T031500Z-5f3a``)::

    P:current               string  the live version id (flipped in one SET after a verified write)
    P:previous              string  the version that was live before it (for ``recsys rollback``)
    P:versions              zset    every version ever started, scored by start time (unix s)
    P:runs                  list    run summaries, newest first, capped at 30 (JSON each; #19)
    P:ab                    hash    the A/B experiment: version, share, started_at (#18)
    P:scenarios, P:unavailable[:{store}], P:promo   shop state (#27): ``publish.shop_keys``
    P:v:V:u:{bucket}        hash    user_id -> the user's first 16 items, packed (below)
    P:v:V:t:{bucket}        hash    user_id -> items 17..top_n, packed (only users with > 16)
    P:v:V:r:{bucket}        hash    user_id -> reasons of the user's items (``?explain=true``)
    P:v:V:n:{bucket}        hash    user_id -> up to 16 items the user never bought, packed (#26)
    P:v:V:w:{bucket}        hash    user_id -> reasons of those new items, packed
    P:v:V:popular           string  fallback items for unknown users: "840361,1029743,..."
    P:v:V:items             hash    item_id -> JSON attributes (department, brand, ...)
    P:v:V:meta              hash    format, state, buckets, top_n, run_id, users, metrics, ...

Format 2 (compact). A user lives in bucket ``bucket_of(user_id, buckets)`` (SplitMix64 of the
id, high 32 bits, mod ``buckets`` from the meta hash), as a field named by the decimal id.
A packed list is 4 bytes per item, unsigned big-endian, best first (``pack_items``): 16 items
are 64 bytes, Redis' default ``hash-max-listpack-value``, and a bucket holds on average
``USERS_PER_BUCKET`` users, well under the default ``hash-max-listpack-entries`` (128), so
every user hash stays in the compact listpack encoding. Reasons (``encode_reasons``) are
2 bytes per item, unsigned big-endian: ``0x8000 | times << 9 | last_days`` for a repeat
(bought on ``times`` distinct days, capped at 63; last ``last_days`` ago, capped at 511),
else 0 = ALS (similar customers), 1 = often bought with the user's items, 2 = trending,
3 = popular, 4 = promoted (on the retailer's promotion calendar), 5 = the user's favourite
categories; 20 items are 40 bytes, so reason hashes stay listpacks too. The new-items list
(``n``, items the user never bought, best first, at most 16: one field) and its reasons (``w``)
use the same packing; a version of a batch without that list has no ``n``/``w`` hashes.

Connections: :func:`parse_url` accepts ``redis://``, ``rediss://`` (TLS), ``unix://`` and
``redis+cluster://`` / ``rediss+cluster://``; :func:`tls_options` maps the CA and client
certificate files; :func:`mask_url` / :func:`mask_text` hide passwords in anything shown.

Debugging one user: ``redis-cli HGET recsys:v:V:u:$(bucket) 1 | xxd`` (``recsys_batch.publish
.status.user_items`` decodes it); the popular list and the meta hash stay readable.
Every key of a version carries a safety TTL, so an abandoned version expires by itself.
``FORMAT`` is bumped whenever the shape of a value changes; a reader that meets a format it
does not know refuses it instead of guessing.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from itertools import compress
from urllib.parse import unquote, urlsplit

from recsys_batch.errors import ConfigError

FORMAT = 2
SUPPORTED_FORMATS = frozenset({2})
ITEM_SEPARATOR = ","
ITEM_BYTES = 4
"""Bytes per packed item id (unsigned big-endian): ids 0 .. 2**32 - 1."""
MAX_ITEM_ID = 2 ** (8 * ITEM_BYTES) - 1
ITEMS_PER_FIELD = 16
"""Items in one packed value: 16 x 4 = 64 bytes, the default ``hash-max-listpack-value``."""
MAX_TOP_N = 2 * ITEMS_PER_FIELD
"""Most items a version stores per user (head ``u`` + tail ``t``)."""
USERS_PER_BUCKET = 64
"""Average users per bucket: under the default ``hash-max-listpack-entries`` (128) with room
for the spread of a hash (the fullest of 100,000 buckets holds ~105)."""

STATE_WRITING = "writing"
STATE_COMPLETE = "complete"

_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,63}$")
_PREFIX_RE = re.compile(r"^[0-9A-Za-z_.-]{1,32}$")
MAX_USER_ID = 2**63 - 1


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a well-formed key prefix, else raise ``ValueError``."""
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
    return f"{check_prefix(prefix)}:current"


def previous_key(prefix: str = "recsys") -> str:
    """Key naming the version that was live before the current one."""
    return f"{check_prefix(prefix)}:previous"


def versions_key(prefix: str = "recsys") -> str:
    """Sorted set of every version started, scored by start time."""
    return f"{check_prefix(prefix)}:versions"


def runs_key(prefix: str = "recsys") -> str:
    """List of run summaries (JSON), newest first, capped (``publish.run_log``)."""
    return f"{check_prefix(prefix)}:runs"


def experiment_key(prefix: str = "recsys") -> str:
    """Hash of the running A/B experiment: ``version``, ``share``, ``started_at``."""
    return f"{check_prefix(prefix)}:ab"


def version_prefix(version: str, prefix: str = "recsys") -> str:
    """Common prefix of every key of one version (for SCAN MATCH ``...*``)."""
    return f"{check_prefix(prefix)}:v:{check_version(version)}:"


_MASK64 = (1 << 64) - 1


def stable_hash(user_id: int) -> int:
    """SplitMix64 of ``user_id`` (the same as ``recsys_batch.run.sharding.stable_hash``)."""
    z = (user_id + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


AB_SLOTS = 10_000
"""A/B slots: a share of 0.1 serves the experiment's version to slots 0 .. 999."""


def variant_slot(user_id: object) -> int:
    """The user's A/B slot, ``0 .. AB_SLOTS - 1``: bits 16..63 of SplitMix64(user_id) mod
    ``AB_SLOTS``, so the same user always lands in the same arm, independently of the bucket
    (high 32 bits) and in practice of the shard (the whole hash mod the shard count)."""
    return (stable_hash(check_user_id(user_id)) >> 16) % AB_SLOTS


def in_treatment(user_id: object, share: float) -> bool:
    """Whether an experiment serving ``share`` of the users serves this user."""
    return variant_slot(user_id) < round(share * AB_SLOTS)


def bucket_count(users: int) -> int:
    """Buckets for a version of about ``users`` users (``USERS_PER_BUCKET`` each, >= 1)."""
    return max(1, -(-int(users) // USERS_PER_BUCKET))


def bucket_of(user_id: object, buckets: int) -> int:
    """The bucket of a user: high 32 bits of SplitMix64(user_id) mod ``buckets``.

    The high bits, so that buckets do not follow the shards (low bits mod the shard count).
    """
    return (stable_hash(check_user_id(user_id)) >> 32) % buckets


USER_FAMILIES = ("u", "t", "r", "n", "w")
"""Bucket hash families of a version: head items, tail items, reasons, new items (never bought
by the user, #26) and their reasons."""


def user_bucket_key(version: str, bucket: int, prefix: str = "recsys", family: str = "u") -> str:
    """Key of one bucket hash: ``u`` (first 16 items), ``t`` (the rest), ``r`` (reasons),
    ``n`` (new items) or ``w`` (their reasons)."""
    if family not in USER_FAMILIES:
        msg = f"unknown bucket family {family!r}: expected one of {USER_FAMILIES}"
        raise ValueError(msg)
    return f"{version_prefix(version, prefix)}{family}:{int(bucket)}"


def user_key(version: str, user_id: object, buckets: int, prefix: str = "recsys") -> str:
    """Key of the hash holding ``user_id``'s first items in ``version`` (field: the id)."""
    return user_bucket_key(version, bucket_of(user_id, buckets), prefix)


def pack_items(items: list[int] | tuple[int, ...]) -> bytes:
    """Item ids, best first, as 4 bytes each (unsigned big-endian).

    Raises
    ------
    ValueError
        An id outside 0 .. 2**32 - 1.
    """
    try:
        return struct.pack(f">{len(items)}I", *items)
    except struct.error as exc:
        msg = f"item ids must be 0..{MAX_ITEM_ID} to be packed: {exc}"
        raise ValueError(msg) from None


def unpack_items(*values: bytes | None) -> list[int]:
    """Item ids of packed values, concatenated (``None`` -> nothing).

    Raises
    ------
    ValueError
        A value whose length is not a multiple of 4.
    """
    data = b"".join(filter(None, values))
    if len(data) % ITEM_BYTES:
        msg = f"packed item list of {len(data)} bytes is not a multiple of {ITEM_BYTES}"
        raise ValueError(msg)
    return list(struct.unpack(f">{len(data) // ITEM_BYTES}I", data))


REASON_BYTES = 2
"""Bytes per packed reason (unsigned big-endian 16 bits), one per stored item."""
MAX_REASON_TIMES = 63
"""Repeat reasons cap the times bought at this (6 bits)."""
MAX_REASON_DAYS = 511
"""Repeat reasons cap the days since the last purchase at this (9 bits)."""
_REPEAT = 0x8000
_TOP_BIT = bytes(byte >> 7 for byte in range(256))  # a repeat: its first byte's top bit, C loops
REASON_CODES = ("als", "bought_with", "trending", "popular", "promoted", "category")
"""Codes of the other reasons, by their packed value (0..5)."""
_LETTERS = {"a": 0, "b": 1, "t": 2, "p": 3}


def reason_value(text: str | None) -> int:
    """One item's reason as the batch writes it (``r9.12``, ``b``, ``a``, ``t``, ``p``) as its
    packed 16-bit value: ``0x8000 | times << 9 | last_days`` for a repeat (capped at
    ``MAX_REASON_TIMES`` / ``MAX_REASON_DAYS``), else the index in ``REASON_CODES``.

    >>> reason_value("r9.12"), reason_value("b"), reason_value(None)
    (37388, 1, 0)
    """
    if text and text[0] == "r":
        times, _, days = text[1:].partition(".")
        times_n = min(max(int(times or 0), 0), MAX_REASON_TIMES)
        days_n = min(max(int(days or 0), 0), MAX_REASON_DAYS)
        return _REPEAT | times_n << 9 | days_n
    return _LETTERS.get(text[:1], 0) if text else 0


def encode_reasons(texts: Sequence[str | None]) -> bytes:
    """Reasons of a user's items, best first, packed 2 bytes each (:func:`reason_value`)."""
    return struct.pack(f">{len(texts)}H", *(reason_value(t) for t in texts))


def decode_reasons(value: bytes | None) -> list[dict[str, int | str]]:
    """Packed reasons back to one dict per item (``None`` -> ``[]``).

    Raises
    ------
    ValueError
        A value whose length is odd.
    """
    data = _reasons(value)
    reasons: list[dict[str, int | str]] = []
    for packed in struct.unpack(f">{len(data) // REASON_BYTES}H", data):
        if packed & _REPEAT:
            times, days = (packed >> 9) & MAX_REASON_TIMES, packed & MAX_REASON_DAYS
            reasons.append({"code": "repeat", "times": times, "last_days": days})
        else:
            code = REASON_CODES[packed] if packed < len(REASON_CODES) else "als"
            reasons.append({"code": code})
    return reasons


def repeat_items(items: Sequence[int], value: bytes | None) -> frozenset[int]:
    """The ``items`` whose packed reason (aligned) is a repeat, as :func:`decode_reasons` reads.

    >>> sorted(repeat_items([7, 8], encode_reasons(["r2.5", "a"])))
    [7]
    """
    return frozenset(compress(items, _reasons(value)[::REASON_BYTES].translate(_TOP_BIT)))


def _reasons(value: bytes | None) -> bytes:
    if value and len(value) % REASON_BYTES:
        msg = f"packed reasons of {len(value)} bytes are not a multiple of {REASON_BYTES}"
        raise ValueError(msg)
    return value or b""


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


# --- connection URLs -------------------------------------------------------------------------

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = {"redis", "rediss", "unix"}


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, rest)`` split by hand, or None when the URL has no ``@``.

    ``urlsplit`` cannot be trusted with credentials: a password pasted unencoded with a
    ``#``, ``/`` or ``?`` ends its authority early, so it sees no password at all. The last
    ``@`` after ``://`` ends the userinfo whatever the password holds (over-masking a URL
    whose path or query has an ``@`` is the safe side).
    """
    scheme, sep, remainder = url.partition("://")
    if not sep:
        return None
    userinfo, at, rest = remainder.rpartition("@")
    if not at:
        return None
    return scheme, userinfo, rest


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and errors).

    Examples: ``redis://app:s3cret@h:6379/0`` -> ``redis://app:***@h:6379/0``; userinfo
    without a ``:`` (it may be a bare password) -> ``redis://***:***@h:6379/0``.
    """
    if not url:
        return "embedded"
    split = _userinfo(url)
    if split is None:
        return url
    scheme, userinfo, rest = split
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user if colon else '***'}:***@{rest}"


def _secrets(url: str) -> list[str]:
    """Every form of the URL's password that a message could quote, longest first."""
    found: set[str] = set()
    split = _userinfo(url)
    if split is not None:
        user, colon, password = split[1].partition(":")
        secret = password if colon else user
        found.add(secret)
        # What urlsplit/redis-py read as the port when an unencoded '#', '/' or '?' ends
        # the authority early ("batch:12#..." -> port 12): an error may quote that piece.
        head = re.split(r"[#/?]", secret, maxsplit=1)[0]
        if head != secret and len(head) >= 2:
            found.add(head)
    try:
        parsed = urlsplit(url).password
    except ValueError:
        parsed = None
    if parsed:
        found.add(parsed)
    found |= {unquote(secret) for secret in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_text(text: str, url: str | None) -> str:
    """``text`` with the URL masked and any occurrence of its password replaced by ``***``.

    The password is taken both from what follows the first ``:`` of the userinfo (see
    :func:`mask_url`) and from ``urlsplit``, which stops at an unencoded ``#``, ``/`` or
    ``?``, so a message quoting only the first part of such a password is masked as well.
    """
    if not url:
        return text
    text = text.replace(url, mask_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def parse_url(url: str, *, cluster: bool = False) -> tuple[str, bool]:
    """``url`` as redis-py expects it and whether it names a Redis Cluster.

    ``redis+cluster://`` and ``rediss+cluster://`` become ``redis://``/``rediss://`` with the
    cluster flag set; ``cluster`` (config) marks a plain URL as a cluster seed node. Shared
    by the batch and the API so both accept exactly the same URLs.

    Raises
    ------
    ConfigError
        The URL's scheme is not one we know (the message masks any password).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _CLUSTER_SCHEMES:
        return _CLUSTER_SCHEMES[scheme] + url[len(scheme) :], True
    if scheme in _PLAIN_SCHEMES:
        return url, cluster
    msg = (
        f"unsupported Redis URL scheme {scheme or '(none)'!r} in {mask_url(url)}: "
        "use redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
    )
    raise ConfigError(msg)


def tls_options(
    url: str, ca_file: object = None, cert_file: object = None, key_file: object = None
) -> dict[str, str]:
    """redis-py's TLS keyword arguments for ``rediss://`` URLs ({} for any other URL).

    Shared by the batch and the API: both trust the same CA, present the same certificate.
    """
    if not url.lower().startswith("rediss://"):
        return {}
    files = {"ssl_ca_certs": ca_file, "ssl_certfile": cert_file, "ssl_keyfile": key_file}
    return {name: str(path) for name, path in files.items() if path is not None}
