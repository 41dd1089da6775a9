"""The offline cost of a rule set (``recsys evaluate --scenario-file``, #27 item 4).

At each origin the two-stage model's lists go through the rule engine the API applies
(:func:`recsys_batch.rules.apply_rules`, the very same function), once with the rule set
and once without any rule, and both answers are scored with the backtest's metric functions
(:mod:`recsys_batch.evaluation.metrics`): what is measured here is what is served.

The engine's inputs per evaluated user are those the API reads from a published version
(:class:`ServedInputs`):

- ``own``: the stored top ``publish.top_n`` (20), best first;
- ``bought``: the own items whose stored reason is a repeat purchase. The nightly's
  repeat reason is ``ui_days > 0`` (any purchase before the scoring cut), so these are
  exactly the own items the user bought before the test window
  (:func:`~recsys_batch.evaluation.protocol.bought_before`). Like the API, the engine learns
  nothing about the new-items or popular items the customer bought: ``min_new`` may take a
  popular item the customer did buy, and the metrics then count that slot as a repeat one;
- ``new``: the model's new-items list when the backtest has one (the optional list
  :data:`NEW_ITEMS`, #26), else none;
- ``popular``: the nightly's popular fallback
  (:func:`~recsys_batch.model.two_stage.popular_fallback` over the purchases before the
  test window, ``publish.top_n`` items);
- ``attributes``: the item attribute columns a version publishes (``columns.ITEM_ATTRIBUTES``
  present in the item table: department, brand, category, sub_category, package_size);
- no unavailable items and no promotions: shop state is request-time state with no history,
  so a ``promoted_first`` rule measures nothing here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from recsys_batch.config import EvaluationConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.evaluation.bootstrap import paired_differences, paired_rate_difference
from recsys_batch.evaluation.metrics import (
    NEW_HITS,
    NEW_SLOTS,
    discovery,
    evaluate,
    metric_key,
    per_user_metrics,
    slot_outcomes,
)
from recsys_batch.evaluation.protocol import HeldOut
from recsys_batch.model.model_data import ModelData
from recsys_batch.model.two_stage import popular_fallback
from recsys_batch.rules import NO_RULES, Lists, RuleSet, apply_rules

NEW_ITEMS = "two_stage_new"
"""Name of the backtest list that is the model's new-items list (absent until it has one)."""
PLAIN, SCENARIO = "plain", "scenario"
"""The two answers compared: the engine without any rule, and with the scenario's rules."""
SOURCE = "source"
"""Column of a served answer: ``own``, ``new`` or ``popular`` (the engine's source)."""
SHORT_BY = "short_by"


@dataclass(frozen=True)
class ServedInputs:
    """What a published version holds for the evaluated users, as the API reads it."""

    own: pl.DataFrame
    """``user_id, item_id, rank``: the stored top N of each user (rank 1 = best)."""
    bought: pl.DataFrame
    """``user_id, item_id``: what each user bought before the test window (the repeat
    reasons tell the engine those of them that are in the user's own list)."""
    popular: list[int]
    """The popular fallback list, best first."""
    attributes: dict[int, dict[str, object]]
    """item -> its published attributes."""
    new: pl.DataFrame | None = None
    """``user_id, item_id, rank``: the new-items list, when the model provides one."""


@dataclass(frozen=True)
class Answers:
    """The engine's answers for every evaluated user."""

    recommendations: pl.DataFrame
    """``user_id, item_id, rank, source``: each answer, best first."""
    short: pl.DataFrame
    """``user_id, short_by``: one row per evaluated user."""


