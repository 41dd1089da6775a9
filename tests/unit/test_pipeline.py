"""run_nightly orchestration with a tiny fake trainer on small synthetic data (issue #5)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import polars as pl
import pytest

from recsys_batch.config import Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset
from recsys_batch.errors import EmptyStageError, LockError, QualityGateError
from recsys_batch.run import pipeline
from recsys_batch.run.lock import run_lock


class FakeTrainer:
    """Recommends the catalogue's best sellers to everyone (known answer)."""

    def __init__(self) -> None:
        self.seen_max_week: int | None = None
        self.windows: Any = None

    def train_two_stage(self, tx, items, users, catalogue, windows, settings) -> dict:  # noqa: ANN001
        self.seen_max_week = tx.select(pl.col(C.WEEK).max()).collect().item()
        self.windows = windows
        top = catalogue.select(C.ITEM).head(settings.ranker.top_k).collect()
        return {"top": top[C.ITEM].to_list()}

    def recommend(self, model, tx, items, users, catalogue, user_ids, settings) -> pl.DataFrame:  # noqa: ANN001
        top = model["top"]
        return (
            user_ids.collect()
            .join(pl.DataFrame({C.ITEM: top, C.RANK: list(range(1, len(top) + 1))}), how="cross")
            .with_columns(pl.col(C.RANK).cast(pl.Int32), pl.lit(1.0, pl.Float32).alias(C.SCORE))
            .select(C.USER, C.ITEM, C.RANK, C.SCORE)
        )

    def popular_fallback(self, tx, catalogue, k: int) -> list[int]:  # noqa: ANN001
        return catalogue.select(C.ITEM).head(k).collect()[C.ITEM].to_list()

    def save_model(self, model: dict, directory: Path) -> None:
        (directory / "model.json").write_text(json.dumps(model))


def fixed_gate(value: float):  # noqa: ANN201
    def evaluate(dataset: Dataset, settings: Settings) -> dict[str, Any]:
        return {"precision@5": value, "recall@5": 0.1}

    return evaluate


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        data={"source": "synthetic", "synthetic_users": 300},
        prefilter={"min_department_items": 1, "min_user_share": 0.0},
        run={"runs_dir": tmp_path / "runs", "lock_file": tmp_path / "nightly.lock"},
        redis={"url": "redis://unused:1/0", "retry_backoff_seconds": 0},
        gate={"min_precision_at_5": 0.1, "max_relative_drop": 0.1},
    )


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def run(settings: Settings, client: fakeredis.FakeRedis, **kwargs: Any) -> pipeline.RunResult:
    kwargs.setdefault("evaluator", fixed_gate(0.3))
    kwargs.setdefault("trainer", FakeTrainer())
    return pipeline.run_nightly(settings, client=client, **kwargs)


