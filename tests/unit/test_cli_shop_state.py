"""``recsys scenario|catalog|promo`` (#27): exit codes and messages on bad input (fakeredis).

Bad input exits 2 naming the file and the rule or line, and leaves Redis untouched; Redis
down exits 4. The real-server round trip is in tests/integration/test_shop_state_cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pytest
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.publish import store
from tests.conftest import free_port


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(store, "connect", lambda cfg, check=True: client)
    return client


def recsys(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"RECSYS_REDIS__KEY_PREFIX": "p", **(env or {})})


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


class TestScenario:
    def test_an_unknown_rule_exits_2_naming_file_and_rule(
        self, fake: fakeredis.FakeRedis, tmp_path: Path
    ) -> None:
        path = write(tmp_path, "s.toml", "min_new = 2\nmax_per_brand = 1\n")
        result = recsys("scenario", "set", "weekend", "--file", path)
        assert result.exit_code == 2
        assert f"{path}: unknown rule 'max_per_brand'" in " ".join(result.output.split())
        assert fake.keys("*") == []

    def test_a_bad_value_exits_2_naming_the_rule(
        self, fake: fakeredis.FakeRedis, tmp_path: Path
    ) -> None:
        path = write(tmp_path, "s.toml", 'min_new = "two"\n')
        result = recsys("scenario", "set", "weekend", "--file", path)
        assert result.exit_code == 2
        assert "bad value for rule 'min_new'" in result.output
        assert fake.keys("*") == []

    def test_a_missing_file_exits_2(self, fake: fakeredis.FakeRedis, tmp_path: Path) -> None:
        result = recsys("scenario", "set", "weekend", "--file", str(tmp_path / "nope.toml"))
        assert result.exit_code == 2
        assert "nope.toml" in result.output

    @pytest.mark.parametrize("command", ["show", "delete"])
    def test_an_unknown_scenario_exits_2(self, fake: fakeredis.FakeRedis, command: str) -> None:
        result = recsys("scenario", command, "nope")
        assert result.exit_code == 2
        assert "unknown scenario 'nope'" in result.output

    def test_set_then_show_prints_the_rules_as_json(
        self, fake: fakeredis.FakeRedis, tmp_path: Path
    ) -> None:
        path = write(tmp_path, "s.toml", 'min_new = 2\ndepartments = ["GROCERY"]\n')
        assert recsys("scenario", "set", "weekend", "--file", path).exit_code == 0
        shown = recsys("scenario", "show", "weekend")
        assert (shown.exit_code, shown.stdout) == (
            0,
            '{"min_new": 2, "departments": ["GROCERY"]}\n',
        )


class TestCatalogAndPromo:
    def test_a_bad_line_exits_2_and_marks_nothing(
        self, fake: fakeredis.FakeRedis, tmp_path: Path
    ) -> None:
        """Catches writing the good lines before the bad one (a half-applied file)."""
        path = write(tmp_path, "u.txt", "1\n2\nabc\n")
        result = recsys("catalog", "unavailable", path)
        assert result.exit_code == 2
        assert "line 3: 'abc' is not an item id" in " ".join(result.output.split())
        assert fake.keys("*") == []

    @pytest.mark.parametrize(
        "args",
        [
            ["catalog", "unavailable", "--store", "-1"],
            ["catalog", "unavailable", "--ttl-hours", "0"],
            ["promo", "set", "--until", "2030-02-30"],
            ["promo", "set", "--until", "2001-01-01"],
        ],
    )
    def test_bad_options_exit_2_and_write_nothing(
        self, fake: fakeredis.FakeRedis, tmp_path: Path, args: list[str]
    ) -> None:
        path = write(tmp_path, "u.txt", "1\n")
        result = recsys(*args[:2], path, *args[2:])
        assert result.exit_code == 2, result.output
        assert fake.keys("*") == []


def test_redis_down_exits_4(tmp_path: Path) -> None:
    """Nothing listens on the port: exit 4 (Redis unavailable), not 1 (a bug)."""
    path = write(tmp_path, "u.txt", "1\n")
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "RECSYS_REDIS__RETRIES": "0"}
    result = recsys("catalog", "unavailable", path, env=env)
    assert result.exit_code == 4, result.output
    assert "cannot reach Redis" in result.output
