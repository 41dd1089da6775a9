"""Put known lists live in Redis the way ``recsys nightly-batch`` does, for API tests.

An API test that needs known recommendations in Redis publishes them with
:func:`publish_lists`, so what the API reads was written by the batch's own writer and version
lifecycle, not by a hand-made copy of the key format. The benchmarks that need a live version
use it too.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError
from recsys_batch.publish import versions, writer
from recsys_batch.publish.store import Client


def publish_lists(
    client: Client,
    recs: pl.DataFrame,
    popular: list[int],
    items_attrs: pl.DataFrame | None,
    cfg: RedisConfig,
    meta: dict[str, Any] | None = None,
) -> str:
    """Publish ``recs`` as one new live version, as a one-shard nightly run does.

    :func:`~recsys_batch.publish.versions.begin_version`, then
    :func:`~recsys_batch.publish.writer.write_users` (its count of written keys is checked, as
    each shard's is), then :func:`~recsys_batch.publish.versions.finish_version` (verify, flip,
    cleanup). On any error the version is abandoned and the error re-raised.

    Parameters
    ----------
    recs
        Schema ``columns.RECOMMENDATIONS``: each user's list, rank 1 = best.
    popular
        The fallback list for unknown users, best first.
    items_attrs
        ``item_id`` + attribute columns (``details=true``), or None.
    meta
        Extra fields of the version's meta hash (run id, metrics, ...).

    Returns
    -------
    str
        The version now live.
    """
    version = versions.begin_version(client, meta or {}, cfg)
    try:
        users = recs[C.USER].unique().sort()
        written = writer.write_users(client, version, recs, cfg)
        if written != users.len():
            msg = f"{written} of {users.len()} user keys verified after writing"
            raise PublishError(msg)
        versions.finish_version(client, version, users, popular, items_attrs, cfg)
    except BaseException:
        versions.abandon_version(client, version, cfg)
        raise
    return version
