"""Golden tests pinning the Redis key and value format (docs/redis-format.md)."""

import pytest
from pydantic import ValidationError

from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys


class TestKeyBuilders:
    @pytest.mark.parametrize(
        ("built", "expected"),
        [
            (keys.current_key(), "recsys:current"),
            (keys.previous_key(), "recsys:previous"),
            (keys.versions_key(), "recsys:versions"),
            (
                keys.user_key("20261128T031500Z-5f3a", 42, 1000),
                "recsys:v:20261128T031500Z-5f3a:u:902",
            ),
            (keys.user_key("v1", "42", 1000), "recsys:v:v1:u:902"),
            (keys.user_bucket_key("v1", 7), "recsys:v:v1:u:7"),
            (keys.user_bucket_key("v1", 7, family="t"), "recsys:v:v1:t:7"),
            (keys.user_bucket_key("v1", 7, "shop2", "r"), "shop2:v:v1:r:7"),
            (keys.popular_key("v1"), "recsys:v:v1:popular"),
            (keys.items_key("v1"), "recsys:v:v1:items"),
            (keys.meta_key("v1"), "recsys:v:v1:meta"),
            (keys.meta_key("v1", prefix="shop2"), "shop2:v:v1:meta"),
            (keys.version_prefix("v1"), "recsys:v:v1:"),
        ],
    )
    def test_exact_key(self, built: str, expected: str) -> None:
        assert built == expected

    @pytest.mark.parametrize("bad", ["*", "1:2", "1 2", "", "-1", "1\n", "١٢", 1.5, None, True])
    def test_user_id_injection_refused(self, bad: object) -> None:
        with pytest.raises(ValueError, match="invalid user id"):
            keys.user_key("v1", bad, 10)

    @pytest.mark.parametrize("bad", ["", "a:b", "a*", "x" * 65, "-lead"])
    def test_bad_version_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="invalid version id"):
            keys.user_key(bad, 1, 10)

    @pytest.mark.parametrize("bad", ["", "a:b", "a*", "a b", "x" * 33])
    def test_bad_prefix_refused_by_keys_and_by_the_config(self, bad: str) -> None:
        """One rule: ``RedisConfig`` rejects exactly what ``keys.check_prefix`` rejects."""
        with pytest.raises(ValueError, match="invalid key prefix"):
            keys.current_key(bad)
        with pytest.raises(ValidationError, match="invalid key prefix"):
            RedisConfig(key_prefix=bad)

    @pytest.mark.parametrize("good", ["recsys", "shop_2.eu-west", "x" * 32])
    def test_good_prefix_accepted_by_both(self, good: str) -> None:
        assert keys.check_prefix(good) == RedisConfig(key_prefix=good).key_prefix == good


class TestValues:
    def test_encode_is_readable_and_ordered(self) -> None:
        assert keys.encode_items([840361, 1029743, 995242]) == "840361,1029743,995242"

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [(b"1,2,3", [1, 2, 3]), ("7", [7]), (b"", []), (None, [])],
    )
    def test_decode(self, stored: bytes | str | None, expected: list[int]) -> None:
        assert keys.decode_items(stored) == expected

    def test_round_trip(self) -> None:
        items = [5, 4, 3, 2, 1]
        assert keys.decode_items(keys.encode_items(items).encode()) == items


