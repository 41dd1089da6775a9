"""A trained two-stage model on disk: the ranker(s) as LightGBM text, stage 1, the windows."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

from recsys_batch.model import candidates as stage1
from recsys_batch.model.model_data import TrainedTwoStage
from recsys_batch.model.ranking import load_ranker, save_ranker
from recsys_batch.model.split import Windows

STAGE1_FILE = "stage1.pkl"
NEW_ITEMS_DIR = "new_items"
"""Sub-folder of a saved model holding the new-items ranker (absent: none)."""
MODEL_META_FILE = "two_stage.json"


def save_model(model: TrainedTwoStage, folder: Path) -> None:
    """Write the ranker (LightGBM text), stage 1 and the windows under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_ranker(model.ranker, folder)
    if model.new_items_ranker is not None:
        save_ranker(model.new_items_ranker, folder / NEW_ITEMS_DIR)
    saver = getattr(stage1, "save_stage1", None)
    if saver is not None:
        saver(model.stage1_for_scoring, folder / "stage1")
    else:
        (folder / STAGE1_FILE).write_bytes(pickle.dumps(model.stage1_for_scoring))
    meta = {
        "feature_names": list(model.feature_names),
        "windows": dataclasses.asdict(model.windows),
        "timings": model.timings,
        "train_rows": model.train_rows,
        "forward_plan_features": model.forward_plan_features,
        "ranker_windows": (
            None if model.ranker_windows is None else dataclasses.asdict(model.ranker_windows)
        ),
    }
    (folder / MODEL_META_FILE).write_text(json.dumps(meta, indent=2))


def load_model(folder: Path) -> TrainedTwoStage:
    """Read a model written by :func:`save_model`."""
    folder = Path(folder)
    meta = json.loads((folder / MODEL_META_FILE).read_text())
    loader = getattr(stage1, "load_stage1", None)
    if loader is not None and (folder / "stage1").exists():
        model1 = loader(folder / "stage1")
    else:
        model1 = pickle.loads((folder / STAGE1_FILE).read_bytes())  # noqa: S301 - our own file
    return TrainedTwoStage(
        stage1_for_scoring=model1,
        ranker=load_ranker(folder),
        feature_names=tuple(meta["feature_names"]),
        windows=Windows(**meta["windows"]),
        timings=meta.get("timings", {}),
        train_rows=int(meta.get("train_rows", 0)),
        ranker_windows=Windows(**meta["ranker_windows"]) if meta.get("ranker_windows") else None,
        forward_plan_features=bool(meta.get("forward_plan_features", False)),
        new_items_ranker=(
            load_ranker(folder / NEW_ITEMS_DIR) if (folder / NEW_ITEMS_DIR).is_dir() else None
        ),
    )
