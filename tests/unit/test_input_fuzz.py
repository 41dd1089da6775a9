"""Fuzzing the batch's input (issue #7): bad transactions, items and users never crash it.

Hypothesis starts from a small valid dataset and applies random damage: wrong types, nulls,
negative and huge quantities, duplicate rows, unicode text, a single user, item or week, no
rows, missing columns. Each case is written to parquet or CSV and goes through what the
nightly batch does first: load (``files`` source), validate, prefilter, apply the catalogue,
production windows. It must either run or stop with :class:`~recsys_batch.errors.DataError`
(exit code 2); any other exception fails the test.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.data.validation import validated
from recsys_batch.errors import DataError
from recsys_batch.model import split
from recsys_batch.model.prefilter import apply_catalogue, prefilter

Table = dict[str, list[Any]]
I64_MAX = 2**63 - 1

WEEKS = 16
USERS = (10, 20, 30, 40)
ITEMS = (101, 102, 103, 104, 105, 106)


def base_transactions() -> Table:
    """Four users buying from six items every week for 16 weeks (a valid dataset)."""
    rows: Table = {name: [] for name in C.TRANSACTIONS.names()}
    basket = 0
    for week in range(1, WEEKS + 1):
        for n, user in enumerate(USERS):
            basket += 1
            for item in ITEMS[n : n + 3]:
                values = {
                    C.USER: user,
                    C.BASKET: basket,
                    C.DAY: (week - 1) * 7 + 1 + n,
                    C.ITEM: item,
                    C.QTY: 1 + item % 3,
                    C.SALES: 5.0 + item % 4,
                    C.STORE: 1,
                    C.RETAIL_DISC: 0.0,
                    C.TRANS_TIME: 1200 + n,
                    C.WEEK: week,
                    C.COUPON_DISC: 0.0,
                    C.COUPON_MATCH_DISC: 0.0,
                }
                for name, value in values.items():
                    rows[name].append(value)
    return rows


def base_items() -> Table:
    return {
        C.ITEM: list(ITEMS),
        C.MANUFACTURER: [1, 1, 2, 2, 3, 3],
        C.DEPARTMENT: ["GROCERY", "GROCERY", "PRODUCE", "PRODUCE", "DELI", "DELI"],
        C.BRAND: ["National", "Private"] * 3,
        C.CATEGORY: ["A", "B", "C", "D", "E", "F"],
        C.SUB_CATEGORY: ["a", "b", "c", "d", "e", "f"],
        C.PACKAGE_SIZE: ["1 LB", "12 OZ", None, "1 CT", "2 LB", "16 OZ"],
    }


def base_users() -> Table:
    return {
        C.USER: list(USERS),
        C.AGE: ["25-34", "35-44", "45-54", "65+"],
        C.INCOME: ["50-74K", "35-49K", "100-124K", "Under 15K"],
        C.HOME_OWNERSHIP: ["Homeowner", "Renter", None, "Homeowner"],
        C.MARITAL_STATUS: ["Married", "Unmarried", "Married", None],
        C.HOUSEHOLD_SIZE: ["2", "1", "5+", "3"],
        C.HOUSEHOLD_COMP: ["2 Adults No Kids", "1 Adult No Kids", None, "Single Parent"],
        C.KIDS_COUNT: ["0", "0", "3+", "1"],
    }


# --- damage ---------------------------------------------------------------------------------

WEIRD_VALUES = st.one_of(
    st.sampled_from(["abc", "", " ", "1.5", "NaN", "inf", "1e400", "١٢", "½", "0x10", "-0"]),
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
)


@st.composite
def damage(draw: st.DrawFn, table: Table, kind: str) -> Table:
    """One random change to ``table`` (a dict of column lists, modified in a copy)."""
    out = {name: list(values) for name, values in table.items()}
    names = list(out)
    height = len(out[names[0]])
    ops = ["wrong_value", "null", "duplicate", "drop_column", "unicode", "truncate"]
    if kind == "transactions":
        ops += ["negative_qty", "huge_qty", "huge_sales", "one_user", "one_item", "one_week"]
        ops += ["huge_ids", "negative_ids", "shuffle_weeks"]
    op = draw(st.sampled_from(ops))
    row = draw(st.integers(0, max(height - 1, 0)))
    column = draw(st.sampled_from(names))
    needs = {
        "negative_qty": C.QTY,
        "huge_qty": C.QTY,
        "huge_sales": C.SALES,
        "one_user": C.USER,
        "one_item": C.ITEM,
        "one_week": C.WEEK,
        "shuffle_weeks": C.WEEK,
    }
    if height == 0 or needs.get(op, column) not in out:
        return out  # nothing left to damage (an earlier change removed it)
    if op == "wrong_value":
        out[column][row] = draw(WEIRD_VALUES)
    elif op == "null":
        for r in draw(st.lists(st.integers(0, height - 1), min_size=1, max_size=5)):
            out[column][r] = None
    elif op == "duplicate":
        times = draw(st.integers(1, 3))
        for name in names:
            out[name] = out[name] + out[name][row : row + 5] * times
    elif op == "drop_column":
        del out[column]
    elif op == "unicode":
        text = draw(st.text(min_size=1, max_size=20))
        for r in range(height):
            if isinstance(out[column][r], str) or out[column][r] is None:
                out[column][r] = text
        if kind != "transactions":
            out[column][row] = text
    elif op == "truncate":
        keep = draw(st.integers(0, height))
        out = {name: values[:keep] for name, values in out.items()}
    elif op == "negative_qty":
        out[C.QTY][row] = -draw(st.integers(1, 10**6))
    elif op == "huge_qty":
        value = draw(st.sampled_from([I64_MAX, 2**62, 10**15, I64_MAX + 1]))
        for r in draw(st.lists(st.integers(0, height - 1), min_size=1, max_size=3)):
            out[C.QTY][r] = value
    elif op == "huge_sales":
        out[C.SALES][row] = draw(st.sampled_from([1e308, float("inf"), float("nan"), -1e308]))
    elif op == "one_user":
        out[C.USER] = [out[C.USER][0]] * height
    elif op == "one_item":
        out[C.ITEM] = [out[C.ITEM][0]] * height
    elif op == "one_week":
        week = draw(st.integers(-5, 60))
        out[C.WEEK] = [week] * height
    elif op == "huge_ids":
        name = draw(st.sampled_from([C.USER, C.ITEM, C.BASKET]))
        if name in out:
            out[name][row] = draw(st.sampled_from([I64_MAX, I64_MAX + 1, 2**64]))
    elif op == "negative_ids":
        name = draw(st.sampled_from([C.USER, C.ITEM, C.DAY, C.WEEK]))
        if name in out:
            out[name][row] = -draw(st.integers(1, 10**9))
    elif op == "shuffle_weeks":
        out[C.WEEK] = [
            draw(st.integers(-3, 200)) if r % 7 == 0 else w for r, w in enumerate(out[C.WEEK])
        ]
    return out


def to_series(name: str, values: list[Any]) -> pl.Series:
    """A column as a file would hold it: numbers when they all are, else text."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        if all(-(2**63) <= v <= I64_MAX for v in present):
            return pl.Series(name, values, dtype=pl.Int64)
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, float) or abs(v) < 2**53 for v in present):
            return pl.Series(name, [None if v is None else float(v) for v in values])
    return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)


