"""``recsys evaluate`` end to end on small in-memory synthetic data (issues #3 and #4)."""

from __future__ import annotations

import json
from pathlib import Path

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
    [new_hit] = payload["new_hit_diff"]
    assert (new_hit["model"], new_hit["anchor"]) == ("two_stage", "copurchase_new")
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
        assert set(origin["diff"]) == {
            "popular",
            "own_purchases",
            "als",
            "tifu_knn",
            "copurchase_new",
        }
        for d in origin["diff"].values():
            assert d["lo"] <= d["mean"] <= d["hi"]
    assert {r["origins"] for r in payload["mean_over_origins"]} == {2}


def test_evaluate_seeds_must_be_positive(config_file: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--config", str(config_file), "--seeds", "0"])
    assert result.exit_code == 2
    assert "--seeds" in result.output


def test_evaluate_candidates_stage(config_file: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "cands.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--config",
            str(config_file),
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


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ranker]\nobjective = 'nope'\n")
    result = CliRunner().invoke(app, ["evaluate", "--config", str(bad)])
    assert result.exit_code == 2
    assert "ranker.objective" in result.output
