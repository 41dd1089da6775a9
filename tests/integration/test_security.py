"""Security of the batch and the API against a locked-down Redis (issue #7).

One redis-server of this module listens on a plain port and on a TLS port (certificates from
a throwaway CA made with the ``openssl`` CLI), requires a password for the ``default`` user
and has two ACL users, both limited to keys starting with ``sec``:

- ``batch``: exactly the commands ``recsys nightly-batch`` needs (docs/security.md);
- ``api``: read-only, ``GET MGET HGET HMGET HGETALL PING`` and nothing else.

Checked here: the batch publishes and the API serves over ``rediss://`` with those users; the
API user cannot write; wrong credentials and untrusted certificates fail with exit code 4 or a
503 and never print the password; user ids cannot inject keys; request limits hold; no answer
carries a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data.sources import Dataset
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, store
from recsys_batch.run import pipeline
from tests.conftest import free_port, start_redis_server
from tests.unit.test_pipeline import FakeTrainer

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration
runner = CliRunner()

ADMIN_PASSWORD = "admin-S3cret-pw"
BATCH_PASSWORD = "batch-S3cret-pw"
API_PASSWORD = "api-S3cret-pw"
SECRETS = (ADMIN_PASSWORD, BATCH_PASSWORD, API_PASSWORD)

BATCH_COMMANDS = (
    "ping get set zadd zrange zrem hset hgetall expire exists unlink scan "
    "watch unwatch multi exec discard"
)
API_COMMANDS = "get mget hget hmget hgetall ping"


def acl_user(name: str, password: str, commands: str) -> list[str]:
    rules = ["resetkeys", "~sec*", "resetchannels", "-@all", *(f"+{c}" for c in commands.split())]
    return ["--user", name, "on", f">{password}", *rules]


@dataclass(frozen=True)
class SecureRedis:
    plain_port: int
    tls_port: int
    ca_file: Path
    client_cert: Path
    client_key: Path

    def url(self, user: str, password: str, *, tls: bool = True) -> str:
        scheme, port = ("rediss", self.tls_port) if tls else ("redis", self.plain_port)
        return f"{scheme}://{user}:{password}@127.0.0.1:{port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.plain_port, password=ADMIN_PASSWORD)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", "/CN=recsys-test-ca", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "san.cnf",
                cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    folder = tmp_path_factory.mktemp("tls")
    make_certificates(folder)
    proc = port = tls_port = None
    why = ""
    for _attempt in range(3):  # a freshly picked free port can be taken again before use
        tls_port = free_port()
        try:
            proc, port = start_redis_server(folder, *tls_server_args(folder, tls_port))
            break
        except RuntimeError as exc:
            why = str(exc)
            continue
    if proc is None or port is None or tls_port is None:
        pytest.skip(f"this redis-server does not start with --tls-port: {why}")
    try:
        yield SecureRedis(port, tls_port, folder / "ca.crt", folder / "client.crt",
                          folder / "client.key")  # fmt: skip
    finally:
        proc.kill()
        proc.wait(timeout=10)


def tls_server_args(folder: Path, tls_port: int) -> list[str]:
    """redis-server options: TLS on ``tls_port``, a password and the batch/api ACL users."""
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(folder / "server.crt"),
        "--tls-key-file", str(folder / "server.key"),
        "--tls-ca-cert-file", str(folder / "ca.crt"),
        "--tls-auth-clients", "optional",
        "--requirepass", ADMIN_PASSWORD,
        *acl_user("batch", BATCH_PASSWORD, BATCH_COMMANDS),
        *acl_user("api", API_PASSWORD, API_COMMANDS),
    ]  # fmt: skip


@pytest.fixture
def prefix(secure: SecureRedis) -> Iterator[str]:
    name = f"sec{uuid.uuid4().hex[:10]}"
    yield name
    admin = secure.admin()
    for key in admin.scan_iter(match=f"{name}:*", count=1000):
        admin.unlink(key)
    admin.close()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    def evaluate(dataset: Dataset, settings: Settings) -> dict[str, Any]:
        return {"precision@5": 0.3}

    monkeypatch.setattr(pipeline, "default_trainer", FakeTrainer)
    monkeypatch.setattr(pipeline, "backtest_metrics", evaluate)


def batch_env(tmp_path: Path, url: str, prefix: str, secure: SecureRedis) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_REDIS__TLS_CA_FILE": str(secure.ca_file),
        "RECSYS_REDIS__RETRIES": "0",
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        "RECSYS_DATA__SYNTHETIC_USERS": "200",
        "RECSYS_PREFILTER__MIN_DEPARTMENT_ITEMS": "1",
        "RECSYS_PREFILTER__MIN_USER_SHARE": "0",
    }


def invoke(args: list[str], env: dict[str, str]) -> Any:
    """Run the CLI in this process; its log lines (stderr) are part of ``result.output``."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return runner.invoke(app, args, env=env)
    finally:  # the CLI's handler writes to the runner's stream, closed after the call
        root.handlers[:] = handlers
        root.setLevel(level)