def item_attributes(items: pl.LazyFrame | None, served: Collection[int]) -> dict[int, Any]:
    """The attributes a version publishes for the ``served`` items (``P:v:V:items``).

    The same columns as the nightly's item hash (``columns.ITEM_ATTRIBUTES`` that the item
    table has); a missing value stays None, as the JSON ``null`` the API decodes.
    """
    if items is None:
        return {}
    names = items.collect_schema().names()
    available = [c for c in C.ITEM_ATTRIBUTES if c in names]
    wanted = pl.Series(sorted(served), dtype=pl.Int64).implode()
    frame = (
        items.select(pl.col(C.ITEM).cast(pl.Int64), *available)
        .filter(pl.col(C.ITEM).is_in(wanted))
        .unique(C.ITEM, keep="first")
        .collect()
    )
    return {row.pop(C.ITEM): row for row in frame.iter_rows(named=True)}


def served_inputs(
    own: pl.DataFrame,
    new: pl.DataFrame | None,
    data: ModelData,
    held: HeldOut,
    settings: Settings,
) -> ServedInputs:
    """What a version published from this model would hold for the evaluated users: the top
    ``publish.top_n`` of ``own``, the new-items list ``new`` (None: the model has none),
    the popular fallback and the item attributes of every listed item."""
    stored = own.filter(pl.col(C.RANK) <= settings.publish.top_n)
    popular = popular_fallback(data.transactions, data.catalogue, settings.publish.top_n)
    listed = set(stored[C.ITEM].to_list()) | set(popular)
    if new is not None:
        listed |= set(new[C.ITEM].to_list())
    return ServedInputs(
        own=stored,
        bought=held.bought,
        popular=popular,
        attributes=item_attributes(data.items, listed),
        new=new,
    )


def _by_user(frame: pl.DataFrame | None) -> dict[int, list[int]]:
    """user -> items by rank (best first)."""
    if frame is None or frame.height == 0:
        return {}
    grouped = frame.sort(C.USER, C.RANK).group_by(C.USER, maintain_order=True).agg(C.ITEM)
    return dict(zip(grouped[C.USER].to_list(), grouped[C.ITEM].to_list(), strict=True))


def _own_bought(own: Mapping[int, list[int]], bought: pl.DataFrame) -> dict[int, frozenset[int]]:
    """user -> the items of their own list they bought before (their repeat reasons)."""
    listed = pl.DataFrame(
        {C.USER: list(own), C.ITEM: list(own.values())},
        schema={C.USER: pl.Int64, C.ITEM: pl.List(pl.Int64)},
    ).explode(C.ITEM)
    repeat = listed.join(bought.select(C.USER, C.ITEM).unique(), on=[C.USER, C.ITEM], how="semi")
    grouped = repeat.group_by(C.USER).agg(C.ITEM)
    return {u: frozenset(i) for u, i in zip(grouped[C.USER], grouped[C.ITEM], strict=True)}


def served_answers(inputs: ServedInputs, users: pl.DataFrame, rules: RuleSet, k: int) -> Answers:
    """:func:`~recsys_batch.rules.apply_rules` for every user of ``users`` (``user_id``).

    A user without an own list gets the engine's answer from the popular list, as the
    API's unknown customer.
    """
    own, new = _by_user(inputs.own), _by_user(inputs.new)
    bought = _own_bought(own, inputs.bought)
    rows: dict[str, list[Any]] = {C.USER: [], C.ITEM: [], C.RANK: [], SOURCE: []}
    short: dict[str, list[int]] = {C.USER: [], SHORT_BY: []}
    for user in users[C.USER].unique().sort().to_list():
        lists = Lists(own.get(user, ()), new.get(user, ()), bought.get(user, frozenset()))
        served = apply_rules(lists, inputs.popular, inputs.attributes, rules, k)
        rows[C.USER] += [user] * len(served.items)
        rows[C.ITEM] += served.items
        rows[C.RANK] += range(1, len(served.items) + 1)
        rows[SOURCE] += served.sources
        short[C.USER].append(user)
        short[SHORT_BY].append(served.short_by)
    schema = {C.USER: pl.Int64, C.ITEM: pl.Int64, C.RANK: pl.Int32, SOURCE: pl.String}
    return Answers(
        pl.DataFrame(rows, schema=schema),
        pl.DataFrame(short, schema={C.USER: pl.Int64, SHORT_BY: pl.Int64}),
    )


