"""Golden tests pinning the Redis key and value format (docs/redis-format.md)."""

import pytest

from recsys_batch.publish import keys


class TestKeyBuilders:
    @pytest.mark.parametrize(
        ("built", "expected"),
        [
            (keys.current_key(), "recsys:current"),
            (keys.previous_key(), "recsys:previous"),
            (keys.versions_key(), "recsys:versions"),
            (keys.user_key("20261128T031500Z-5f3a", 42), "recsys:v:20261128T031500Z-5f3a:u:42"),
            (keys.user_key("v1", "42"), "recsys:v:v1:u:42"),
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
            keys.user_key("v1", bad)

    @pytest.mark.parametrize("bad", ["", "a:b", "a*", "x" * 65, "-lead"])
    def test_bad_version_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="invalid version id"):
            keys.user_key(bad, 1)


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
