"""Digest of the live published version: every user's list, the popular list, the items hash,
and every field of every user family (``families_sha256``: head and tail items, reasons, new
items and their reasons, bucket by bucket).

Two nightly runs with the same data, settings and seeds must print the same digests (issue #15:
the one-path redesign changes no published value). Reads ``REDIS_URL`` (or the embedded Redis).

    recsys nightly-batch && python benchmarks/published_digest.py
"""

from __future__ import annotations

import hashlib
import json
import sys

from recsys_batch.config import RedisConfig, Settings
from recsys_batch.publish import keys, status, store, versions


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def digest(client: store.Client, prefix: str, version: str) -> dict[str, object]:
    """sha256 over every user's item list (sorted by user), the popular list and the item hash.

    Users are read through the format-2 helpers (``status.version_user_ids`` /
    ``status.user_items``), one line ``user=item,item,...`` each: the digest names the
    published lists, not their byte layout (#18 changed the layout, not the lists).
    """
    cfg = RedisConfig(key_prefix=prefix)
    user_ids = status.version_user_ids(client, version, cfg)
    users = hashlib.sha256()
    for start in range(0, len(user_ids), 10_000):
        batch = user_ids[start : start + 10_000]
        stored = status.user_items(client, version, batch, cfg)
        for user in batch:
            users.update(f"{user}={keys.encode_items(stored.get(user, []))}\n".encode())
    popular = client.get(keys.popular_key(version, prefix))
    popular_bytes = popular if isinstance(popular, bytes) else str(popular or "").encode()
    items = client.hgetall(keys.items_key(version, prefix))
    items_text = json.dumps(sorted((_text(k), _text(v)) for k, v in items.items()))
    return {
        **families_digest(client, cfg, version),
        "version": version,
        "users": len(user_ids),
        "users_sha256": users.hexdigest(),
        "popular_sha256": hashlib.sha256(popular_bytes).hexdigest(),
        "items": len(items),
        "items_sha256": hashlib.sha256(items_text.encode()).hexdigest(),
    }


def families_digest(client: store.Client, cfg: RedisConfig, version: str) -> dict[str, object]:
    """sha256 over every field of every bucket hash of every user family (``keys.USER_FAMILIES``),
    in bucket and field order: the whole per-user part of the version, byte for byte, with
    the fields per family."""
    buckets = status.version_buckets(client, version, cfg)
    whole = hashlib.sha256()
    fields: dict[str, int] = {}
    for family in keys.USER_FAMILIES:
        fields[family] = 0
        for bucket in range(buckets):
            key = keys.user_bucket_key(version, bucket, cfg.key_prefix, family)
            stored = client.hgetall(key)
            fields[family] += len(stored)
            for field in sorted(stored):
                value = stored[field]
                raw = value if isinstance(value, bytes) else str(value).encode()
                whole.update(f"{family}:{bucket}:{_text(field)}=".encode() + raw + b"\n")
    return {"buckets": buckets, "family_fields": fields, "families_sha256": whole.hexdigest()}


def main() -> int:
    """Print the live version's digest as JSON."""
    settings = Settings()
    client = store.connect(settings.redis)
    live = versions.live_version(client, settings.redis)
    if live is None:
        print("no live version", file=sys.stderr)
        return 1
    print(json.dumps(digest(client, settings.redis.key_prefix, live), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