class TestCompactFormat:
    """Format 2 (issue #18): buckets, packed items and reasons are pinned byte for byte."""

    def test_format_number(self) -> None:
        assert keys.FORMAT == 2
        assert keys.SUPPORTED_FORMATS == {2}

    @pytest.mark.parametrize(
        ("user", "buckets", "bucket"),
        [(0, 1000, 33), (1, 1000, 436), (42, 1000, 902), (1364, 1000, 783), (42, 1, 0)],
    )
    def test_bucket_golden(self, user: int, buckets: int, bucket: int) -> None:
        assert keys.bucket_of(user, buckets) == bucket

    def test_bucket_hash_is_the_shard_hash(self) -> None:
        from recsys_batch.run.sharding import stable_hash

        assert all(keys.stable_hash(u) == stable_hash(u) for u in (0, 1, 7, 2**40, 2**63 - 1))

    @pytest.mark.parametrize(
        ("users", "buckets"), [(0, 1), (1, 1), (64, 1), (65, 2), (10**7, 156_250)]
    )
    def test_bucket_count(self, users: int, buckets: int) -> None:
        assert keys.bucket_count(users) == buckets

    def test_pack_golden(self) -> None:
        assert keys.pack_items([840361, 1029743]) == bytes.fromhex("000cd2a9000fb66f")
        assert keys.unpack_items(bytes.fromhex("000cd2a9"), None, bytes.fromhex("000fb66f")) == [
            840361,
            1029743,
        ]

    @pytest.mark.parametrize("bad", [[-1], [2**32]])
    def test_unpackable_items(self, bad: list[int]) -> None:
        with pytest.raises(ValueError, match="item ids must be"):
            keys.pack_items(bad)

    def test_truncated_value(self) -> None:
        with pytest.raises(ValueError, match="multiple of 4"):
            keys.unpack_items(b"\x00\x01\x02")

    def test_reasons_golden(self) -> None:
        """2 bytes per item: 0x8000 | times << 9 | days for a repeat, else the code index."""
        packed = keys.encode_reasons(["r9.12", "b", "a", "p", "t", "r70.600", None])
        assert packed.hex() == "920c" + "0001" + "0000" + "0003" + "0002" + "ffff" + "0000"
        assert keys.decode_reasons(packed) == [
            {"code": "repeat", "times": 9, "last_days": 12},
            {"code": "bought_with"},
            {"code": "als"},
            {"code": "popular"},
            {"code": "trending"},
            {"code": "repeat", "times": 63, "last_days": 511},  # capped
            {"code": "als"},
        ]
        assert keys.decode_reasons(None) == []
        with pytest.raises(ValueError, match="multiple of 2"):
            keys.decode_reasons(b"\x92")

    @pytest.mark.parametrize(
        ("texts", "items", "expected"),
        [
            (["r9.12", "b", "r0.0", "a"], [1, 2, 3, 4], {1, 3}),
            (["r70.600", "t"], [5, 6, 7], {5}),  # more items than reasons: the rest not
            (["a", "r2.3", "r1.1"], [8, 9], {9}),  # more reasons than items
            ([], [1, 2], set()),
        ],
    )
    def test_repeat_items_are_the_repeat_reasons(
        self, texts: list[str], items: list[int], expected: set[int]
    ) -> None:
        """The bought items the API reads without decoding every reason: those whose reason
        decodes to ``repeat``. Catches reading the wrong byte of a packed reason."""
        packed = keys.encode_reasons(texts)
        decoded = [why["code"] == "repeat" for why in keys.decode_reasons(packed)]
        assert keys.repeat_items(items, packed) == expected
        assert expected == {item for item, repeat in zip(items, decoded, strict=False) if repeat}
        assert keys.repeat_items(items, None) == frozenset()
        with pytest.raises(ValueError, match="multiple of 2"):
            keys.repeat_items(items, b"\x92")

    def test_unknown_family_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown bucket family"):
            keys.user_bucket_key("v1", 0, family="x")


class TestExperiment:
    """A/B arms (issue #18): a stable slot per user, pinned, independent of the bucket."""

    def test_experiment_key_golden(self) -> None:
        assert keys.experiment_key() == "recsys:ab"
        assert keys.experiment_key("p1") == "p1:ab"

    @pytest.mark.parametrize(("user", "slot"), [(0, 205), (1, 6770), (42, 1739), (1364, 6931)])
    def test_slot_golden(self, user: int, slot: int) -> None:
        assert keys.variant_slot(user) == slot

    def test_share_is_respected_and_nested(self) -> None:
        users = range(100_000)
        tenth = {u for u in users if keys.in_treatment(u, 0.1)}
        fifth = {u for u in users if keys.in_treatment(u, 0.2)}
        assert 9_700 < len(tenth) < 10_300
        assert tenth < fifth  # growing the share keeps every treated user treated
        assert all(keys.in_treatment(u, 1.0) for u in range(1000))

    def test_arm_does_not_follow_the_bucket(self) -> None:
        treated = [u for u in range(20_000) if keys.in_treatment(u, 0.1)]
        buckets = {keys.bucket_of(u, 16) for u in treated}
        assert buckets == set(range(16))
