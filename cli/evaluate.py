"""``recsys evaluate``: the offline backtest of issue #4 (and stage-1 recall of issue #3).

``--stage all`` (default) trains the two-stage model on the backtest split, scores the test
window and prints models x metrics for the "all" and "seed" user sets, next to the
baselines (popular, own purchases, ALS alone, TIFU-KNN, the co-purchase anchor of new items),
at ``--origins`` rolling origins 4 weeks apart (the newest is the final test, the older ones
validation; #16), with the paired bootstrap interval of the two-stage P@5 minus each
baseline's; a second table per origin gives revenue@5 and the share and hit rates of new
and repeat slots (#26), with the interval of new_hit against the anchor. ``--stage
candidates`` only measures the recall of the stage-1 candidate set on the newest test window.

``--scenario-file F.toml`` (#27) also serves the two-stage lists of every origin through the
API's rule engine, without and with the file's rules, and prints both side by side with the
paired interval of the P@5 and new_hit differences.
"""

from __future__ import annotations

import json
import logging
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import common
from cli.progress import step

METRICS = ("precision@5", "recall@5", "map@5", "ndcg@5", "coverage")
HEADERS = {
    "precision@5": "P@5",
    "recall@5": "R@5",
    "map@5": "MAP@5",
    "ndcg@5": "NDCG@5",
    "coverage": "cover",
}
DISCOVERY = ("precision@5", "revenue@5", "new_share", "repeat_hit", "new_hit")
DISCOVERY_HEADERS = {
    "precision@5": "P@5",
    "revenue@5": "rev@5 $",
    "new_share": "new share",
    "repeat_hit": "repeat hit",
    "new_hit": "new hit",
}


class Stage(StrEnum):
    """What ``recsys evaluate`` measures."""

    all = "all"
    candidates = "candidates"


JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the result as JSON to this file.")
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="Write plots, index.md and index.html to this folder."),
]
StageOpt = Annotated[
    Stage,
    typer.Option(
        "--stage",
        help="all: two-stage model vs baselines; candidates: stage-1 candidate recall only.",
    ),
]
SeedsOpt = Annotated[
    int,
    typer.Option(
        "--seeds",
        min=1,
        help="Repeat the backtest with this many seed pairs (ALS and ranker seed + 0..N-1) "
        "and print the spread of P@5; the main table is the configured seeds' run.",
    ),
]
OriginsOpt = Annotated[
    int,
    typer.Option(
        "--origins",
        min=1,
        help="Backtest at this many origins 4 weeks apart (evaluation.origin_step_weeks), "
        "each from the data before its test window only; the newest is the final test.",
    ),
]

ScenarioOpt = Annotated[
    Path | None,
    typer.Option(
        "--scenario-file",
        help="TOML file of business rules (as for `recsys scenario set`): also score the "
        "two-stage lists served through the rule engine, beside the plain ones.",
    ),
]
SCENARIO = (
    ("precision@5", "P@5"),
    ("revenue@5", "rev@5 $"),
    ("new_share", "new share"),
    ("new_hit", "new hit"),
    ("short_share", "short answers"),
)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def metrics_table(
    rows: list[dict[str, Any]],
    title: str = "Backtest on the test window (best P@5 per user set in bold)",
) -> Table:
    """Models x metrics, one line per (model, user set); the best precision@5 in bold."""
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    table.add_column("users", no_wrap=True)
    table.add_column("n", justify="right")
    for name in METRICS:
        table.add_column(HEADERS[name], justify="right", no_wrap=True)
    best: dict[str, float] = {}
    for row in rows:
        best[row["user_set"]] = max(best.get(row["user_set"], 0.0), float(row["precision@5"]))
    for row in rows:
        cells = []
        for name in METRICS:
            text = f"{float(row[name]):.4f}"
            if name == "precision@5" and float(row[name]) == best[row["user_set"]]:
                text = f"[bold]{text}[/]"
            cells.append(text)
        table.add_row(row["model"], row["user_set"], f"{float(row['users']):.0f}", *cells)
    return table


def _rate(value: Any, fmt: str = ".4f") -> str:
    """``value`` formatted, or ``-`` for a rate without slots (None)."""
    return "-" if value is None else format(float(value), fmt)


def discovery_table(rows: list[dict[str, Any]], title: str) -> Table:
    """P@5 beside revenue@5 ($ per user), new share, repeat hit and new hit (#26)."""
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    table.add_column("users", no_wrap=True)
    for name in DISCOVERY:
        table.add_column(DISCOVERY_HEADERS[name], justify="right", no_wrap=True)
    for row in rows:
        cells = [
            _rate(row.get(name), ".2f" if name == "revenue@5" else ".4f") for name in DISCOVERY
        ]
        table.add_row(row["model"], row["user_set"], *cells)
    return table


