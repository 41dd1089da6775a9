"""User shards: stable hash, every user in exactly one shard, per-shard parquet files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.run import sharding as S


class TestHash:
    @given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    @settings(max_examples=200, deadline=None)
    def test_polars_hash_equals_python_reference(self, user_id: int) -> None:
        got = pl.select(S.user_hash(pl.lit(user_id, dtype=pl.Int64))).item()
        assert got == S.stable_hash(user_id & ((1 << 64) - 1))

    @pytest.mark.parametrize(
        ("user_id", "expected"),
        # Golden values: a change here moves users between shards (and between workers).
        [(0, 16294208416658607535), (1, 10451216379200822465), (2500, None)],
    )
    def test_golden_values(self, user_id: int, expected: int | None) -> None:
        got = S.stable_hash(user_id)
        if expected is not None:
            assert got == expected
        assert pl.select(S.user_hash(pl.lit(user_id, dtype=pl.Int64))).item() == got

    def test_shards_are_balanced_for_contiguous_ids(self) -> None:
        users = pl.DataFrame({C.USER: range(1, 20_001)})
        sizes = users.select(S.shard_of(8)).to_series().value_counts()["count"]
        assert sizes.len() == 8
        assert sizes.min() > 0.9 * 2_500
        assert sizes.max() < 1.1 * 2_500

    def test_shard_of_rejects_zero_shards(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            S.shard_of(0)


@pytest.mark.parametrize(
    ("users", "shard_users", "expected"),
    [(0, 10, 1), (1, 10, 1), (10, 10, 1), (11, 10, 2), (250_000, 5_000, 50)],
)
def test_shard_count(users: int, shard_users: int, expected: int) -> None:
    assert S.shard_count(users, shard_users) == expected


def test_shard_count_rejects_zero_shard_size() -> None:
    with pytest.raises(ValueError, match="scale.shard_users"):
        S.shard_count(10, 0)


class TestUserShards:
    @given(
        st.lists(st.integers(min_value=0, max_value=10**12), max_size=200),
        st.integers(min_value=1, max_value=9),
    )
    @settings(max_examples=50, deadline=None)
    def test_partition_of_the_distinct_users(self, ids: list[int], n: int) -> None:
        users = pl.DataFrame({C.USER: ids}, schema={C.USER: pl.Int64})
        shards = S.user_shards(users.lazy(), n)
        assert len(shards) == n
        combined = pl.concat(shards)
        assert combined[C.USER].is_duplicated().sum() == 0
        assert sorted(combined[C.USER].to_list()) == sorted(set(ids))
        for number, shard in enumerate(shards):
            if shard.height:
                assert shard.select(S.shard_of(n)).to_series().unique().to_list() == [number]

    def test_same_users_same_shards_in_any_order(self) -> None:
        users = pl.DataFrame({C.USER: list(range(500))})
        forward = S.user_shards(users.lazy(), 3)
        backward = S.user_shards(users.reverse().lazy(), 3)
        for a, b in zip(forward, backward, strict=True):
            assert_frame_equal(a, b)


def test_write_shards_round_trip(tmp_path: Path) -> None:
    tx = pl.DataFrame({C.USER: [1, 1, 2, 3, 4, 5, 6, 7], C.ITEM: [10, 11, 10, 12, 13, 10, 11, 12]})
    paths = S.write_shards(tx.lazy(), 4, tmp_path)
    assert [p.name for p in paths] == [f"shard={s:05d}" for s in range(4)]
    parts = [S.scan_shard(tmp_path, s).collect() for s in range(4)]
    assert all(p.columns == [C.USER, C.ITEM] for p in parts)
    assert_frame_equal(pl.concat(parts), tx, check_row_order=False)
    for s, part in enumerate(parts):
        assert part.select(S.shard_of(4)).to_series().eq(s).all()


def test_write_shards_gives_every_shard_a_readable_file(tmp_path: Path) -> None:
    tx = pl.DataFrame({C.USER: [1], C.ITEM: [10]})
    S.write_shards(tx.lazy(), 6, tmp_path)
    heights = [S.scan_shard(tmp_path, s).collect().height for s in range(6)]
    assert sorted(heights) == [0, 0, 0, 0, 0, 1]


def test_write_shards_to_a_relative_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The nightly batch writes under runs/<run_id>/shards, a path relative to the working dir.
    monkeypatch.chdir(tmp_path)
    tx = pl.DataFrame({C.USER: [1, 2, 3, 4], C.ITEM: [10, 11, 12, 13]})
    S.write_shards(tx.lazy(), 2, Path("runs/r1/shards"))
    scan = pl.scan_parquet(Path("runs/r1/shards") / "*" / "*.parquet", hive_partitioning=False)
    assert_frame_equal(scan.collect(), tx, check_row_order=False)
    assert not (tmp_path / "runs/r1/shards/runs").exists()
