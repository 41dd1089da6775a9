"""The ``recsys evaluate --report DIR`` report: PNG plots plus ``index.md`` and ``index.html``.

Plots: precision@k (k = 1..``evaluation.curve_k``) per model for each user set, candidate
recall by generator, the prefilter funnel, and the top feature importances of the ranker.
matplotlib runs on the non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

PRECISION_PNG = "precision_at_k.png"
RECALL_PNG = "candidate_recall.png"
FUNNEL_PNG = "prefilter_funnel.png"
IMPORTANCE_PNG = "feature_importance.png"
TOP_FEATURES = 20
ROW_KEYS = ("model", "user_set")


def _saved(fig: Any, path: Path) -> Path:
    """Lay out, write (100 dpi) and close ``fig``; the written ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label_bars(ax: Any, values: list[Any], fmt: str) -> None:
    """Write each bar's value (``format(value, fmt)``) on top of it."""
    for i, v in enumerate(values):
        ax.text(i, v, format(v, fmt), ha="center", va="bottom", fontsize=8)


def plot_precision_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """One panel per user set, one line per model: precision@k for k = 1..len(curve)."""
    user_sets = sorted({s for per_model in curves.values() for s in per_model})
    fig, axes = plt.subplots(1, max(len(user_sets), 1), figsize=(5 * max(len(user_sets), 1), 4))
    axes_list = list(axes) if len(user_sets) > 1 else [axes]
    for ax, user_set in zip(axes_list, user_sets, strict=False):
        for model, per_set in curves.items():
            values = per_set.get(user_set, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=model)
        ax.set_title(f'precision@k, "{user_set}" users')
        ax.set_xlabel("k")
        ax.set_ylabel("precision@k")
        ax.grid(alpha=0.3)
        ax.legend()
    return _saved(fig, path)


def plot_candidate_recall(candidates: dict[str, Any], path: Path) -> Path:
    """Bars of candidate recall per generator and for the union."""
    names, values = [], []
    for name, stats in (candidates.get("generators") or {}).items():
        names.append(name)
        values.append(float(stats.get("recall", 0.0)))
    if "union" in candidates:
        names.append("union")
        values.append(float(candidates["union"].get("recall", 0.0)))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, values, color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    ax.set_ylabel("recall of test-window purchases")
    ax.set_title("candidate recall by generator")
    _label_bars(ax, values, ".3f")
    return _saved(fig, path)


def plot_funnel(funnel: list[dict[str, Any]], path: Path) -> Path:
    """Items left after each prefilter rule (log scale)."""
    rules = [str(row["rule"]) for row in funnel]
    items = [int(row["items"]) for row in funnel]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(rules, items, color="#55a868")
    ax.set_yscale("log")
    ax.set_ylabel("items left")
    ax.set_title("prefilter funnel")
    _label_bars(ax, items, ",")
    return _saved(fig, path)


def plot_importances(
    importances: list[dict[str, Any]], path: Path, top: int = TOP_FEATURES
) -> Path:
    """Horizontal bars of the ``top`` features by total gain."""
    rows = importances[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(rows) + 1)))
    ax.barh([str(r["feature"]) for r in rows], [float(r["importance"]) for r in rows])
    ax.set_xlabel("total gain")
    ax.set_title(f"top {len(rows)} ranker features")
    return _saved(fig, path)