def new_hit_table(diffs: list[dict[str, Any]], title: str) -> Table:
    """new_hit of a model minus its anchor's, with the paired bootstrap 95% interval."""
    table = Table(title=title)
    for name in ("model", "anchor", "users", "difference", "95% lo", "95% hi"):
        table.add_column(name, justify="left" if name in ("model", "anchor") else "right")
    for d in diffs:
        table.add_row(
            d["model"],
            d["anchor"],
            str(d["users"]),
            *(_rate(d[key], "+.4f") for key in ("mean", "lo", "hi")),
        )
    return table


def diff_table(diff: dict[str, dict[str, Any]], title: str) -> Table:
    """Two-stage P@5 minus each baseline's, with the paired bootstrap 95% interval."""
    table = Table(title=title)
    for name in ("baseline", "users", "two-stage - baseline", "95% lo", "95% hi"):
        table.add_column(name, justify="left" if name == "baseline" else "right")
    for name, d in diff.items():
        table.add_row(
            name,
            str(d.get("users", "")),
            f"{float(d['mean']):+.4f}",
            f"{float(d['lo']):+.4f}",
            f"{float(d['hi']):+.4f}",
        )
    return table


def print_origins(payload: dict[str, Any]) -> None:
    """One metrics and one difference table per origin (oldest first), then the mean."""
    for origin in reversed(payload["origins"]):
        a, b = origin["test_weeks"]
        label = f"test weeks {a}-{b} ({origin['role']})"
        common.console.print(metrics_table(origin["rows"], f"Backtest, {label}"))
        common.console.print(
            diff_table(origin["diff"], f'P@5 two-stage minus baseline, "all" users, {label}')
        )
        common.console.print(discovery_table(origin["rows"], f"Revenue and new items, {label}"))
        if origin.get("new_hit_diff"):
            title = f'new_hit minus the anchor\'s, "all" users, {label}'
            common.console.print(new_hit_table(origin["new_hit_diff"], title))
    n = len(payload["origins"])
    if n > 1:
        mean = payload["mean_over_origins"]
        common.console.print(metrics_table(mean, f"Mean over the {n} origins"))
        common.console.print(discovery_table(mean, f"Revenue and new items, mean over {n}"))


