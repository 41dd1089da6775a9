"""``recsys evaluate`` end to end on small in-memory synthetic data (issues #3 and #4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.evaluation.rows import MODELS

CONFIG = """
[data]
source = "synthetic"
synthetic_users = 200
synthetic_seed = 3

[prefilter]
min_user_share = 0.01
max_user_share = 1.0
min_department_items = 0
min_price = 0.0
max_price = 1000000000.0
top_n = 300

[candidates]
n_als = 20
n_own = 20
n_copurchase = 10
n_popular = 10
n_trend = 5
max_per_user = 50

[candidates.als]
factors = 8
iterations = 3
threads = 1

[ranker]
n_estimators = 30
threads = 1
num_leaves = 7
min_child_samples = 5
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "recsys.toml"
    path.write_text(CONFIG)
    return path


def test_evaluate_table_json_and_report(config_file: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "eval.json"
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--config",
            str(config_file),
            "--json",
            str(out_json),
            "--report",
            str(report),
            "--origins",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "two_stage" in result.output and "Protocol" in result.output
    payload = json.loads(out_json.read_text())
    rows = payload["rows"]
    assert {r["model"] for r in rows} == {*MODELS}
    assert {r["user_set"] for r in rows} == {"all", "seed"}
    # #26: every row gains revenue and discovery; the anchor lists new items only.
    for row in rows:
        assert set(row) >= {"precision@5", "revenue@5", "new_share", "repeat_hit", "new_hit"}
    anchor = next(r for r in rows if (r["model"], r["user_set"]) == ("copurchase_new", "all"))
    assert anchor["new_share"] == 1.0 and anchor["repeat_hit"] is None
    # One new_hit interval per list against the anchor: the main list and the new-items list.
    assert [(d["model"], d["anchor"]) for d in payload["new_hit_diff"]] == [
        ("two_stage", "copurchase_new"),
        ("two_stage_new", "copurchase_new"),
    ]
    assert payload["origins"][0]["new_hit_diff"] == payload["new_hit_diff"]
    assert "Revenue and new items" in result.output and "new_hit minus" in result.output
    for name in (
        "precision_at_k.png",
        "candidate_recall.png",
        "prefilter_funnel.png",
        "feature_importance.png",
        "index.md",
        "index.html",
    ):
        assert (report / name).stat().st_size > 0, name
    assert (report / "precision_at_k.png").read_bytes()[:4] == b"\x89PNG"
    index = (report / "index.md").read_text()
    assert "precision_at_k.png" in index
    assert "| revenue@5 | new_share | repeat_hit | new_hit |" in index
    assert "| two_stage | copurchase_new |" in index


def test_evaluate_seeds_prints_and_writes_the_spread(config_file: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "eval.json"
    report = tmp_path / "report"
    args = ["evaluate", "--config", str(config_file), "--seeds", "2", "--json", str(out_json)]
    args += ["--origins", "1"]
    result = CliRunner().invoke(app, [*args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "over seed runs" in result.output
    payload = json.loads(out_json.read_text())
    assert len(payload["seed_runs"]) == 2
    assert payload["seed_runs"][0]["rows"] == payload["rows"]
    spread = {(r["model"], r["user_set"]): r for r in payload["seed_spread"]}
    assert set(spread) == {(r["model"], r["user_set"]) for r in payload["rows"]}
    for row in spread.values():
        assert row["runs"] == 2 and row["min"] <= row["mean"] <= row["max"]
    assert "Precision@5 over seed runs" in (report / "index.md").read_text()


def test_evaluate_two_origins_issue_16(config_file: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "eval.json"
    args = ["evaluate", "--config", str(config_file), "--origins", "2", "--json", str(out_json)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in (
        "test weeks 46-49 (validation)",
        "test weeks 50-53 (final test)",
        "Mean over the 2 origins",
        "two-stage minus baseline",
    ):
        assert text in result.output
    payload = json.loads(out_json.read_text())
    origins = payload["origins"]
    assert [o["test_weeks"] for o in origins] == [[50, 53], [46, 49]]
    assert payload["rows"] == origins[0]["rows"]
    assert origins[0]["rows"] != origins[1]["rows"]
    for origin in origins:
        # Each origin's intervals are over its own "all" users and its own P@5 gaps (an
        # interval reused from the other origin, or over another user set, fails here).
        assert set(origin["diff"]) == {
            "popular",
            "own_purchases",
            "als",
            "tifu_knn",
            "copurchase_new",
            "two_stage_new",
        }
        rows = {r["model"]: r for r in origin["rows"] if r["user_set"] == "all"}
        for baseline, d in origin["diff"].items():
            gap = rows["two_stage"]["precision@5"] - rows[baseline]["precision@5"]
            assert d["mean"] == pytest.approx(gap)
            assert d["users"] == rows[baseline]["users"] == rows["two_stage"]["users"]
            assert d["lo"] <= d["mean"] <= d["hi"]
    assert {r["origins"] for r in payload["mean_over_origins"]} == {2}


def test_evaluate_seeds_must_be_positive(config_file: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--config", str(config_file), "--seeds", "0"])
    assert result.exit_code == 2
    assert "--seeds" in result.output


def test_evaluate_candidates_stage_on_a_synthetic_folder(config_file: Path, tmp_path: Path) -> None:
    """The data source is named by its folder's name only, never its path (#29)."""
    folder = tmp_path / "synth-200"
    synth = ["data", "synth", "--out", str(folder), "--users", "200", "--seed", "3"]
    assert CliRunner().invoke(app, synth).exit_code == 0
    out_json = tmp_path / "cands.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--config",
            str(config_file),
            "--path",
            str(folder),
            "--stage",
            "candidates",
            "--json",
            str(out_json),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out_json.read_text())
    assert set(payload) >= {"generators", "union"}
    assert "precision_at_5_upper_bound" in payload["union"]
    assert "union" in result.output
    (evaluated,) = [line for line in result.output.splitlines() if line.startswith("evaluated")]
    assert evaluated.startswith("evaluated synthetic (synth-200) in ")
    assert str(tmp_path) not in evaluated


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ranker]\nobjective = 'nope'\n")
    result = CliRunner().invoke(app, ["evaluate", "--config", str(bad)])
    assert result.exit_code == 2
    assert "ranker.objective" in result.output


SCENARIO = "min_new = 2\nmax_per_category = 1\n"


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to 9 places: two runs' means may differ in the
    last bits (Polars sums in parallel), never in the 9th decimal."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def test_evaluate_scenario_file_issue_27(config_file: Path, tmp_path: Path) -> None:
    """The real ``recsys evaluate --scenario-file`` at two origins: the plain answers are the
    two-stage rows' lists (the engine without rules serves them as they are), every
    existing field is what a run without the file writes, and the intervals are those of
    the rows' own differences."""
    scenario = tmp_path / "weekend.toml"
    scenario.write_text(SCENARIO)
    runs = {}
    for name, extra in (("plain", []), ("scenario", ["--scenario-file", str(scenario)])):
        out = tmp_path / f"{name}.json"
        args = ["evaluate", "--config", str(config_file), "--origins", "2", "--json", str(out)]
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
        runs[name] = (result.output, json.loads(out.read_text()))
    output, payload = runs["scenario"]
    _, without = runs["plain"]
    assert set(payload) - set(without) == {"scenario"}
    for key in ("rows", "diff", "new_hit_diff", "origins", "mean_over_origins", "candidates"):
        assert rounded(payload[key]) == rounded(without[key]), key
    block = payload["scenario"]
    assert (block["file"], block["rules"], block["k"]) == (
        "weekend.toml",
        {"min_new": 2, "max_per_category": 1},
        5,
    )
    assert [o["test_weeks"] for o in block["origins"]] == [[50, 53], [46, 49]]
    for origin, backtest in zip(block["origins"], payload["origins"], strict=True):
        two_stage = next(
            r for r in backtest["rows"] if (r["model"], r["user_set"]) == ("two_stage", "all")
        )
        rows = {r["list"]: r for r in origin["rows"]}
        plain, ruled = rows["plain"], rows["scenario"]
        for key in ("users", "precision@5", "revenue@5", "new_share", "new_hit"):
            assert rounded(plain[key]) == rounded(two_stage[key]), key
        assert ruled["users"] == plain["users"] == origin["precision_diff"]["users"]
        assert ruled["new_share"] > plain["new_share"]  # min_new moved new items in
        assert 0.0 < origin["changed_share"] <= 1.0
        gap = origin["precision_diff"]
        assert gap["mean"] == pytest.approx(ruled["precision@5"] - plain["precision@5"])
        assert gap["lo"] <= gap["mean"] <= gap["hi"]
        new_hit = origin["new_hit_diff"]
        assert new_hit["mean"] == pytest.approx(ruled["new_hit"] - plain["new_hit"])
    for text in ("Scenario weekend.toml", "test weeks 46-49 (validation)", "short answers"):
        assert text in output


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("min_new = 2\nmax_per_categroy = 1\n", "max_per_categroy"),
        ("min_new = -1\n", "min_new"),
        ("min_new = \n", "not a TOML file"),
        (None, "cannot read"),
    ],
)
def test_bad_scenario_file_exits_2(
    config_file: Path, tmp_path: Path, text: str | None, named: str
) -> None:
    """A bad scenario exits 2 with one line naming the file and the rule, before any data
    is read (a RuleError that escaped as exit 1, or a message without the file, fails)."""
    scenario = tmp_path / "bad.toml"
    if text is not None:  # None: the file does not exist
        scenario.write_text(text)
    args = ["evaluate", "--config", str(config_file), "--scenario-file", str(scenario)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "bad.toml" in result.output and named in result.output
    assert "Protocol" not in result.output


def test_scenario_file_needs_the_two_stage_lists(config_file: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    args = ["evaluate", "--config", str(config_file), "--scenario-file", str(scenario)]
    result = CliRunner().invoke(app, [*args, "--stage", "candidates"])
    assert result.exit_code == 2
    assert "--scenario-file" in result.output