def _fmt(value: Any) -> str:
    if value is None:  # a rate without slots (e.g. repeat_hit of a list of new items only)
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table_md(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """One line per row: model, user set, then ``columns``, as GitHub markdown."""
    head = "| model | user set | " + " | ".join(columns) + " |"
    sep = "|---|---|" + "---:|" * len(columns)
    body = [
        f"| {r['model']} | {r['user_set']} | " + " | ".join(_fmt(r.get(c)) for c in columns) + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def metrics_table_md(rows: list[dict[str, Any]]) -> str:
    """The models x metrics table as GitHub markdown (the metrics the rows carry, in order)."""
    return _table_md(rows, tuple(c for c in rows[0] if c not in ROW_KEYS) if rows else ())


def new_hit_table_md(diffs: list[dict[str, Any]]) -> str:
    """new_hit of each model minus its anchor's, with the 95% interval, as GitHub markdown."""
    head = "| model | anchor | users | difference | 95% lo | 95% hi |"
    body = [
        f"| {d['model']} | {d['anchor']} | {d['users']} | "
        + " | ".join(_fmt(d[key]) for key in ("mean", "lo", "hi"))
        + " |"
        for d in diffs
    ]
    return "\n".join([head, "|---|---|---:|---:|---:|---:|", *body])


def spread_table_md(spread: list[dict[str, Any]]) -> str:
    """One metric over the seed runs of ``recsys evaluate --seeds`` as GitHub markdown."""
    return _table_md(spread, ("runs", "mean", "min", "max", "std"))


def write_report(payload: dict[str, Any], folder: Path) -> list[Path]:
    """Write the plots, ``index.md``, ``index.html`` and ``backtest.json`` under ``folder``.

    ``payload`` is :meth:`BacktestResult.to_json` (or the candidates-only dict with a
    ``candidates`` key). Returns the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections: list[tuple[str, str, str | None]] = []  # (title, markdown text, image)
    if payload.get("protocol"):
        sections.append(
            ("Protocol", "\n".join(f"- {line}" for line in payload["protocol"].splitlines()), None)
        )
    if payload.get("rows"):
        sections.append(("Metrics", metrics_table_md(payload["rows"]), None))
    if payload.get("new_hit_diff"):
        title = 'New-slot hit rate minus the anchor\'s, "all" users (paired bootstrap)'
        sections.append((title, new_hit_table_md(payload["new_hit_diff"]), None))
    if payload.get("seed_spread"):
        spread = payload["seed_spread"]
        title = f"{str(spread[0]['metric']).capitalize()} over seed runs"
        sections.append((title, spread_table_md(spread), None))
    if payload.get("precision_curves"):
        written.append(plot_precision_curves(payload["precision_curves"], folder / PRECISION_PNG))
        sections.append(("Precision@k per model", "", PRECISION_PNG))
    if payload.get("candidates"):
        written.append(plot_candidate_recall(payload["candidates"], folder / RECALL_PNG))
        union = payload["candidates"].get("union", {})
        text = ", ".join(f"{k}: {_fmt(v)}" for k, v in union.items())
        sections.append(("Candidate recall by generator", f"union: {text}", RECALL_PNG))
    if payload.get("funnel"):
        written.append(plot_funnel(payload["funnel"], folder / FUNNEL_PNG))
        sections.append(("Prefilter funnel", "", FUNNEL_PNG))
    if payload.get("importances"):
        written.append(plot_importances(payload["importances"], folder / IMPORTANCE_PNG))
        sections.append(("Top feature importances", "", IMPORTANCE_PNG))
    if payload.get("timings"):
        text = "\n".join(f"- {k}: {v:.1f} s" for k, v in payload["timings"].items())
        sections.append(("Timings", text, None))

    md = ["# Backtest report", ""]
    for title, text, image in sections:
        md += [f"## {title}", ""]
        if text:
            md += [text, ""]
        if image:
            md += [f"![{title}]({image})", ""]
    (folder / "index.md").write_text("\n".join(md))
    written.append(folder / "index.md")

    parts = [
        "<!doctype html><meta charset='utf-8'><title>Backtest report</title>",
        "<h1>Backtest report</h1>",
    ]
    for title, text, image in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            parts.append(f"<pre>{html.escape(text)}</pre>")
        if image:
            parts.append(f"<img src='{html.escape(image)}' alt='{html.escape(title)}'>")
    (folder / "index.html").write_text("\n".join(parts))
    written.append(folder / "index.html")
    (folder / "backtest.json").write_text(json.dumps(payload, indent=2, default=str))
    written.append(folder / "backtest.json")
    return written
