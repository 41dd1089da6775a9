"""What the driver computes over every customer's lines, one part of whole users at a time.

Out of core the catalogue-applied lines are the shard files (:func:`sharding.write_shards`),
each holding whole users. A per-item count of distinct buyers over every line would hold
each item's set of buyers at once (it grows with the customers); over parts of disjoint
users the per-part counts simply add up, so the driver holds one part's sets and a table
per item (issue #28).
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from recsys_batch.data import columns as C


def item_buyers(lines: pl.LazyFrame, catalogue: pl.LazyFrame) -> pl.DataFrame:
    """``item_id, buyers``: distinct buyers of each catalogue item in ``lines``."""
    return (
        lines.join(catalogue.select(C.ITEM), on=C.ITEM, how="semi")
        .group_by(C.ITEM)
        .agg(pl.col(C.USER).n_unique().cast(pl.UInt64).alias(C.BUYERS))
        .collect(engine="streaming")
    )


def popular_by_parts(parts: Iterable[pl.LazyFrame], catalogue: pl.LazyFrame, k: int) -> list[int]:
    """``two_stage.popular_fallback`` of all ``parts`` together, read one part at a time.

    The ``k`` catalogue items with the most distinct buyers (ties: lower id). ``parts`` must
    hold disjoint users (the shard files; one part: everybody), so buyers add up.
    """
    counts = [item_buyers(part, catalogue) for part in parts]
    if not counts:
        return []
    return (
        pl.concat(counts)
        .group_by(C.ITEM)
        .agg(pl.col(C.BUYERS).sum())
        .sort([C.BUYERS, C.ITEM], descending=[True, False])
        .head(k)[C.ITEM]
        .to_list()
    )