def write(table: Table, path: Path, fmt: str) -> Path:
    frame = pl.DataFrame([to_series(name, values) for name, values in table.items()])
    target = path.with_suffix(f".{fmt}")
    if fmt == "csv":
        frame.write_csv(target)
    else:
        frame.write_parquet(target)
    return target


def fuzz_settings(tx: Path, items: Path | None, users: Path | None) -> Settings:
    return load_settings(
        None,
        data={
            "source": "files",
            "transactions_file": tx,
            "items_file": items,
            "users_file": users,
        },
        prefilter={"min_department_items": 1, "min_user_share": 0.0, "max_user_share": 1.0},
        split={"test_weeks": 2, "stage2_weeks": 3, "min_history_weeks": 2},
    )


def first_stages(cfg: Settings) -> tuple[int, int]:
    """What the nightly batch does before training; returns (catalogue items, tx rows)."""
    dataset = validated(load_dataset(cfg.data), cfg)
    result = prefilter(dataset.transactions, dataset.items, cfg.prefilter)
    catalogue = result.catalogue.collect()
    result.funnel.collect() if isinstance(result.funnel, pl.LazyFrame) else None
    tx = apply_catalogue(dataset.transactions, catalogue.lazy(), cfg.prefilter).collect()
    split.production_windows(*split.week_range(dataset.transactions), cfg.split)
    return catalogue.height, tx.height


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Validation warns about odd data on purpose; keep the fuzz log short."""
    logger = logging.getLogger("recsys_batch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_base_dataset_runs(tmp_path: Path) -> None:
    """The undamaged dataset goes through: the fuzz cases start from valid data."""
    tx = write(base_transactions(), tmp_path / "tx", "csv")
    items = write(base_items(), tmp_path / "items", "parquet")
    users = write(base_users(), tmp_path / "users", "parquet")
    catalogue, rows = first_stages(fuzz_settings(tx, items, users))
    assert catalogue == len(ITEMS)
    assert rows == WEEKS * len(USERS) * 3


def run_case(tx: Table, items: Table | None, users: Table | None, fmt: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cfg = fuzz_settings(
            write(tx, root / "tx", fmt),
            write(items, root / "items", fmt) if items is not None else None,
            write(users, root / "users", fmt) if users is not None else None,
        )
        try:
            first_stages(cfg)
        except DataError as exc:
            assert exc.exit_code == 2
            assert str(exc)
            return "data_error"
    return "ran"


@st.composite
def cases(draw: st.DrawFn) -> tuple[Table, Table | None, Table | None, str]:
    tx = base_transactions()
    for _ in range(draw(st.integers(1, 3))):
        tx = draw(damage(tx, "transactions"))
    items: Table | None = None
    if draw(st.booleans()):
        items = base_items()
        if draw(st.booleans()):
            items = draw(damage(items, "items"))
    users: Table | None = None
    if draw(st.booleans()):
        users = base_users()
        if draw(st.booleans()):
            users = draw(damage(users, "users"))
    return tx, items, users, draw(st.sampled_from(["csv", "parquet"]))


@functools.cache
def fuzz_outcomes() -> dict[str, int]:
    """Run the fuzz once per session and count its outcomes (``ran``, ``data_error``).

    Both tests below call this, so each passes or fails the same way alone, in any order,
    and the fuzz still runs only once when both are selected.
    """
    outcomes = {"ran": 0, "data_error": 0}

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases())
    def one_case(case: tuple[Table, Table | None, Table | None, str]) -> None:
        outcomes[run_case(*case)] += 1

    one_case()
    return outcomes


def test_damaged_input_runs_or_stops_with_data_error() -> None:
    assert sum(fuzz_outcomes().values()) > 0


def test_fuzz_saw_both_outcomes() -> None:
    """The fuzz above is not vacuous: some damage is tolerated, some is refused."""
    outcomes = fuzz_outcomes()
    assert outcomes["ran"] > 0
    assert outcomes["data_error"] > 0


EXPLICIT: list[tuple[str, Callable[[Table], Table], str]] = [
    ("one user", lambda t: {**t, C.USER: [10] * len(t[C.USER])}, "ran"),
    ("one item", lambda t: {**t, C.ITEM: [101] * len(t[C.ITEM])}, "ran"),
    ("one week", lambda t: {**t, C.WEEK: [5] * len(t[C.WEEK])}, "data_error"),
    ("no rows", lambda t: {k: [] for k in t}, "data_error"),
    ("null user", lambda t: {**t, C.USER: [None, *t[C.USER][1:]]}, "data_error"),
    ("text quantity", lambda t: {**t, C.QTY: ["two", *t[C.QTY][1:]]}, "data_error"),
    ("negative quantity", lambda t: {**t, C.QTY: [-3, *t[C.QTY][1:]]}, "ran"),
    ("huge quantity", lambda t: {**t, C.QTY: [I64_MAX] * len(t[C.QTY])}, "ran"),
    ("duplicate rows", lambda t: {k: v + v for k, v in t.items()}, "ran"),
]


@pytest.mark.parametrize(("name", "change", "expected"), EXPLICIT, ids=[e[0] for e in EXPLICIT])
def test_named_cases(name: str, change: Callable[[Table], Table], expected: str) -> None:
    assert run_case(change(base_transactions()), base_items(), base_users(), "csv") == expected


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_cli_exit_code_2_without_traceback(tmp_path: Path, fmt: str) -> None:
    """``recsys data validate`` on damaged files: one clear line, exit code 2."""
    tx = base_transactions()
    tx[C.ITEM][3] = "12ab"
    path = write(tx, tmp_path / "tx", fmt)
    result = CliRunner().invoke(
        app,
        ["data", "validate"],
        env={"RECSYS_DATA__SOURCE": "files", "RECSYS_DATA__TRANSACTIONS_FILE": str(path)},
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "item_id" in text and "12ab" in text
    assert "Traceback" not in result.output


def test_negative_user_id_is_a_data_error_before_training(tmp_path: Path) -> None:
    """Keys are built from ids >= 0 only (``publish.user_values``), so a negative user id must
    be refused at load time with exit 2, not after a full training run with exit 1."""
    from recsys_batch.run import pipeline, records  # noqa: PLC0415

    tx = base_transactions()
    tx[C.USER] = [-u if u == 10 else u for u in tx[C.USER]]
    cfg = fuzz_settings(write(tx, tmp_path / "tx", "parquet"), None, None)
    cfg = cfg.model_copy(
        update={
            "run": cfg.run.model_copy(
                update={"runs_dir": tmp_path / "runs", "lock_file": tmp_path / "lock"}
            ),
            # A dry run goes on without Redis: nothing listens on port 1.
            "redis": cfg.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"}),
        }
    )
    with pytest.raises(DataError, match="user_id") as info:
        pipeline.run_nightly(cfg, dry_run=True, gate=False)
    assert info.value.exit_code == 2
    (run_dir,) = cfg.run.runs_dir.iterdir()
    manifest = records.read_manifest(run_dir)
    assert (manifest["status"], manifest["stages"]) == ("failed", [])  # stopped in "load"


DEGENERATE: list[tuple[str, Callable[[Table], Table]]] = [
    ("one user", lambda t: {**t, C.USER: [10] * len(t[C.USER])}),
    ("one item", lambda t: {**t, C.ITEM: [101] * len(t[C.ITEM])}),
    ("duplicate rows", lambda t: {k: v + v for k, v in t.items()}),
]


@pytest.mark.parametrize(("name", "change"), DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_degenerate_data_through_the_real_models(
    name: str, change: Callable[[Table], Table], tmp_path: Path
) -> None:
    """Past the prefilter: the real two-stage model and the backtest gate (dry run, no
    Redis) either produce recommendations or stop with a RecsysError, never a crash."""
    from recsys_batch.errors import RecsysError  # noqa: PLC0415
    from recsys_batch.run import pipeline  # noqa: PLC0415

    tx = write(change(base_transactions()), tmp_path / "tx", "parquet")
    cfg = fuzz_settings(tx, write(base_items(), tmp_path / "items", "parquet"), None)
    run = cfg.run.model_copy(update={"runs_dir": tmp_path / "runs", "lock_file": tmp_path / "l"})
    cfg = cfg.model_copy(update={"run": run})
    try:
        result = pipeline.run_nightly(cfg, dry_run=True, gate=True)
    except RecsysError as exc:
        assert exc.exit_code in {2, 3}, exc
        return
    assert result.status == "dry-run"
    assert result.users >= 1
