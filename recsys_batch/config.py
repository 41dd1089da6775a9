"""One typed configuration object for the whole system.

Precedence (highest first): explicit overrides passed by the CLI, ``RECSYS_*`` environment
variables (``__`` separates nesting, e.g. ``RECSYS_PREFILTER__TOP_N=3000``), a TOML file
(``--config``), then the defaults below. ``REDIS_URL`` is honoured as an alias of
``RECSYS_REDIS__URL``. Sub-models are frozen and forbid unknown keys, so a typo fails at
startup instead of being silently ignored. The model stages' sections live in
:mod:`recsys_batch.config_sections`; every section is importable from here.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recsys_batch.config_sections import (
    AlsConfig,
    CandidatesConfig,
    FeaturesConfig,
    NewItemsConfig,
    RankerConfig,
    Section,
)
from recsys_batch.errors import ConfigError
from recsys_batch.publish.keys import check_prefix

__all__ = [
    "AlsConfig",
    "ApiConfig",
    "CandidatesConfig",
    "DataConfig",
    "EvaluationConfig",
    "FeaturesConfig",
    "GateConfig",
    "NewItemsConfig",
    "PrefilterConfig",
    "PublishConfig",
    "RankerConfig",
    "RedisConfig",
    "RunConfig",
    "ScaleConfig",
    "Settings",
    "SplitConfig",
    "TifuKnnConfig",
    "load_settings",
]


class DataConfig(Section):
    """Where transactions, items and users come from."""

    source: Literal["completejourney", "dunnhumby", "files", "synthetic"] = "completejourney"
    """Which reader to use; ``completejourney`` is the bundled real data."""
    path: Path | None = None
    """Directory (dunnhumby, synthetic written by ``recsys data synth``) or None."""
    transactions_file: Path | None = None
    """``files`` source: parquet or CSV of transactions."""
    items_file: Path | None = None
    """``files`` source: optional parquet or CSV of product attributes."""
    users_file: Path | None = None
    """``files`` source: optional parquet or CSV of household demographics."""
    promotions_file: Path | None = None
    """``files`` source: optional promotion calendar (item, store, week, display, mailer)."""
    campaigns_file: Path | None = None
    """``files`` source: optional campaign recipients (campaign_id, user_id)."""
    campaign_periods_file: Path | None = None
    """``files`` source: optional campaign periods (campaign_id, start_day, end_day; days)."""
    coupons_file: Path | None = None
    """``files`` source: optional coupon items (campaign_id, item_id, coupon_id)."""
    coupon_redemptions_file: Path | None = None
    """``files`` source: optional coupon redemptions (user_id, day, campaign_id, coupon_id)."""
    column_mapping: dict[str, str] = Field(default_factory=dict)
    """``files`` source: canonical column name -> column name in your file."""
    synthetic_users: int = 2500
    """``synthetic`` source generated in memory: number of users."""
    synthetic_seed: int = 42
    """``synthetic`` source generated in memory: random seed."""
    origin_date: date = date(2017, 1, 1)
    """Calendar date of day 1 (the ``day`` column counts days from it, 1-based)."""


class PrefilterConfig(Section):
    """Business rules deciding which items may be recommended."""

    recent_days: int = 365
    """Drop items not sold in this many days before the newest transaction (12 months)."""
    max_user_share: float = 0.20
    """Drop items bought by more than this share of users (too obvious to recommend)."""
    min_user_share: float = 0.02
    """Drop items bought by fewer than this share of users (too rare to learn)."""
    min_department_items: int = 150
    """Drop items of departments with fewer products than this in the item table."""
    min_price: float = 1.0
    """Drop items whose typical unit price (currency) is below this."""
    max_price: float = 30.0
    """Drop items whose typical unit price (currency) is above this."""
    price_statistic: Literal["median", "any"] = "median"
    """``median`` of sales_value/max(quantity,1); ``any`` drops on any out-of-range sale."""
    top_n: int = 2500
    """Keep this many items, by quantity sold."""
    placeholder_item: int = 999999
    """Every purchase of a non-catalogue item becomes this item id."""


class SplitConfig(Section):
    """Time windows, in weeks, counted back from the newest week W."""

    test_weeks: int = 3
    """Backtest: test = week >= W - test_weeks (the holdout)."""
    stage2_weeks: int = 6
    """Stage-2 (ranker target) window length in weeks, just before the test window."""
    min_history_weeks: int = 4
    """Refuse data with fewer history weeks than this before the stage-2 window."""


class GateConfig(Section):
    """Quality gate: refuse to publish a model worse than this."""

    enabled: bool = True
    metric: str = "precision@5"
    """The backtest metric the gate reads (a column of the backtest's rows)."""
    user_set: Literal["all", "seed"] = "all"
    """Which users' row of the two-stage model the gate reads."""
    min_precision_at_5: float = 0.15
    """Absolute floor on ``metric`` (a share, 0-1)."""
    max_relative_drop: float = 0.10
    """Refuse if ``metric`` is more than this share below the live version's recorded value."""
    publish_gated_ranker: bool = True
    """Score with the ranker the gate just measured (trained on the 6 weeks before the gate's
    test window; stage 1 is still refit on everything) instead of fitting a second one on the
    newest weeks: what ships is what was measured, and the batch skips a ranker fit. The
    new-items ranker is not gated (the gate measures the main list): it is always trained on
    the newest weeks (``two_stage.with_gated_ranker``)."""


class RedisConfig(Section):
    """Where recommendations are published."""

    url: str | None = None
    """redis://, rediss:// or redis+cluster://; None = embedded Redis under ``data_dir``."""
    embedded_dir: Path = Path(".recsys/redis")
    """Embedded Redis: directory of its socket and persisted data."""
    key_prefix: str = "recsys"
    """First part of every Redis key: 1-32 letters, digits, '_', '.', '-' (checked at load)."""
    ttl_days: int = 14
    """Safety TTL on every published key, in days."""
    chunk_size: int = 10_000
    """Users per pipeline round trip when writing; keys per SCAN/UNLINK/EXPIRE batch when a
    version is cleaned up or rolled back (#15: batch sizes live in Settings)."""
    user_buckets: int = Field(default=0, ge=0)
    """Bucket hashes of a version's users; 0 = sized from the users (the nightly run counts
    them before scoring), ``keys.USERS_PER_BUCKET`` users each."""
    retries: int = 3
    retry_backoff_seconds: float = 0.5
    socket_timeout_seconds: float = 5.0
    connect_timeout_seconds: float = 5.0
    """Timeout of one TCP/TLS connect, in seconds."""
    cluster: bool = False
    """Treat ``url`` as a Redis Cluster seed node (same as a ``redis+cluster://`` URL)."""
    tls_ca_file: Path | None = None
    """rediss://: CA bundle that signed the server certificate (None = system CAs)."""
    tls_cert_file: Path | None = None
    """rediss:// with client certificates: this client's certificate (PEM)."""
    tls_key_file: Path | None = None
    """rediss:// with client certificates: this client's private key (PEM)."""

    @field_validator("key_prefix")
    @classmethod
    def _check_key_prefix(cls, value: str) -> str:
        """The rule of :mod:`recsys_batch.publish.keys`: a bad prefix fails with the config."""
        return check_prefix(value)


class PublishConfig(Section):
    """What a version stores per user."""

    top_n: int = Field(default=20, ge=1, le=32)
    """Ranked items stored per user (the API serves ``k`` up to this), in items."""
    new_items: int = Field(default=10, ge=0, le=32)
    """Items of the new-items list per user (never bought before), in items; 0 = none."""
    reasons: bool = True
    """Store a reason per item (``?explain=true``) in the version's ``r`` bucket hashes."""


class ApiConfig(Section):
    """The lookup service."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch: int = 1000
    """Largest POST /v1/recommendations batch."""
    default_k: int = Field(default=5, ge=1)
    """Items per answer when a request names no ``k``."""
    max_k: int = Field(default=100, ge=1)
    """Largest ``k`` a request may ask for (a version stores ``publish.top_n`` per user)."""
    current_cache_seconds: float = 1.0
    """How long the live-version pointer is cached."""
    redis_timeout_seconds: float = 1.0
    """Socket and connect timeout of the API's Redis client: a lookup fails fast (503)."""
    shop_cache_seconds: float = Field(default=1.0, ge=0)
    """How long the shop state (scenarios, unavailable items, promotions) read with a lookup
    is used: a change applies to every request sent this long after it (0: read each time)."""
    coalesce_lookups: bool = True
    """Lookups arriving together share one Redis round trip (one server only, not cluster)."""
    max_body_bytes: int = 262_144
    """Largest request body; a bigger one is refused with 413 before it is parsed."""
    gc_young_threshold: int = Field(default=20_000, ge=0)
    """Allocations between two collections of the cyclic GC's youngest generation in the
    served process (Python's default: 700; 0 turns automatic collection off). A lookup
    allocates ~50 objects that reference counting frees; at 700 the collector ran every
    ~14 lookups and took ~7% of the service's CPU (#27)."""


class RunConfig(Section):
    """Batch bookkeeping."""

    runs_dir: Path = Path("runs")
    """One folder per run: manifest, models, stage outputs."""
    lock_file: Path = Path(".recsys/nightly.lock")
    seed: int = 42


class ScaleConfig(Section):
    """Sharded scoring and publishing (issue #8): local loop or a Dask cluster."""

    shard_users: int = 2_500
    """Users per shard; one shard's candidates, features and scores are held in memory
    (~0.44 MiB per user of a shard: with 2,500 a Dask worker peaked at 1.7 GB at 1M)."""
    executor: Literal["local", "dask"] = "local"
    """Where the per-shard work runs: this process, or a dask.distributed cluster."""
    scheduler_address: str | None = None
    """Dask scheduler (``tcp://host:8786``); None = a LocalCluster on this machine."""
    dask_workers: int = 2
    """LocalCluster only: number of worker processes."""
    dask_threads_per_worker: int = 1
    """LocalCluster only: threads per worker process (shards a worker runs at once)."""
    shared_dir: str | None = None
    """Dask only: folder every worker can read (a shared mount, or an object-store URL such
    as ``s3://bucket/recsys``), where the batch writes the shard inputs once, under
    ``<shared_dir>/<run_id>/shards``; None = the run directory (absolute: fine for a
    LocalCluster, or when ``run.runs_dir`` is itself on shared storage)."""
    shard_retries: int = 2
    """A shard whose Redis connection failed is retried this many times before the run fails
    (nothing flips); any other error is not retried."""
    train_users: int | None = 25_000
    """Stage-2 training and the gate's backtest use at most this many users (stable hash
    sample; None = all). Stage 1 for scoring is fit separately (``stage1_users``)."""
    stage1_users: int | None = Field(default=100_000, ge=1)
    """Stage 1 for scoring (ALS, co-purchase, popular and trend lists) is fit on a stable
    hash sample of at most this many users (None = all); every other user's ALS factors,
    own purchases and co-purchase seeds are folded in from their own purchases where their
    shard is scored (docs/scale.md). 100,000: the bundled data (2,469) and 10x (25,000)
    are fit whole, 100x folds in 60% of its users, and the driver's stage-1 fit stops
    growing with the customers (~2 GB, estimated from the 100x refit)."""
    in_memory_rows: int = Field(default=20_000_000, ge=1)
    """Above this many transactions ``recsys nightly-batch`` runs out of core: the catalogue's
    item statistics are computed in parts of whole items of about this many lines, the
    catalogue-applied transactions are written to one parquet folder per shard under the run
    directory, and each shard reads only its own."""
    beside_gate_rows: int = Field(default=5_000_000, ge=0)
    """Up to this many transactions, the served model's parts that do not read the gate's
    ranker (stage 1 refit on everyone, the new-items ranker) are fitted on a thread beside
    the gate's backtest (``run/beside_gate.py``: the bundled night ~2-3 s shorter on 2
    cores); above it, after the gate, so that the driver's peak is the larger of the two,
    not their sum (13.6M lines, 25,000 customers, where each step already fills both cores:
    10.5 GB beside and no faster, 229.8 s against 227.3 s after). 0 = always after. LightGBM
    runs one call at a time (``ranking.LIGHTGBM_LOCK``): a training and a prediction on the
    two threads at once crashed a CI run before the lock."""


class TifuKnnConfig(Section):
    """The TIFU-KNN baseline of the backtest (Hu et al., SIGIR 2020); chosen on validation
    origins only (docs/evaluation.md)."""

    groups: int = 3
    """Each user's baskets are split, oldest to newest, into at most this many groups."""
    within_decay: float = 0.9
    """Basket weight within a group: ``within_decay ** (baskets after it in the group)``."""
    group_decay: float = 0.6
    """Group weight: ``group_decay ** (groups after it)``."""
    neighbours: int = 300
    """Nearest users (Euclidean distance of the user vectors, the user excluded) averaged."""
    alpha: float = 0.7
    """Score = alpha * own vector + (1 - alpha) * mean of the neighbours' vectors."""
    chunk_users: int = 2000
    """Users per block of the user x user distance computation; bounds memory."""


class EvaluationConfig(Section):
    """The offline backtest (``recsys evaluate`` and the nightly quality gate)."""

    k: int = 5
    """Cut-off of Precision@k and the other ranking metrics, in items per user."""
    curve_k: int = 10
    """Longest list scored for the precision@k curves (k = 1..curve_k), in items per user."""
    seed_min_items: int = 5
    """A "seed" user bought at least this many distinct catalogue items in the test window."""
    origin_step_weeks: int = 4
    """``recsys evaluate --origins N``: weeks between the test windows of two origins."""
    bootstrap_draws: int = 1000
    """Paired bootstrap of the P@k difference to each baseline: resamples of the users."""
    bootstrap_seed: int = 42
    """Seed of the bootstrap resampling."""
    tifu_knn: TifuKnnConfig = TifuKnnConfig()


class Settings(BaseSettings):
    """Everything configurable; build once at the edge with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data: DataConfig = DataConfig()
    prefilter: PrefilterConfig = PrefilterConfig()
    split: SplitConfig = SplitConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    features: FeaturesConfig = FeaturesConfig()
    new_items: NewItemsConfig = NewItemsConfig()
    ranker: RankerConfig = RankerConfig()
    gate: GateConfig = GateConfig()
    redis: RedisConfig = RedisConfig()
    publish: PublishConfig = PublishConfig()
    api: ApiConfig = ApiConfig()
    run: RunConfig = RunConfig()
    scale: ScaleConfig = ScaleConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="before")
    @classmethod
    def _redis_url_alias(cls, values: Any) -> Any:
        """Honour the conventional ``REDIS_URL`` when RECSYS_REDIS__URL is not given."""
        url = os.environ.get("REDIS_URL")
        if url and isinstance(values, dict):
            redis = dict(values.get("redis") or {})
            if not redis.get("url"):
                redis["url"] = url
                values = {**values, "redis": redis}
        return values


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and overrides.

    Raises
    ------
    ConfigError
        The file is missing or unreadable, or a value is invalid (unknown key, wrong type).
    """
    if config_file is not None and not Path(config_file).is_file():
        msg = f"config file not found: {config_file} (fix: pass an existing TOML file to --config)"
        raise ConfigError(msg)

    class _WithFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    try:
        loaded = _WithFile(**overrides)
        return Settings.model_validate(loaded.model_dump())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        msg = f"invalid configuration: {problems}"
        raise ConfigError(msg) from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        msg = f"cannot read config file {config_file}: {exc}"
        raise ConfigError(msg) from exc
