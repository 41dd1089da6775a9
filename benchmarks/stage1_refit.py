"""The nightly's stage-1 refit alone: wall time, peak memory and digests of what it fits.

Run: ``python benchmarks/stage1_refit.py [--source synthetic --path DIR] [--work DIR]
[--candidates] [KEY=VALUE ...]`` where each ``KEY=VALUE`` sets a field of ``Settings``
(``candidates.als.interaction=recency``). The input is prepared as ``nightly-batch``
prepares it (``load`` and ``prefilter`` stages: the catalogue, then the catalogue-applied
transactions written once as shard folders) in a child process, so the peak printed is the
refit's own; the shards are kept under ``--work`` and reused by the next run, so two code
versions fit the same files.
The refit is ``fit_scoring_stage1`` (every purchase before the cut), as the ``train`` stage
calls it.

The digests (sha256 of the model's matrices, frames and ALS factors; with ``--candidates``
also of ``generate_candidates`` for every user) are pickle-free: two code versions that fit
the same model print the same lines (issue #17: compact ids change no output).

    PYTHONPATH=. python benchmarks/stage1_refit.py --candidates
    PYTHONPATH=. python benchmarks/stage1_refit.py --source synthetic \
        --path DIR/100x --work DIR/refit
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.config import Settings
from recsys_batch.model import split, two_stage
from recsys_batch.model.candidates import Stage1Model, generate_candidates
from recsys_batch.run import records, sharding, stages

SHARDS = "shards"
CATALOGUE = "catalogue.parquet"
META = "meta.json"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def settings_of(args: argparse.Namespace) -> Settings:
    """Default settings on the chosen source, with the ``KEY=VALUE`` overrides."""
    fields: dict[str, Any] = {}
    if args.source:
        fields["data"] = {"source": args.source, "path": args.path}
    for pair in args.overrides:
        key, _, raw = pair.partition("=")
        *parents, leaf = key.split(".")
        node = fields
        for p in parents:
            node = node.setdefault(p, {})
        try:
            node[leaf] = json.loads(raw)
        except json.JSONDecodeError:
            node[leaf] = raw
    return Settings.model_validate(fields)


def prepare(args: argparse.Namespace, work: Path) -> None:
    """The ``load`` and ``prefilter`` stages; their output written under ``work``."""
    settings = settings_of(args)
    record = records.RunRecord(run_id="refit", run_dir=work, started_at="")
    state = stages.RunState(settings=settings, record=record)
    stages.load(state)
    stages.run_prefilter(state)
    assert state.catalogue is not None and state.tx_cat is not None and state.windows
    n_shards = sharding.shard_count(state.data.users, settings.scale.shard_users)
    if state.data.in_memory:  # the nightly keeps them in memory; the digests need a file
        sharding.write_shards(state.tx_cat, n_shards, work / SHARDS)
    state.catalogue.write_parquet(work / CATALOGUE)
    meta = {"target_end": state.windows.target_end, "in_memory": state.data.in_memory}
    (work / META).write_text(json.dumps(meta))


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _sparse_sha(m: sp.csr_matrix) -> str:
    return _sha(np.asarray(m.shape), m.data, m.indices, m.indptr)


def _frame_sha(frame: pl.DataFrame) -> str:
    schema = np.frombuffer(str(frame.schema).encode(), dtype=np.uint8)
    return _sha(schema, frame.hash_rows(seed=0).to_numpy())


def model_digests(model: Stage1Model) -> dict[str, str]:
    """sha256 (16 hex digits) of every fitted part of ``model``."""
    als = model.als
    return {
        "users": _sha(model.users.ids),
        "items": _sha(model.items.ids),
        "candidate_items": _sha(model.candidate_items),
        "user_items": _sparse_sha(model.user_items),
        "seeds": _sparse_sha(model.seeds),
        "similarity": _sparse_sha(model.similarity),
        "own": _frame_sha(model.own.sort("user_id", "item_id")),
        "popular": _frame_sha(model.popular),
        "trend": _frame_sha(model.trend),
        "cut_day": str(model.cut_day),
        "als_user_factors": _sha(np.asarray(als.user_factors)),  # type: ignore[attr-defined]
        "als_item_factors": _sha(np.asarray(als.item_factors)),  # type: ignore[attr-defined]
    }


def main() -> None:
    """Prepare (once), refit, print seconds, peak RSS and digests as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", help="data.source (default: the bundled data)")
    parser.add_argument("--path", help="data.path of the source")
    parser.add_argument("--work", default="/tmp/stage1-refit", help="shards kept here")
    parser.add_argument("--candidates", action="store_true", help="digest every user's")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE settings")
    args = parser.parse_args()
    work = Path(args.work).absolute()
    if not (work / META).exists():
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=prepare, args=(args, work))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(child.exitcode)
        print(f"prepared {work} in {time.perf_counter() - started:.1f}s")
    settings = settings_of(args)
    meta = json.loads((work / META).read_text())
    tx = sharding.scan_shards(work / SHARDS)
    if meta["in_memory"]:
        tx = tx.collect().lazy()
    windows = split.Windows(0, 0, meta["target_end"], None)
    data = two_stage.ModelData(tx, pl.scan_parquet(work / CATALOGUE), None, None)
    rss_before = peak_rss_mib()

    started = time.perf_counter()
    model = two_stage.fit_scoring_stage1(data, windows, settings)
    fit_s = time.perf_counter() - started
    report: dict[str, object] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "users": len(model.users),
        "items": len(model.items),
        "nnz": model.user_items.nnz,
        "fit_seconds": round(fit_s, 1),
        "peak_rss_mib_before_fit": round(rss_before),
        "peak_rss_mib": round(peak_rss_mib()),
        "digests": model_digests(model),
    }
    if args.candidates:
        users = tx.select("user_id").unique()
        every = generate_candidates(model, users, settings.candidates).collect()
        report["candidates"] = {"rows": every.height, "digest": _frame_sha(every)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