def nightly(env: dict[str, str], *args: str) -> Any:
    return invoke(["nightly-batch", "--source", "synthetic", *args], env)


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def everything_written(folder: Path) -> str:
    """All files under ``folder`` (run manifests, models), as text."""
    return "\n".join(
        p.read_text(errors="replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


def api_settings(url: str, prefix: str, secure: SecureRedis, **api: Any) -> Settings:
    return Settings(
        redis={"url": url, "key_prefix": prefix, "tls_ca_file": secure.ca_file},
        api={"current_cache_seconds": 0.05, "redis_timeout_seconds": 1.0, **api},
    )


# --- batch and API with ACL users over TLS --------------------------------------------------


@pytest.mark.usefixtures("fake_models")
@pytest.mark.parametrize("tls", [True, False], ids=["rediss", "redis"])
def test_batch_publishes_as_acl_user_and_never_logs_the_password(
    tls: bool,
    secure: SecureRedis,
    prefix: str,
    tmp_path: Path,
) -> None:
    """Every log line at DEBUG (JSON), the status output and every file of the run are free
    of the password; the Redis URL is shown masked."""
    env = batch_env(tmp_path, secure.url("batch", BATCH_PASSWORD, tls=tls), prefix, secure)
    result = nightly(env, "--log-format", "json", "--debug")
    assert result.exit_code == 0, result.output
    assert '"level": "DEBUG"' in result.output or '"level": "INFO"' in result.output
    again = nightly(env)
    assert again.exit_code == 0, again.output
    status = invoke(["status", "--json"], env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["live"]["users"] == 200
    assert ("rediss" if tls else "redis") + "://batch:***@" in status.stdout
    back = invoke(["rollback"], env)  # SCAN + EXPIRE + the flip: also within the ACL
    assert back.exit_code == 0, back.output
    texts = (result.output, again.output, status.output, back.output)
    assert_no_secret(*texts, everything_written(tmp_path))
    admin = secure.admin()
    assert admin.get(keys.current_key(prefix)) is not None
    admin.close()


def test_batch_with_client_certificate(secure: SecureRedis, prefix: str) -> None:
    """``tls_cert_file``/``tls_key_file`` reach the connection (mutual TLS)."""
    cfg = RedisConfig(
        url=secure.url("batch", BATCH_PASSWORD),
        key_prefix=prefix,
        tls_ca_file=secure.ca_file,
        tls_cert_file=secure.client_cert,
        tls_key_file=secure.client_key,
    )
    client = store.connect(cfg)
    assert client.ping()
    client.close()


def test_api_serves_with_read_only_user_over_tls(secure: SecureRedis, prefix: str) -> None:
    admin = secure.admin()
    seed(admin, prefix)
    with TestClient(
        create_app(api_settings(secure.url("api", API_PASSWORD), prefix, secure))
    ) as api:
        body = api.get("/v1/recommendations/1").json()
        assert (body["items"], body["source"]) == ([11, 12, 13], "personal")
        assert api.get("/v1/recommendations/1?details=true").status_code == 200
        batch = api.post("/v1/recommendations", json={"user_ids": [1, 2]})
        assert batch.status_code == 200
        assert api.get("/readyz").status_code == 200
    admin.close()


def test_api_user_cannot_write_or_leave_its_prefix(secure: SecureRedis, prefix: str) -> None:
    api = redis.Redis.from_url(secure.url("api", API_PASSWORD), ssl_ca_certs=str(secure.ca_file))
    assert api.ping()
    for command in (
        ("SET", f"{prefix}:current", "x"),
        ("DEL", f"{prefix}:current"),
        ("UNLINK", f"{prefix}:current"),
        ("EXPIRE", f"{prefix}:current", "1"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "maxmemory"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("EVAL", "return 1", "0"),
        ("GET", "other:key"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.execute_command(*command)
    api.close()


def test_batch_with_the_api_user_is_refused(secure: SecureRedis, prefix: str) -> None:
    """The read-only credentials cannot publish: PublishError (exit 4), password masked."""
    cfg = RedisConfig(
        url=secure.url("api", API_PASSWORD), key_prefix=prefix, tls_ca_file=secure.ca_file
    )
    from recsys_batch.publish import versions  # noqa: PLC0415
    from tests.integration.test_memory_bounded import recommendations  # noqa: PLC0415

    client = store.connect(cfg)
    with pytest.raises(PublishError) as info:
        versions.publish_version(client, recommendations(10), [1], None, {}, cfg)
    assert info.value.exit_code == 4
    assert "NOPERM" in str(info.value) or "permission" in str(info.value).lower()
    assert_no_secret(str(info.value))
    client.close()


# --- wrong credentials and certificates ---------------------------------------------------


@pytest.mark.usefixtures("fake_models")
@pytest.mark.parametrize(
    ("user", "password", "tls", "ca"),
    [
        ("batch", "wrong-S3cret-pw", True, "good"),
        ("nobody", BATCH_PASSWORD, False, "good"),
        ("", "wrong-S3cret-pw", False, "good"),
        ("batch", BATCH_PASSWORD, True, "untrusted"),
    ],
    ids=["wrong-password", "unknown-user", "wrong-requirepass", "untrusted-ca"],
)
def test_batch_refused_exit_4_no_secret(
    user: str,
    password: str,
    tls: bool,
    ca: str,
    secure: SecureRedis,
    prefix: str,
    tmp_path: Path,
) -> None:
    env = batch_env(tmp_path, secure.url(user, password, tls=tls), prefix, secure)
    if ca == "untrusted":
        other = tmp_path / "other-ca"
        other.mkdir()
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                "ca.crt", "-days", "1", "-subj", "/CN=someone-else", cwd=other)  # fmt: skip
        env["RECSYS_REDIS__TLS_CA_FILE"] = str(other / "ca.crt")
    result = nightly(env, "--debug")
    assert result.exit_code == 4, result.output
    text = flat(result.output)
    assert "cannot reach Redis" in text
    if ca == "untrusted":
        assert "certificate verify failed" in text
    assert_no_secret(result.output)


@pytest.mark.parametrize("ca", ["good", "untrusted"])
def test_api_wrong_password_or_ca_503_no_secret(
    ca: str, secure: SecureRedis, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = secure.url("api", "wrong-S3cret-pw" if ca == "good" else API_PASSWORD)
    settings = api_settings(url, prefix, secure)
    if ca == "untrusted":
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                "ca.crt", "-days", "1", "-subj", "/CN=someone-else", cwd=tmp_path)  # fmt: skip
        redis_cfg = settings.redis.model_copy(update={"tls_ca_file": tmp_path / "ca.crt"})
        settings = settings.model_copy(update={"redis": redis_cfg})
    with TestClient(create_app(settings)) as api:
        for resp in (api.get("/v1/recommendations/1"), api.get("/readyz")):
            assert resp.status_code == 503
            assert resp.json()["error"] == "redis_unavailable"
            assert_no_secret(resp.text)
            assert "wrong-S3cret-pw" not in resp.text
    assert "wrong-S3cret-pw" not in caplog.text
    assert_no_secret(caplog.text)


def test_mask_url_and_text() -> None:
    url = "rediss://batch:p%40ss:w0rd@redis.internal:6380/0"
    assert store.mask_url(url) == "rediss://batch:***@redis.internal:6380/0"
    assert store.mask_url("redis://:only-pw@h:1/0") == "redis://:***@h:1/0"
    assert store.mask_text("failed for p%40ss:w0rd", url) == "failed for ***"


# --- key injection, request limits, no tracebacks ------------------------------------------


def seed(client: redis.Redis, prefix: str) -> str:
    version = "20261128T031500Z-sec1"
    pipe = client.pipeline(transaction=False)
    meta = {"format": "1", "state": keys.STATE_COMPLETE, "created_at": "2026-11-28T03:15:00+00:00"}
    pipe.hset(keys.meta_key(version, prefix), mapping=meta)
    pipe.set(keys.popular_key(version, prefix), "91,92,93")
    pipe.set(keys.user_key(version, 1, prefix), "11,12,13")
    pipe.set(keys.user_key(version, 2, prefix), "21,22,23")
    pipe.set(keys.current_key(prefix), version)
    pipe.execute()
    return version


class Monitor:
    """Every command the server receives while active (``MONITOR``, admin user)."""

    STOP = "monitor-stop-sentinel"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.commands: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self.ready.set()
            while True:
                command = monitor.next_command()["command"]
                if self.STOP in command:
                    return
                self.commands.append(command)

    def __enter__(self) -> Monitor:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.echo(self.STOP)
        self.thread.join(timeout=5)


INJECTIONS = [
    "1:*",
    "*",
    "1%0D%0AFLUSHALL",
    "1%20FLUSHALL",
    "..%2F..%2Fcurrent",
    "-1",
    "%D9%A1%D9%A2",  # Arabic-Indic digits: str.isdigit() is True, not ASCII
    "1e3",
    "0x10",
    "9223372036854775808",
    "9" * 5000,
    "%00",
    "1;2",
]
# Accepted, but read as the integer 1: the key is built from the int, never from the text.
NORMALISED = ["%2B1", "1%20", "01", "%201", "1.0"]


def test_user_ids_cannot_inject_keys(secure: SecureRedis, prefix: str) -> None:
    """Malformed ids are 422 before Redis; every key the API touches is a well-formed key of
    its prefix (seen with MONITOR)."""
    admin = secure.admin()
    version = seed(admin, prefix)
    keys_before = admin.dbsize()
    settings = Settings(
        redis={"url": f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{secure.plain_port}/0",
               "key_prefix": prefix},
        api={"current_cache_seconds": 0.0},
    )  # fmt: skip
    allowed = re.compile(
        rf"^{prefix}:(current|v:{re.escape(version)}:(u:\d{{1,19}}|meta|popular|items))$"
    )
    with TestClient(create_app(settings)) as api, Monitor(secure.admin()) as monitor:
        for raw in INJECTIONS:
            resp = api.get(f"/v1/recommendations/{raw}")
            assert resp.status_code in {404, 422}, (raw, resp.status_code, resp.text)
            assert "Traceback" not in resp.text
        for raw in NORMALISED:
            resp = api.get(f"/v1/recommendations/{raw}")
            assert resp.status_code in {200, 422}, (raw, resp.text)
            if resp.status_code == 200:
                assert resp.json()["user_id"] == 1
        for ids in (["1"], ["1:*"], [1.5], [-1], [2**64], [True], [None], ["*"], "1", {"a": 1}):
            resp = api.post("/v1/recommendations", json={"user_ids": ids})
            assert resp.status_code == 422, (ids, resp.text)
        extra = api.post("/v1/recommendations", json={"user_ids": [1], "key": "x"})
        assert extra.status_code == 422
        assert api.get("/v1/recommendations/2").json()["items"] == [21, 22, 23]
    touched = [token for line in monitor.commands for token in line.split() if prefix in token]
    assert touched, "the monitor saw no command of this prefix"
    assert all(allowed.match(token.strip('"')) for token in touched), touched
    assert admin.dbsize() == keys_before
    admin.close()


@pytest.fixture
def plain_api(secure: SecureRedis, prefix: str) -> Iterator[TestClient]:
    seed(secure.admin(), prefix)
    settings = Settings(
        redis={"url": secure.url("api", API_PASSWORD, tls=False), "key_prefix": prefix},
        api={"max_batch": 100},
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        yield api


def test_batch_and_k_limits(plain_api: TestClient) -> None:
    assert plain_api.post("/v1/recommendations", json={"user_ids": list(range(100))}).is_success
    too_many = plain_api.post("/v1/recommendations", json={"user_ids": list(range(101))})
    assert too_many.status_code == 422
    assert "at most 100 user ids" in too_many.text
    assert plain_api.get("/v1/recommendations/1?k=100").status_code == 200
    assert plain_api.get("/v1/recommendations/1?k=101").status_code == 422
    assert plain_api.get("/v1/recommendations/1?k=0").status_code == 422
    not_json = plain_api.post(
        "/v1/recommendations", content=b"\xff{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code in {400, 422}
    assert "Traceback" not in not_json.text


def test_oversized_body_is_refused_before_parsing(plain_api: TestClient) -> None:
    """413 (JSON, no traceback) for a body over ``api.max_body_bytes``, announced by its
    Content-Length or streamed in chunks without one (regression, issue #7)."""
    body = b'{"user_ids": [' + b"1," * (2 * 1024 * 1024) + b"1]}"
    headers = {"content-type": "application/json"}
    sized = plain_api.post("/v1/recommendations", content=body, headers=headers)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    streamed = plain_api.post("/v1/recommendations", content=chunks(), headers=headers)
    for resp in (sized, streamed):
        assert resp.status_code == 413
        assert "max_body_bytes" in resp.json()["detail"]
        assert "Traceback" not in resp.text


class Exploding:
    """An async Redis double whose every command fails in an unexpected way."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            msg = f"boom with {API_PASSWORD} inside"
            raise RuntimeError(msg)

        return fail

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return self


@pytest.mark.parametrize(
    "path", ["/v1/recommendations/1", "/v1/recommendations/1?details=true", "/readyz"]
)
def test_unexpected_errors_carry_no_traceback_or_secret(path: str) -> None:
    settings = Settings(redis={"url": "redis://127.0.0.1:1/0", "key_prefix": "sec"})
    with TestClient(
        create_app(settings, redis_client=Exploding()), raise_server_exceptions=False
    ) as api:
        resp = api.get(path)
    assert resp.status_code == 500
    assert "Traceback" not in resp.text
    assert 'File "' not in resp.text
    assert API_PASSWORD not in resp.text


@pytest.mark.usefixtures("fake_models")
@pytest.mark.parametrize("password", ["pa#ss-S3cret", "pa/ss-S3cret", "pa?ss-S3cret"])
def test_password_with_unencoded_special_characters_is_masked(
    password: str, tmp_path: Path
) -> None:
    """People paste passwords unencoded. urlsplit then finds no password (the ``#``, ``/``
    or ``?`` ends the authority), so ``mask_url`` returns the URL unchanged and the CLI
    prints it in "invalid Redis URL ...". No part of the password may be shown."""
    url = f"redis://batch:{password}@127.0.0.1:6379/0"
    env = {
        "REDIS_URL": url,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "lock"),
    }
    result = invoke(["status"], env)
    assert result.exit_code in {2, 4}, result.output
    batch = nightly(env)
    assert batch.exit_code in {2, 4}, batch.output
    secret_part = password[3:]  # what follows the special character
    assert secret_part not in result.output
    assert secret_part not in batch.output
    assert secret_part not in everything_written(tmp_path)
    assert secret_part not in store.mask_url(url)
    assert secret_part not in store.mask_text(f"failed: {url}", url)


@pytest.mark.parametrize("bad", ["rec sys", "recsys:*", "a*", "x" * 40, ""])
def test_invalid_key_prefix_is_a_config_error(bad: str) -> None:
    """A prefix that ``keys`` would refuse (spaces, ``:``, ``*``, too long) must fail when the
    settings are built (ConfigError, exit 2), not as a ValueError at the first key (exit 1
    "unexpected error" from the batch, a traceback from the API's startup)."""
    from recsys_batch.config import load_settings  # noqa: PLC0415
    from recsys_batch.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="key_prefix"):
        load_settings(None, redis={"key_prefix": bad})
