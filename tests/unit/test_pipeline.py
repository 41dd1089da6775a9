"""The nightly run: its stage list, the quality gate, and dry runs of the real model (#5, #15).

A run that publishes needs Redis: those tests are in
``tests/integration/test_pipeline_run.py``. Here Redis is unreachable, so a dry run scores
without it (as ``recsys nightly-batch --dry-run`` does on a machine without Redis).
"""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError, LockError, QualityGateError, RecsysError
from recsys_batch.model import two_stage
from recsys_batch.run import pipeline, quality_gate, records, run_shards, stages
from recsys_batch.run.lock import run_lock
from recsys_batch.run.stages import RunState
from tests.nightly import saved_recommendations, shard_files, small_run_settings

UNREACHABLE = "redis://127.0.0.1:1/0"
"""Nothing listens on port 1: a dry run goes on without Redis."""
STAGE_NAMES = ["load", "prefilter", "gate", "train", "save", "score_and_publish"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return small_run_settings(tmp_path, UNREACHABLE, "unit")


class TestStageList:
    def test_names_and_order(self) -> None:
        assert [name for name, _ in pipeline.STAGES] == STAGE_NAMES

    def test_each_name_is_its_stage_function(self) -> None:
        functions = dict(pipeline.STAGES)
        assert functions["load"] is stages.load
        assert functions["gate"] is stages.run_gate
        assert functions["prefilter"] is stages.run_prefilter
        assert functions["train"] is stages.train
        assert functions["save"] is stages.save
        assert functions["score_and_publish"] is stages.score_and_publish

    def test_publishing_comes_after_the_gate_and_the_saved_models(self) -> None:
        names = [name for name, _ in pipeline.STAGES]
        assert names[-1] == "score_and_publish"
        assert names.index("gate") < names.index("train") < names.index("save")


def gate_settings(metric: str = "precision@5", floor: float = 0.15, drop: float = 0.1) -> Settings:
    return Settings(gate={"metric": metric, "min_precision_at_5": floor, "max_relative_drop": drop})


class TestCheckGate:
    @pytest.mark.parametrize("value", [0.15, 0.2, 1.0])
    def test_at_or_above_the_floor_passes(self, value: float) -> None:
        decision = quality_gate.check_gate({"precision@5": value}, {}, gate_settings())
        assert decision["value"] == value
        assert decision["floor"] == 0.15
        assert decision["metric"] == "precision@5"
        assert "threshold" not in decision  # no live version to compare with

    @pytest.mark.parametrize("value", [0.0, 0.1, 0.1499])
    def test_below_the_floor_is_refused(self, value: float) -> None:
        with pytest.raises(QualityGateError, match="below the floor") as info:
            quality_gate.check_gate({"precision@5": value}, {}, gate_settings())
        assert info.value.exit_code == 3

    @pytest.mark.parametrize(
        ("value", "live", "refused"),
        [
            (0.35, 0.40, True),  # -12.5% > 10%
            (0.37, 0.40, False),  # -7.5%
            (0.36, 0.40, False),  # exactly -10%: passes (not 0.4 * 0.9 = 0.36000000000000004)
            (0.50, 0.40, False),  # better than live
            (0.20, 0.0, False),  # a live value of 0 is no reference
        ],
    )
    def test_relative_drop_against_the_live_version(
        self, value: float, live: float, refused: bool
    ) -> None:
        metrics, live_metrics = {"precision@5": value}, {"precision@5": live}
        if refused:
            with pytest.raises(QualityGateError, match="below the live version"):
                quality_gate.check_gate(metrics, live_metrics, gate_settings())
        else:
            decision = quality_gate.check_gate(metrics, live_metrics, gate_settings())
            assert decision["live"] == live
            if live > 0:
                assert decision["threshold"] == pytest.approx(live * 0.9)

    def test_live_without_the_metric_is_no_reference(self) -> None:
        decision = quality_gate.check_gate({"precision@5": 0.2}, {"recall@5": 0.9}, gate_settings())
        assert decision["live"] is None
        assert "threshold" not in decision

    @pytest.mark.parametrize("metrics", [{}, {"recall@5": 0.5}, {"precision@5": "0.3"}])
    def test_missing_metric_is_refused(self, metrics: dict[str, object]) -> None:
        with pytest.raises(QualityGateError, match="reported no precision@5"):
            quality_gate.check_gate(metrics, {}, gate_settings())

    def test_reads_the_configured_metric(self) -> None:
        settings = gate_settings(metric="recall@5", floor=0.3)
        metrics = {"precision@5": 0.01, "recall@5": 0.4}
        decision = quality_gate.check_gate(metrics, {"recall@5": 0.42}, settings)
        assert (decision["metric"], decision["value"]) == ("recall@5", 0.4)
        with pytest.raises(QualityGateError, match="recall@5 0.4000 is more than 10%"):
            quality_gate.check_gate(metrics, {"recall@5": 0.5}, settings)
        with pytest.raises(QualityGateError, match="reported no recall@5"):
            quality_gate.check_gate({"precision@5": 0.9}, {}, settings)


class TestCutDay:
    @pytest.mark.parametrize(
        ("run_date", "day"),
        [(date(2017, 1, 1), 1), (date(2017, 1, 8), 8), (date(2017, 12, 31), 365)],
    )
    def test_day_one_is_the_origin(self, run_date: date, day: int) -> None:
        assert stages.cut_day(run_date, date(2017, 1, 1)) == day

    def test_before_the_origin_is_not_positive(self) -> None:
        assert stages.cut_day(date(2016, 12, 31), date(2017, 1, 1)) == 0


class TestLoadStage:
    def test_run_date_hides_later_data_and_sets_the_windows(
        self, settings: Settings, tmp_path: Path
    ) -> None:
        cut = settings.data.origin_date + timedelta(days=7 * 30 - 1)
        record = records.start_run(tmp_path / "runs", {})
        state = RunState(settings, record, run_date=cut)
        rows = stages.load(state)
        tx = state.data.dataset.transactions.collect()
        assert rows == tx.height > 0
        assert tx[C.DAY].max() <= stages.cut_day(cut, settings.data.origin_date) == 7 * 30
        assert record.data["last_day"] == tx[C.DAY].max()
        assert state.windows is not None
        assert state.windows.target_end == record.data["last_week"] + 1 == tx[C.WEEK].max() + 1


def refused_run(
    settings: Settings, error: type[RecsysError], match: str, exit_code: int, **run: Any
) -> tuple[Path, dict[str, Any]]:
    """Run the night expecting ``error`` (its exit code); its run folder and manifest, with
    no recommendations written."""
    with pytest.raises(error, match=match) as info:
        pipeline.run_nightly(settings, dry_run=True, **run)
    assert info.value.exit_code == exit_code
    (run_dir,) = settings.run.runs_dir.iterdir()
    assert not (run_dir / stages.RECOMMENDATIONS_FILE).exists()
    return run_dir, records.read_manifest(run_dir)


class TestDryRunWithoutRedis:
    def test_scores_every_user_in_shards_and_records_each_stage(self, settings: Settings) -> None:
        peak_before = records.peak_memory_mb()
        result = pipeline.run_nightly(settings, dry_run=True, gate=False)
        peak_after = records.peak_memory_mb()
        assert (result.status, result.version) == ("dry-run", None)
        recs = saved_recommendations(result.run_dir)
        assert len(shard_files(result.run_dir)) >= 2  # 300 users in shards of 100
        assert recs[C.USER].n_unique() == result.users == 300
        assert recs.group_by(C.USER).len()["len"].max() <= settings.publish.top_n
        manifest = records.read_manifest(result.run_dir)
        assert manifest["status"] == "dry-run"
        assert [s["name"] for s in manifest["stages"]] == STAGE_NAMES
        rows = {s["name"]: s["rows"] for s in manifest["stages"]}
        assert rows["gate"] == 0  # skipped
        assert rows["score_and_publish"] == 300
        assert all(rows[name] > 0 for name in STAGE_NAMES if name != "gate")
        # ru_maxrss in MiB when each stage ended: between the peaks read around the run
        # (catches a peak left at 0, kept in KiB, or a per-stage delta instead of the mark).
        peaks = [s["peak_mb"] for s in manifest["stages"]]
        assert 0 < round(peak_before, 1) <= min(peaks)
        assert max(peaks) <= manifest["peak_memory_mb"] <= round(peak_after, 1)
        assert manifest["metrics"] == {"gate": "skipped", "ranker_source": "trained"}
        assert manifest["parameters"]["settings"]["redis"]["url"] == UNREACHABLE
        assert any((result.run_dir / "models").iterdir())
        assert not (result.run_dir / run_shards.SHARDS_DIR).exists()

    def test_gate_runs_without_a_live_version(self, settings: Settings) -> None:
        result = pipeline.run_nightly(settings, dry_run=True)
        gate = result.metrics["gate"]
        assert gate["metric"] == "precision@5"
        assert gate["value"] == result.metrics["precision@5"] >= settings.gate.min_precision_at_5
        assert gate["live"] is None
        assert result.metrics["ranker_source"] == "gate"

    def test_gate_refusal_is_recorded(self, tmp_path: Path) -> None:
        strict = small_run_settings(
            tmp_path, UNREACHABLE, "unit", gate={"min_precision_at_5": 0.99}
        )
        _, manifest = refused_run(strict, QualityGateError, "below the floor", 3)
        assert manifest["status"] == "gate-refused"
        assert [s["name"] for s in manifest["stages"]] == ["load", "prefilter"]

    def test_empty_stage_stops_the_run(self, settings: Settings) -> None:
        _, manifest = refused_run(
            settings, EmptyStageError, "'load' produced zero transactions", 2,
            run_date=date(2000, 1, 1),
        )  # fmt: skip
        assert manifest["status"] == "failed"
        assert "EmptyStageError" in manifest["error"]

    def test_locked_run_is_refused_before_it_starts(self, settings: Settings) -> None:
        with run_lock(settings.run.lock_file), pytest.raises(LockError) as info:
            pipeline.run_nightly(settings, dry_run=True)
        assert info.value.exit_code == 5
        assert not settings.run.runs_dir.exists()


class TestFitsBesideTheGate:
    """Stage 1 for scoring and the new-items ranker (``two_stage.fit_serving_parts``) run on
    a thread beside the gate's backtest up to ``scale.beside_gate_rows`` transactions, after
    it above (#26)."""

    @staticmethod
    def _events(monkeypatch: pytest.MonkeyPatch, outlast_the_gate: bool = False) -> list[str]:
        events: list[str] = []
        decided = threading.Event()
        fit, check = two_stage.fit_serving_parts, quality_gate.check_gate

        def logged_fit(*args: Any, **kwargs: Any) -> two_stage.ServingParts:
            events.append("fit started")
            parts = fit(*args, **kwargs)
            if outlast_the_gate:  # still computing when the gate has decided
                decided.wait(timeout=60)
                time.sleep(0.2)
            events.append("fit ended")
            return parts

        def logged_check(*args: Any, **kwargs: Any) -> dict[str, Any]:
            events.append("gate decided")
            decided.set()
            return check(*args, **kwargs)

        monkeypatch.setattr(two_stage, "fit_serving_parts", logged_fit)
        monkeypatch.setattr(quality_gate, "check_gate", logged_check)
        return events

    def test_a_small_input_s_fits_start_before_the_gate_decides(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Mutation caught: the fits started by the train stage (after the gate)."""
        beside = small_run_settings(
            tmp_path, UNREACHABLE, "unit", scale={"shard_users": 100, "beside_gate_rows": 10**9}
        )
        events = self._events(monkeypatch)
        result = pipeline.run_nightly(beside, dry_run=True)
        assert result.metrics["ranker_source"] == "gate"
        assert events.index("fit started") < events.index("gate decided")
        assert events.count("fit started") == 1

    def test_a_larger_input_s_fits_start_after_the_gate_passed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Above ``scale.beside_gate_rows`` the driver's peak is the larger of the two, not
        their sum. Mutation caught: the fits started beside the gate whatever the size."""
        larger = small_run_settings(
            tmp_path, UNREACHABLE, "unit", scale={"shard_users": 100, "beside_gate_rows": 1000}
        )
        events = self._events(monkeypatch)
        result = pipeline.run_nightly(larger, dry_run=True)
        assert result.users == 300
        assert events == ["gate decided", "fit started", "fit ended"]

    def test_a_refused_gate_returns_once_the_fits_have_ended(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Mutation caught: the refused run raising while its fits still compute."""
        strict = small_run_settings(
            tmp_path,
            UNREACHABLE,
            "unit",
            gate={"min_precision_at_5": 0.99},
            scale={"shard_users": 100, "beside_gate_rows": 10**9},
        )
        events = self._events(monkeypatch, outlast_the_gate=True)
        with pytest.raises(QualityGateError, match="below the floor"):
            pipeline.run_nightly(strict, dry_run=True)
        assert events[-1] == "fit ended"
        assert events.index("gate decided") < events.index("fit ended")

    def test_a_failed_fit_fails_the_run_with_its_own_error(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Its exit code (2 here), the manifest says so and nothing is written. Mutation
        caught: the train stage fitting again, or passing on, when the thread failed."""

        def empty(*args: Any, **kwargs: Any) -> two_stage.ServingParts:
            raise EmptyStageError("no first purchase in the window", fix="check the split")

        monkeypatch.setattr(two_stage, "fit_serving_parts", empty)
        _, manifest = refused_run(settings, EmptyStageError, "no first purchase", 2)
        assert manifest["status"] == "failed"
        assert [s["name"] for s in manifest["stages"]] == ["load", "prefilter", "gate"]


def test_saved_recommendations_match_a_single_scoring(settings: Settings) -> None:
    """Shards change nothing: one shard of everybody gives the same lists (issue #15)."""
    sharded = pipeline.run_nightly(settings, dry_run=True, gate=False)
    whole = settings.model_copy(
        update={"scale": settings.scale.model_copy(update={"shard_users": 10_000})}
    )
    single = pipeline.run_nightly(whole, dry_run=True, gate=False)
    assert len(shard_files(single.run_dir)) == 1
    assert_frame_equal(
        saved_recommendations(sharded.run_dir).drop(C.SCORE),
        saved_recommendations(single.run_dir).drop(C.SCORE),
        check_row_order=False,
    )


class TestDockerCompose:
    """No Docker engine here: check the file's structure (issue #5)."""

    def test_the_dask_profile_runs_the_batch_on_its_scheduler(self) -> None:
        """Issue #17: scheduler + 2 workers + a batch using --scheduler, one shared volume."""
        yaml = pytest.importorskip("yaml")
        root = Path(__file__).resolve().parents[2]
        services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
        dask = {name for name, svc in services.items() if "dask" in svc.get("profiles", [])}
        assert dask == {"dask-scheduler", "dask-worker", "batch-dask"}
        assert services["dask-worker"]["deploy"]["replicas"] == 2
        batch = services["batch-dask"]
        assert "--scheduler tcp://dask-scheduler:8786" in " ".join(batch["command"])
        shared = batch["environment"]["RECSYS_SCALE__SHARED_DIR"]
        assert f"shared:{shared}" in batch["volumes"]
        assert f"shared:{shared}:ro" in services["dask-worker"]["volumes"]
        worker_env = services["dask-worker"]["environment"]
        assert worker_env["REDIS_URL"] == batch["environment"]["REDIS_URL"]

    def test_services_share_config_and_redis_is_healthy_and_persistent(self) -> None:
        yaml = pytest.importorskip("yaml")
        root = Path(__file__).resolve().parents[2]
        compose = yaml.safe_load((root / "docker-compose.yml").read_text())
        services = compose["services"]
        by_default = {name for name, svc in services.items() if "profiles" not in svc}
        assert by_default == {"redis", "api", "batch"}
        redis_cmd = " ".join(services["redis"]["command"])
        assert "--appendonly yes" in redis_cmd
        assert "healthcheck" in services["redis"]
        assert services["api"]["command"] == ["recsys", "serve"]
        assert "recsys nightly-batch" in " ".join(services["batch"]["command"])
        assert services["api"]["environment"] == {
            k: v for k, v in services["batch"]["environment"].items() if k != "BATCH_AT"
        }
        for name in ("api", "batch"):
            assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
