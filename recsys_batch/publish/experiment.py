"""A/B experiments: serve a second published version to a stable share of the users (#18).

``recsys ab start VERSION --share 0.1`` writes ``P:ab`` (``version``, ``share``,
``started_at``); the API then answers users whose slot (``keys.variant_slot``) is below
``share x keys.AB_SLOTS`` from ``VERSION`` (variant ``treatment``) and everyone else from the
live version (variant ``control``). The experiment's version is never removed by the
version cleanup (:func:`recsys_batch.publish.versions.cleanup_versions`) while it runs, and
its keys get the full safety TTL again when it starts. ``recsys ab stop`` removes ``P:ab``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError, PublishError
from recsys_batch.publish import keys, versions
from recsys_batch.publish.status import experiment, live_version, version_info
from recsys_batch.publish.store import Client, with_retries

log = logging.getLogger(__name__)


def start_experiment(
    client: Client, version: str, share: float, cfg: RedisConfig
) -> dict[str, str]:
    """Serve ``version`` to ``share`` of the users; return the experiment as stored.

    Raises
    ------
    ConfigError
        ``share`` is not in (0, 1], or ``version`` is not a version id.
    PublishError
        ``version`` is the live one, or not a complete version of a format the API reads.
    """
    if not 0 < share <= 1:
        msg = f"--share must be in (0, 1], got {share}"
        raise ConfigError(msg)
    try:
        keys.check_version(version)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if version == live_version(client, cfg):
        msg = f"{version} is the live version already; start an experiment with another one"
        raise PublishError(msg)
    info = version_info(client, version, cfg)
    fmt = info.meta.get("format", "")
    if (
        info.state != keys.STATE_COMPLETE
        or not fmt.isdigit()
        or int(fmt) not in keys.SUPPORTED_FORMATS
    ):
        msg = (
            f"cannot start an experiment with {version}: not a complete version of format "
            f"{keys.FORMAT} (state {info.state!r}, format {fmt!r}; see `recsys status`)"
        )
        raise PublishError(msg)
    versions.refresh_ttl(client, version, cfg, "experiment TTL refresh")
    found: dict[str, str] = {
        "version": version,
        "share": repr(float(share)),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    name = keys.experiment_key(cfg.key_prefix)
    fields: versions.HashFields = {name: value for name, value in found.items()}
    with_retries(lambda: client.hset(name, mapping=fields), cfg, "experiment start")
    log.info("A/B experiment: %s serves %.1f%% of the users", version, 100 * share)
    return found


def stop_experiment(client: Client, cfg: RedisConfig) -> str | None:
    """End the running experiment; return the version it served (None: none was running)."""
    found = experiment(client, cfg)
    name = keys.experiment_key(cfg.key_prefix)
    with_retries(lambda: client.unlink(name), cfg, "experiment stop")
    return found["version"] if found else None