def scenario_table(origin: dict[str, Any], title: str) -> Table:
    """Metrics x (plain, scenario) side by side, scenario minus plain, and the paired
    bootstrap 95% interval of the P@5 and new hit differences."""
    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    for name in ("plain", "scenario", "scenario - plain", "95% lo", "95% hi"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = {row["list"]: row for row in origin["rows"]}
    plain, ruled = rows["plain"], rows["scenario"]
    intervals = {"precision@5": origin["precision_diff"], "new_hit": origin["new_hit_diff"]}
    for name, header in SCENARIO:
        fmt = ".2f" if name == "revenue@5" else ".4f"
        a, b = plain.get(name), ruled.get(name)
        gap = None if a is None or b is None else float(b) - float(a)
        d = intervals.get(name) or {}
        table.add_row(
            header,
            _rate(a, fmt),
            _rate(b, fmt),
            _rate(gap, "+" + fmt),
            _rate(d.get("lo"), "+.4f") if d else "",
            _rate(d.get("hi"), "+.4f") if d else "",
        )
    table.add_row("users", str(plain["users"]), str(ruled["users"]), "", "", "")
    return table


def print_scenario(block: dict[str, Any], file: Path) -> None:
    """One :func:`scenario_table` per origin (oldest first)."""
    common.console.print(
        f"[bold]Scenario[/] {file.name}: {json.dumps(block['rules'])}, k = {block['k']}; "
        "no availability or promotions (shop state is request-time, not historical)",
        highlight=False,
    )
    for origin in reversed(block["origins"]):
        a, b = origin["test_weeks"]
        changed = float(origin["changed_share"])
        title = (
            f'Scenario vs plain two-stage, "all" users, test weeks {a}-{b} ({origin["role"]}); '
            f"{changed:.2%} of answers changed"
        )
        common.console.print(scenario_table(origin, title))


def spread_table(spread: list[dict[str, Any]]) -> Table:
    """Precision@5 over the seed runs: mean, min, max and standard deviation."""
    table = Table(title="Precision@5 over seed runs (--seeds)")
    for name in ("model", "users", "runs", "mean", "min", "max", "std"):
        table.add_column(name, justify="left" if name in ("model", "users") else "right")
    for row in spread:
        table.add_row(
            row["model"],
            row["user_set"],
            str(row["runs"]),
            *(f"{float(row[name]):.4f}" for name in ("mean", "min", "max", "std")),
        )
    return table


def candidates_table(result: dict[str, Any]) -> Table:
    """Candidate recall per generator and for the union."""
    table = Table(title="Stage-1 candidate recall (test window)")
    table.add_column("generator")
    table.add_column("recall", justify="right")
    table.add_column("mean candidates", justify="right")
    table.add_column("P@5 upper bound", justify="right")
    rows = [*result.get("generators", {}).items(), ("union", result.get("union", {}))]
    for name, stats in rows:
        bound = stats.get("precision_at_5_upper_bound")
        table.add_row(
            name,
            f"{float(stats.get('recall', 0.0)):.4f}",
            f"{float(stats.get('mean_candidates', 0.0)):.1f}",
            "" if bound is None else f"{float(bound):.4f}",
        )
    return table


def evaluate(
    source: common.SourceOpt = None,
    path: common.PathOpt = None,
    config: common.ConfigOpt = None,
    json_path: JsonOpt = None,
    report: ReportOpt = None,
    stage: StageOpt = Stage.all,
    seeds: SeedsOpt = 1,
    origins: OriginsOpt = 3,
    scenario_file: ScenarioOpt = None,
    debug: common.DebugOpt = False,
) -> None:
    """Backtest on the newest weeks: two-stage model vs popular, own purchases and ALS."""
    common.setup_logging(level=logging.INFO if debug else logging.WARNING)
    if scenario_file is not None and stage is Stage.candidates:
        msg = "--scenario-file serves the two-stage lists: use it with --stage all"
        raise typer.BadParameter(msg, param_hint="--scenario-file")

    def work() -> None:
        from recsys_batch.data.sources import load_dataset  # noqa: PLC0415
        from recsys_batch.data.validation import validated  # noqa: PLC0415
        from recsys_batch.evaluation import backtest  # noqa: PLC0415 - keep `recsys --help` fast
        from recsys_batch.evaluation.origins import run_origins  # noqa: PLC0415
        from recsys_batch.evaluation.report import write_report  # noqa: PLC0415

        rules = None
        if scenario_file is not None:  # checked in full before any data is read
            from recsys_batch.publish.shop_state import read_scenario_file  # noqa: PLC0415

            rules = read_scenario_file(scenario_file)
        settings = common.build_settings(config, source, path)
        start = time.perf_counter()
        with step("evaluate", "load", 1, 2):
            dataset = validated(load_dataset(settings.data), settings)
        if stage is Stage.candidates:
            with step("evaluate", "candidates", 2, 2):
                result = backtest.run_candidate_backtest(dataset, settings)
            common.console.print(candidates_table(result))
            payload = result
            report_payload: dict[str, Any] = {"candidates": result}
        else:
            with step("evaluate", f"backtest ({seeds} seed run(s))", 2, 2):
                result_origins = run_origins(dataset, settings, origins, seeds=seeds, rules=rules)
            bt = result_origins.newest
            common.console.print("[bold]Protocol[/] (at each origin; the newest is the final test)")
            for line in bt.protocol.splitlines():
                common.console.print(f"  - {line}", highlight=False)
            payload = result_origins.to_json()
            print_origins(payload)
            if bt.candidates:
                union = bt.candidates.get("union", {})
                common.console.print(
                    f"candidate recall (union): {float(union.get('recall', 0.0)):.4f}, "
                    f"{float(union.get('mean_candidates', 0.0)):.1f} per user",
                    highlight=False,
                )
            if scenario_file is not None and "scenario" in payload:
                payload["scenario"] = {"file": scenario_file.name, **payload["scenario"]}
                print_scenario(payload["scenario"], scenario_file)
            if bt.seed_runs:
                common.console.print(spread_table(payload["seed_spread"]))
            report_payload = payload
        elapsed = time.perf_counter() - start
        common.console.print(f"evaluated {dataset.name} in {elapsed:.1f}s", highlight=False)
        if json_path is not None:
            _write_json(json_path, payload)
            common.console.print(f"wrote {json_path}", highlight=False)
        if report is not None:
            written = write_report(report_payload, report)
            common.console.print(f"wrote report {report / 'index.html'} ({len(written)} files)")

    common.run_guarded(work, debug=debug)


def register(app: typer.Typer) -> None:
    """Add ``recsys evaluate`` to the root app."""
    app.command("evaluate")(evaluate)
