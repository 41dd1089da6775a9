"""Shop state in Redis (#27): input files, scenarios, unavailable items, promotions (fakeredis)."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import fakeredis
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError, DataError, PublishError
from recsys_batch.publish import shop_keys, shop_state
from recsys_batch.rules import RuleError, RuleSet

CFG = RedisConfig(key_prefix="p", retries=0)
HOUR = 3600.0


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def write(tmp_path: Path, text: str, name: str = "items.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


class TestShopKeys:
    def test_golden_key_names(self) -> None:
        assert shop_keys.scenarios_key("p") == "p:scenarios"
        assert shop_keys.unavailable_key("p") == "p:unavailable"
        assert shop_keys.unavailable_key("p", "12") == "p:unavailable:12"
        assert shop_keys.promo_key() == "recsys:promo"
        assert shop_keys.in_force(1765000000.25) == ("(1765000000.25", "+inf")

    @pytest.mark.parametrize("store", ["1:2", "-1", "*", True, 1.5, "", 2**63])
    def test_a_store_id_is_a_non_negative_integer(self, store: object) -> None:
        """Catches request text (``*``, ``:``) reaching a key name."""
        with pytest.raises(ValueError, match="invalid store id"):
            shop_keys.unavailable_key("p", store)

    @pytest.mark.parametrize("name", ["", "a b", "-x", "a:b", "x" * 65, 3])
    def test_a_scenario_name_is_checked(self, name: object) -> None:
        with pytest.raises(ValueError, match="invalid scenario name"):
            shop_keys.check_scenario_name(name)

    def test_members_decode_to_item_ids(self) -> None:
        assert shop_keys.decode_item_set([b"7", "12", b"7"]) == {7, 12}
        with pytest.raises(ValueError, match="'x1' is not an item id"):
            shop_keys.decode_item_set([b"1", b"x1"])

    def test_import_loads_no_third_party_module(self) -> None:
        """The API reads shop state with these keys: no redis-py, pydantic or polars."""
        code = (
            "import sys, recsys_batch.publish.shop_keys; "
            "print(','.join(m for m in ('polars', 'numpy', 'redis', 'pydantic') "
            "if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert out.stdout.strip() == ""


class TestItemFiles:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("101\n102\n\n101\n", [101, 102]),
            ("\ufeff7\r\n8\r\n", [7, 8]),
            ("store,item_id,qty\n1,55,2\n\n1, 56 ,3\n", [55, 56]),
            ("item_id\n4294967295\n", [4294967295]),
        ],
    )
    def test_one_id_per_line_or_a_csv_with_item_id(
        self, tmp_path: Path, text: str, expected: list[int]
    ) -> None:
        assert shop_state.read_item_ids(write(tmp_path, text)) == expected

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("sku\n1\n", "no item_id column"),
            ("1\n2\nthree\n", "line 3: 'three' is not an item id"),
            ("1\n-2\n", "line 2: '-2'"),
            ("4294967296\n", "line 1: '4294967296'"),
            ("item_id,qty\n5,1\n,2\n", "line 3: ''"),
            ("\n\n", "no item id in the file"),
        ],
    )
    def test_bad_files_name_file_line_and_fix(self, tmp_path: Path, text: str, says: str) -> None:
        with pytest.raises(DataError, match="fix: give one item id per line") as caught:
            shop_state.read_item_ids(write(tmp_path, text))
        assert says in str(caught.value)
        assert caught.value.file == str(tmp_path / "items.txt")

    def test_a_missing_file_is_bad_input(self, tmp_path: Path) -> None:
        with pytest.raises(DataError, match="cannot read") as caught:
            shop_state.read_item_ids(tmp_path / "nope.txt")
        assert caught.value.exit_code == 2


class TestScenarioFiles:
    def test_reads_the_rules(self, tmp_path: Path) -> None:
        path = write(tmp_path, "min_new = 2\nmax_per_category = 1\n", "s.toml")
        assert shop_state.read_scenario_file(path) == RuleSet(min_new=2, max_per_category=1)

    def test_not_toml_names_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "min_new = \n", "s.toml")
        with pytest.raises(DataError, match="not a TOML file") as caught:
            shop_state.read_scenario_file(path)
        assert caught.value.file == str(path)

    def test_an_unknown_rule_names_the_file_and_the_rule(self, tmp_path: Path) -> None:
        path = write(tmp_path, "min_new = 2\n[max_per_category]\nx = 1\n", "s.toml")
        with pytest.raises(RuleError, match=f"{path}: bad value for rule 'max_per_category'"):
            shop_state.read_scenario_file(path)


class TestScenarios:
    def test_set_show_list_delete(self, client: fakeredis.FakeRedis) -> None:
        shop_state.set_scenario(client, "weekend", RuleSet(min_new=2), CFG)
        shop_state.set_scenario(client, "a.b-1", RuleSet(brands=("Private",)), CFG)
        shop_state.set_scenario(client, "weekend", RuleSet(min_new=3), CFG)  # replaces
        assert client.hget("p:scenarios", "weekend") == b'{"min_new": 3}'
        assert shop_state.scenario(client, "weekend", CFG) == RuleSet(min_new=3)
        assert list(shop_state.scenarios(client, CFG)) == ["a.b-1", "weekend"]
        shop_state.delete_scenario(client, "weekend", CFG)
        assert shop_state.scenarios(client, CFG) == {"a.b-1": RuleSet(brands=("Private",))}

    @pytest.mark.parametrize("call", ["scenario", "delete_scenario"])
    def test_an_unknown_scenario_lists_the_known_ones(
        self, client: fakeredis.FakeRedis, call: str
    ) -> None:
        shop_state.set_scenario(client, "weekend", RuleSet(min_new=2), CFG)
        with pytest.raises(ConfigError, match="unknown scenario 'x': the scenarios are weekend"):
            getattr(shop_state, call)(client, "x", CFG)

    def test_a_bad_name_writes_nothing(self, client: fakeredis.FakeRedis) -> None:
        with pytest.raises(ConfigError, match="invalid scenario name"):
            shop_state.set_scenario(client, "a b", RuleSet(min_new=2), CFG)
        assert client.keys("*") == []

    @pytest.mark.parametrize(
        ("stored", "rule"), [("{", "hand"), ("[1]", "hand"), ('{"min_new": -1}', "min_new")]
    )
    def test_a_corrupt_stored_scenario_names_it(
        self, client: fakeredis.FakeRedis, stored: str, rule: str
    ) -> None:
        client.hset("p:scenarios", "hand", stored)
        with pytest.raises(RuleError, match="stored scenario 'hand'") as caught:
            shop_state.scenario(client, "hand", CFG)
        assert caught.value.rule == rule


class TestUnavailable:
    def test_a_ttl_ends_at_its_second(self, client: fakeredis.FakeRedis) -> None:
        """Catches an off-by-one end (``>=`` for ``>``) or hours read as seconds."""
        end = shop_state.mark_unavailable(client, [5, 6], CFG, ttl_hours=2, now=1000.0)
        assert end == 1000.0 + 2 * HOUR
        assert shop_state.unavailable(client, CFG, now=end - 0.5) == {5: end, 6: end}
        assert shop_state.unavailable(client, CFG, now=end) == {}

    def test_without_ttl_until_marked_available(self, client: fakeredis.FakeRedis) -> None:
        shop_state.mark_unavailable(client, [5, 6], CFG, now=1000.0)
        assert shop_state.unavailable(client, CFG, now=1e12) == {
            5: shop_keys.NO_EXPIRY,
            6: shop_keys.NO_EXPIRY,
        }
        assert shop_state.mark_available(client, [6, 7], CFG) == 1
        assert shop_state.unavailable(client, CFG) == {5: shop_keys.NO_EXPIRY}

    def test_a_store_has_its_own_set(self, client: fakeredis.FakeRedis) -> None:
        shop_state.mark_unavailable(client, [5], CFG)
        shop_state.mark_unavailable(client, [6], CFG, store=12)
        assert list(shop_state.unavailable(client, CFG, store=12)) == [6]
        assert shop_state.mark_available(client, [5], CFG, store=12) == 0
        assert list(shop_state.unavailable(client, CFG)) == [5]

    def test_a_later_mark_replaces_the_end_and_expired_members_go(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """Catches a set that keeps every item ever marked (it only grows)."""
        shop_state.mark_unavailable(client, [5, 6], CFG, ttl_hours=1, now=0.0)
        shop_state.mark_unavailable(client, [6], CFG, now=2 * HOUR)
        assert client.zrange("p:unavailable", 0, -1, withscores=True) == [(b"6", float("inf"))]

    @pytest.mark.parametrize("hours", [0, -1, float("inf"), float("nan")])
    def test_a_bad_ttl_writes_nothing(self, client: fakeredis.FakeRedis, hours: float) -> None:
        with pytest.raises(ConfigError, match="--ttl-hours"):
            shop_state.mark_unavailable(client, [5], CFG, ttl_hours=hours)
        assert client.keys("*") == []


class TestPromotion:
    def test_set_replaces_and_expires_at_the_end_of_the_day(
        self, client: fakeredis.FakeRedis
    ) -> None:
        day = date(2030, 1, 31)
        end = shop_state.promotion_end(day)
        assert end == 1896134400.0  # 2030-02-01T00:00:00Z
        shop_state.set_promotion(client, [1, 2], day, CFG, now=0.0)
        shop_state.set_promotion(client, [3, 2], day, CFG, now=0.0)
        assert shop_state.promotion(client, CFG, now=end - 1) == ([2, 3], day)
        assert shop_state.promotion(client, CFG, now=end) == ([], None)
        assert client.expiretime("p:promo") == int(end)

    def test_a_past_day_leaves_the_running_promotion(self, client: fakeredis.FakeRedis) -> None:
        shop_state.set_promotion(client, [1], date(2030, 1, 31), CFG, now=0.0)
        now = shop_state.promotion_end(date(2026, 12, 7))
        with pytest.raises(ConfigError, match="--until 2026-12-07 is over"):
            shop_state.set_promotion(client, [9], date(2026, 12, 7), CFG, now=now)
        assert shop_state.promotion(client, CFG, now=now)[0] == [1]

    def test_clear(self, client: fakeredis.FakeRedis) -> None:
        shop_state.set_promotion(client, [1], date(2030, 1, 31), CFG, now=0.0)
        assert shop_state.clear_promotion(client, CFG)
        assert not shop_state.clear_promotion(client, CFG)
        assert shop_state.promotion(client, CFG, now=0.0) == ([], None)


def test_redis_down_is_a_publish_error() -> None:
    """Exit 4 (Redis unavailable), never a crash (exit 1)."""

    class Down(fakeredis.FakeRedis):
        def hset(self, *args: object, **kwargs: object) -> int:
            raise redis.ConnectionError("refused")

    with pytest.raises(PublishError, match="scenario set after 1 attempts") as caught:
        shop_state.set_scenario(Down(), "x", RuleSet(min_new=1), CFG)
    assert caught.value.exit_code == 4