def _outcomes(answers: Answers, held: HeldOut, users: pl.DataFrame, k: int) -> pl.DataFrame:
    return slot_outcomes(
        answers.recommendations.lazy(),
        held.truth.lazy(),
        held.bought.lazy(),
        held.spend.lazy(),
        users.lazy(),
        k,
    ).collect()


def answer_row(
    name: str, answers: Answers, held: HeldOut, users: pl.DataFrame, k: int
) -> dict[str, Any]:
    """P@k, revenue@k, new_share, repeat_hit, new_hit of ``answers`` over ``users``, and the
    share of users whose answer is short (``short_share``) with its mean ``short_by``."""
    recs = answers.recommendations.lazy()
    metrics = evaluate(recs, held.truth.lazy(), users.lazy(), k=k)
    found = discovery(_outcomes(answers, held, users, k).lazy(), k)
    short = answers.short.join(users.select(C.USER).unique(), on=C.USER, how="semi")
    n = short.height
    return {
        "list": name,
        "users": metrics["users"],
        metric_key("precision", k): metrics[metric_key("precision", k)],
        **found,
        "short_share": float((short[SHORT_BY] > 0).sum()) / n if n else 0.0,
        "mean_short_by": float(short[SHORT_BY].sum()) / n if n else 0.0,
    }


def changed_share(plain: Answers, ruled: Answers, users: pl.DataFrame) -> float:
    """Share of ``users`` whose answer under the rules differs from the plain one (items
    or their order)."""
    keys = users.select(C.USER).unique()
    plain_lists, ruled_lists = _by_user(plain.recommendations), _by_user(ruled.recommendations)
    ids = keys[C.USER].to_list()
    changed = sum(plain_lists.get(u, []) != ruled_lists.get(u, []) for u in ids)
    return changed / len(ids) if ids else 0.0


def scenario_comparison(
    inputs: ServedInputs,
    rules: RuleSet,
    held: HeldOut,
    users: pl.DataFrame,
    cfg: EvaluationConfig,
) -> dict[str, Any]:
    """The plain and the scenario answers of ``users`` side by side, with the paired
    bootstrap interval of their P@k and new_hit differences (scenario minus plain).

    Returns
    -------
    dict
        ``rules`` (:meth:`RuleSet.to_dict`), ``k``, ``rows`` (:func:`answer_row` of
        ``plain`` and ``scenario``), ``changed_share``,
        ``precision_diff`` (``{"mean", "lo", "hi", "users"}``) and ``new_hit_diff``
        (``{"model", "anchor", "mean", "lo", "hi", "users"}``; None rates when a list has
        no new slot).
    """
    k = cfg.k
    answers = {
        PLAIN: served_answers(inputs, users, NO_RULES, k),
        SCENARIO: served_answers(inputs, users, rules, k),
    }
    metric = metric_key("precision", k)
    per_user = {
        name: per_user_metrics(a.recommendations.lazy(), held.truth.lazy(), users.lazy(), k)
        .select(C.USER, metric)
        .collect()
        for name, a in answers.items()
    }
    draws, seed = cfg.bootstrap_draws, cfg.bootstrap_seed
    precision = paired_differences(per_user, metric, SCENARIO, draws, seed)[PLAIN]
    outcomes = {name: _outcomes(a, held, users, k) for name, a in answers.items()}
    new_hit = paired_rate_difference(outcomes, SCENARIO, PLAIN, (NEW_HITS, NEW_SLOTS), draws, seed)
    return {
        "rules": rules.to_dict(),
        "k": k,
        "rows": [answer_row(name, a, held, users, k) for name, a in answers.items()],
        "changed_share": changed_share(answers[PLAIN], answers[SCENARIO], users),
        "precision_diff": precision,
        "new_hit_diff": new_hit,
    }