class TestRunNightly:
    def test_publishes_every_user_and_records_manifest(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        result = run(settings, client)
        assert result.status == "published"
        assert client.get("recsys:current").decode() == result.version
        users = pl.DataFrame(
            {"user_id": [int(k.split(b":")[-1]) for k in client.scan_iter("recsys:v:*:u:*")]}
        )
        assert users.height == result.users == 300
        manifest = json.loads((result.run_dir / "manifest.json").read_text())
        assert manifest["status"] == "published"
        assert manifest["version"] == result.version
        names = [s["name"] for s in manifest["stages"]]
        assert names == [
            "load",
            "gate",
            "prefilter",
            "train",
            "recommend",
            "popular",
            "save",
            "publish",
        ]
        assert all(s["rows"] > 0 for s in manifest["stages"])
        peaks = [s["peak_mb"] for s in manifest["stages"]]
        assert peaks[0] > 0
        assert peaks == sorted(peaks)  # a high-water mark per stage
        assert manifest["metrics"]["precision@5"] == 0.3
        assert manifest["parameters"]["settings"]["redis"]["url"] == "redis://unused:1/0"
        assert (result.run_dir / "models" / "model.json").exists()
        saved = pl.read_parquet(result.run_dir / "recommendations.parquet")
        assert saved[C.USER].n_unique() == 300
        meta = client.hgetall(f"recsys:v:{result.version}:meta")
        assert json.loads(meta[b"metrics"])["precision@5"] == 0.3
        assert meta[b"run_id"].decode() == result.run_id

    def test_dry_run_publishes_nothing(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        result = run(settings, client, dry_run=True)
        assert result.status == "dry-run"
        assert result.version is None
        assert client.dbsize() == 0

    def test_gate_floor_refuses_and_flips_nothing(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        first = run(settings, client)
        with pytest.raises(QualityGateError, match="below the floor") as info:
            run(settings, client, evaluator=fixed_gate(0.05))
        assert info.value.exit_code == 3
        assert client.get("recsys:current").decode() == first.version
        manifests = sorted(settings.run.runs_dir.glob("*/manifest.json"))
        statuses = {json.loads(m.read_text())["status"] for m in manifests}
        assert statuses == {"published", "gate-refused"}

    def test_gate_relative_drop_against_live(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        run(settings, client, evaluator=fixed_gate(0.40))
        with pytest.raises(QualityGateError, match="below the live version"):
            run(settings, client, evaluator=fixed_gate(0.35))  # -12.5% > 10%
        run(settings, client, evaluator=fixed_gate(0.37))  # -7.5% passes

    def test_no_gate_skips_backtest(self, settings: Settings, client: fakeredis.FakeRedis) -> None:
        def never(dataset: Dataset, settings: Settings) -> dict[str, Any]:
            raise AssertionError("gate must not run")

        result = run(settings, client, gate=False, evaluator=never)
        assert result.status == "published"

    def test_run_date_hides_later_data(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        trainer = FakeTrainer()
        cut = settings.data.origin_date + timedelta(days=7 * 30 - 1)
        result = run(settings, client, trainer=trainer, run_date=cut)
        manifest = json.loads((result.run_dir / "manifest.json").read_text())
        assert manifest["data"]["last_day"] <= 7 * 30
        assert trainer.seen_max_week is not None and trainer.seen_max_week <= 31
        assert trainer.windows.target_end == manifest["data"]["last_week"] + 1

    def test_empty_after_cut_stops_before_redis(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        with pytest.raises(EmptyStageError, match="zero transactions"):
            run(settings, client, run_date=date(2000, 1, 1))
        assert client.dbsize() == 0

    def test_empty_recommendations_stop_before_redis(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        class Empty(FakeTrainer):
            def recommend(self, *args: Any) -> pl.DataFrame:
                return super().recommend(*args).head(0)

        with pytest.raises(EmptyStageError, match="recommend"):
            run(settings, client, trainer=Empty())
        assert client.dbsize() == 0

    def test_placeholder_in_recommendations_refused(
        self, settings: Settings, client: fakeredis.FakeRedis
    ) -> None:
        class Bad(FakeTrainer):
            def recommend(self, *args: Any) -> pl.DataFrame:
                recs = super().recommend(*args)
                return recs.with_columns(
                    pl.when(pl.col(C.RANK) == 1)
                    .then(pl.lit(999999, pl.Int64))
                    .otherwise(pl.col(C.ITEM))
                    .alias(C.ITEM)
                )

        with pytest.raises(Exception, match="placeholder"):
            run(settings, client, trainer=Bad())
        assert client.dbsize() == 0

    def test_locked_run_refused(self, settings: Settings, client: fakeredis.FakeRedis) -> None:
        with run_lock(settings.run.lock_file), pytest.raises(LockError):
            run(settings, client)
        assert client.dbsize() == 0


class TestHelpers:
    def test_cut_day(self) -> None:
        assert pipeline.cut_day(date(2017, 1, 1), date(2017, 1, 1)) == 1
        assert pipeline.cut_day(date(2017, 1, 8), date(2017, 1, 1)) == 8


class TestDockerCompose:
    """No Docker engine here: check the file's structure (issue #5)."""

    def test_services_share_config_and_redis_is_healthy_and_persistent(self) -> None:
        yaml = pytest.importorskip("yaml")
        root = Path(__file__).resolve().parents[2]
        compose = yaml.safe_load((root / "docker-compose.yml").read_text())
        services = compose["services"]
        assert set(services) == {"redis", "api", "batch"}
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
