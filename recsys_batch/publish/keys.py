"""Redis key and value format: the contract between the batch and the API.

Standard library only: this is the one module of the engine the API needs for the contract,
and importing it loads no third-party package and changes nothing in the process.

Layout (``P`` is the key prefix, ``recsys`` by default; ``V`` a version id such as
``20261128T031500Z-5f3a``)::

    P:current               string  the live version id (flipped in one SET after a verified write)
    P:previous              string  the version that was live before it (for ``recsys rollback``)
    P:versions              zset    every version ever started, scored by start time (unix s)
    P:runs                  list    run summaries, newest first, capped at 30 (JSON each; #19)
    P:v:V:u:{user_id}       string  the user's items, best first: "840361,1029743,995242,..."
    P:v:V:popular           string  fallback items for unknown users, same format
    P:v:V:items             hash    item_id -> JSON attributes (department, brand, ...)
    P:v:V:meta              hash    format, state, run_id, created_at, users, metrics, ...

Connections: :func:`parse_url` accepts ``redis://``, ``rediss://`` (TLS), ``unix://`` and
``redis+cluster://`` / ``rediss+cluster://``; :func:`tls_options` maps the CA and client
certificate files; :func:`mask_url` / :func:`mask_text` hide passwords in anything shown.

Values stay readable on purpose: ``redis-cli GET recsys:v:V:u:1`` is enough to debug.
Every key of a version carries a safety TTL, so an abandoned version expires by itself.
``FORMAT`` is bumped whenever the shape of a value changes; a reader that meets a format it
does not know refuses it instead of guessing.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from recsys_batch.errors import ConfigError

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


def runs_key(prefix: str = "recsys") -> str:
    """List of run summaries (JSON), newest first, capped (``publish.run_log``)."""
    return f"{_check_prefix(prefix)}:runs"


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

    Shared by the batch and the API so both trust the same CA and present the same client
    certificate.
    """
    if not url.lower().startswith("rediss://"):
        return {}
    files = {"ssl_ca_certs": ca_file, "ssl_certfile": cert_file, "ssl_keyfile": key_file}
    return {name: str(path) for name, path in files.items() if path is not None}
