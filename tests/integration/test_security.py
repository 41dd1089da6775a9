"""Security of the batch and the API against a locked-down Redis (issues #7, #15).

One redis-server of this module listens on a plain port and on a TLS port (certificates from
a throwaway CA made with the ``openssl`` CLI), requires a password for the ``default`` user
and has two ACL users, both limited to keys starting with ``sec``:

- ``batch``: exactly the commands ``recsys nightly-batch`` needs (docs/security.md);
- ``api``: read-only, ``GET MGET HGET HMGET HGETALL PING`` and nothing else.

Every version here is published by the shipped ``recsys nightly-batch`` with the real
two-stage model on small synthetic data (``tests.small.small_env``), as the ``batch`` user
over ``rediss://``. Checked: the batch publishes and the API serves with those users; the
API user cannot write; wrong credentials and untrusted certificates fail with exit code 4 or
a 503 and never print the password; user ids cannot inject keys; request limits hold; no
answer carries a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from api.main import create_app
from recsys_batch.config import Settings
from recsys_batch.publish import keys, store
from tests.integration.faults_helpers import (
    ADMIN_PASSWORD,
    API_COMMANDS,
    API_PASSWORD,
    BATCH_COMMANDS,
    BATCH_PASSWORD,
    ROOT,
    SECRETS,
    USERS,
    SecureRedis,
    a_user,
    assert_live_is_whole,
    batch_env,
    flat,
    invoke,
    live,
    make_ca,
    make_certificates,
    nightly,
    snapshot,
    tls_server,
)

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    folder = tmp_path_factory.mktemp("tls")
    make_certificates(folder)
    return folder


@pytest.fixture(scope="module")
def secure(certs: Path) -> Iterator[SecureRedis]:
    with tls_server(certs, certs) as server:
        yield server


def new_prefix() -> str:
    return f"sec{uuid.uuid4().hex[:10]}"


def remove_prefix(secure: SecureRedis, prefix: str) -> None:
    admin = secure.admin()
    for key in admin.scan_iter(match=f"{prefix}:*", count=1000):
        admin.unlink(key)
    admin.close()


@pytest.fixture
def prefix(secure: SecureRedis) -> Iterator[str]:
    name = new_prefix()
    yield name
    remove_prefix(secure, name)


def secure_env(tmp_path: Path, url: str, prefix: str, secure: SecureRedis) -> dict[str, str]:
    """The real batch's environment against the secure server (no retries: fail fast)."""
    return batch_env(
        tmp_path,
        url,
        prefix,
        RECSYS_REDIS__TLS_CA_FILE=str(secure.ca_file),
        RECSYS_REDIS__RETRIES="0",
        RECSYS_REDIS__SOCKET_TIMEOUT_SECONDS="5",
        RECSYS_REDIS__CONNECT_TIMEOUT_SECONDS="5",
    )


@dataclass(frozen=True)
class Published:
    """A version the real batch published as the ``batch`` user over TLS (module-wide)."""

    prefix: str
    version: str
    user: int
    items: list[int]
    keys: dict[bytes, Any]
    """Every key of the version and its value (must never change: the API only reads)."""


@pytest.fixture(scope="module")
def published(secure: SecureRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    name = new_prefix()
    folder = tmp_path_factory.mktemp("published")
    env = secure_env(folder, secure.url("batch", BATCH_PASSWORD), name, secure)
    result = nightly(env, "--no-gate")
    assert result.exit_code == 0, result.output
    admin = secure.admin()
    version = assert_live_is_whole(admin, name)
    user, items = a_user(admin, name, version)
    yield Published(name, version, user, items, snapshot(admin, name, version))
    admin.close()
    remove_prefix(secure, name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def everything_written(folder: Path) -> str:
    """All files under ``folder`` (run manifests, models, recommendations), as text."""
    return "\n".join(
        p.read_text(errors="replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


def api_settings(url: str, prefix: str, secure: SecureRedis, **api: Any) -> Settings:
    return Settings(
        redis={"url": url, "key_prefix": prefix, "tls_ca_file": secure.ca_file},
        api={"current_cache_seconds": 0.05, "redis_timeout_seconds": 1.0, **api},
    )


# --- batch and API with ACL users over TLS --------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["rediss", "redis"])
def test_batch_publishes_as_acl_user_and_never_logs_the_password(
    tls: bool, secure: SecureRedis, prefix: str, tmp_path: Path
) -> None:
    """Two nights (the second through the quality gate, which reads the live version's
    metrics), ``status`` and ``rollback``, all as the least-privilege ``batch`` user. Every
    log line at DEBUG (JSON), the status output and every file of the runs are free of the
    password; the Redis URL is shown masked."""
    env = secure_env(tmp_path, secure.url("batch", BATCH_PASSWORD, tls=tls), prefix, secure)
    result = nightly(env, "--no-gate", "--log-format", "json", "--debug")
    assert result.exit_code == 0, result.output
    assert '"level": "DEBUG"' in result.output or '"level": "INFO"' in result.output
    again = nightly(env)
    assert again.exit_code == 0, again.output
    assert "quality gate passed" in again.output
    status = invoke(["status", "--json"], env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["live"]["users"] == USERS
    assert ("rediss" if tls else "redis") + "://batch:***@" in status.stdout
    back = invoke(["rollback"], env)  # SCAN + EXPIRE + the flip: also within the ACL
    assert back.exit_code == 0, back.output
    texts = (result.output, again.output, status.output, back.output)
    assert_no_secret(*texts, everything_written(tmp_path))
    admin = secure.admin()
    assert_live_is_whole(admin, prefix)
    admin.close()


def test_batch_with_client_certificate(certs: Path, tmp_path: Path) -> None:
    """On a server that requires client certificates (mutual TLS), ``tls_cert_file`` and
    ``tls_key_file`` reach the batch's connection: it publishes with them, exit 4 without."""
    with tls_server(certs, tmp_path, auth_clients="yes") as mtls:
        env = secure_env(tmp_path, mtls.url("batch", BATCH_PASSWORD), "secmtls", mtls)
        without = nightly(env, "--no-gate")
        assert without.exit_code == 4, without.output
        assert "cannot reach Redis" in flat(without.output)
        env |= {
            "RECSYS_REDIS__TLS_CERT_FILE": str(mtls.client_cert),
            "RECSYS_REDIS__TLS_KEY_FILE": str(mtls.client_key),
        }
        result = nightly(env, "--no-gate")
        assert result.exit_code == 0, result.output
        admin = mtls.admin()
        assert_live_is_whole(admin, "secmtls")
        admin.close()
        assert_no_secret(without.output, result.output, everything_written(tmp_path))


def test_api_serves_with_read_only_user_over_tls(secure: SecureRedis, published: Published) -> None:
    """The API reads what the batch published, as the read-only ``api`` user over TLS."""
    url = secure.url("api", API_PASSWORD)
    with TestClient(create_app(api_settings(url, published.prefix, secure))) as api:
        body = api.get(f"/v1/recommendations/{published.user}").json()
        assert (body["version"], body["items"], body["source"]) == (
            published.version,
            published.items,
            "personal",
        )
        assert api.get(f"/v1/recommendations/{published.user}?details=true").status_code == 200
        batch = api.post("/v1/recommendations", json={"user_ids": [published.user, 10**12]})
        assert batch.status_code == 200
        assert api.get("/readyz").json()["version"] == published.version


def test_console_and_serving_features_with_read_only_user_over_tls(
    secure: SecureRedis, published: Published
) -> None:
    """The console's endpoints and page, exclusions and reasons work behind the same
    read-only ``api`` user (issues #18, #19); the run history was written by the batch user."""
    url = secure.url("api", API_PASSWORD)
    with TestClient(create_app(api_settings(url, published.prefix, secure))) as api:
        runs = api.get("/v1/runs")
        assert runs.status_code == 200, runs.text
        newest = runs.json()["runs"][0]
        assert (newest["status"], newest["version"]) == ("published", published.version)
        live = api.get("/v1/versions/live")
        assert live.status_code == 200, live.text
        assert live.json()["version"] == published.version
        assert api.get("/v1/popular").status_code == 200
        assert api.get("/ui/").status_code == 200
        first = published.items[0]
        answer = api.get(f"/v1/recommendations/{published.user}?exclude={first}&explain=true")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert first not in body["items"] and len(body["items"]) == len(published.items)
        assert len(body["reasons"]) == len(body["items"])


def test_api_user_cannot_write_or_leave_its_prefix(
    secure: SecureRedis, published: Published
) -> None:
    """NOPERM for every write to the published version, and outside the prefix; the version
    is unchanged byte for byte."""
    p, version = published.prefix, published.version
    api = redis.Redis.from_url(secure.url("api", API_PASSWORD), ssl_ca_certs=str(secure.ca_file))
    assert api.ping()
    admin = secure.admin()
    buckets = int(admin.hget(keys.meta_key(version, p), "buckets"))
    admin.close()
    user_key = keys.user_key(version, published.user, buckets, p)
    for command in (
        ("SET", keys.current_key(p), "x"),
        ("SET", user_key, "1,2,3"),
        ("HSET", user_key, str(published.user), "x"),
        ("DEL", keys.current_key(p)),
        ("UNLINK", keys.meta_key(version, p)),
        ("HSET", keys.meta_key(version, p), "state", "writing"),
        ("EXPIRE", user_key, "1"),
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
    admin = secure.admin()
    assert live(admin, p) == version
    assert snapshot(admin, p, version) == published.keys
    admin.close()


def test_batch_with_the_api_user_is_refused(
    secure: SecureRedis, prefix: str, tmp_path: Path
) -> None:
    """``recsys nightly-batch`` with the read-only credentials: exit 4 (NOPERM) when it
    opens the version, nothing written, password masked."""
    env = secure_env(tmp_path, secure.url("api", API_PASSWORD), prefix, secure)
    result = nightly(env, "--no-gate", "--debug")
    assert result.exit_code == 4, result.output
    assert "NOPERM" in result.output or "permission" in result.output.lower()
    assert_no_secret(result.output, everything_written(tmp_path))
    admin = secure.admin()
    assert list(admin.scan_iter(match=f"{prefix}:*")) == []
    admin.close()


@pytest.mark.parametrize(
    ("user", "commands"),
    [
        ("recsys-batch", BATCH_COMMANDS),
        ("recsys-api", API_COMMANDS),
    ],
    ids=["batch", "api"],
)
def test_docs_grant_the_commands_tested_here(user: str, commands: str) -> None:
    """The ACL lines people copy from docs/security.md are the ones proven here."""
    doc = (ROOT / "docs" / "security.md").read_text()
    line = next(row for row in doc.splitlines() if row.startswith(f"user {user} "))
    granted = {word[1:] for word in line.split() if word.startswith("+")}
    assert granted == set(commands.split())


# --- wrong credentials and certificates ---------------------------------------------------


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
    user: str, password: str, tls: bool, ca: str, secure: SecureRedis, prefix: str, tmp_path: Path
) -> None:
    env = secure_env(tmp_path, secure.url(user, password, tls=tls), prefix, secure)
    if ca == "untrusted":
        other = tmp_path / "other-ca"
        other.mkdir()
        make_ca(other, "someone-else")
        env["RECSYS_REDIS__TLS_CA_FILE"] = str(other / "ca.crt")
    result = nightly(env, "--debug")
    assert result.exit_code == 4, result.output
    text = flat(result.output)
    assert "cannot reach Redis" in text
    if ca == "untrusted":
        assert "certificate verify failed" in text
    assert_no_secret(result.output, everything_written(tmp_path))
    assert "wrong-S3cret-pw" not in result.output


@pytest.mark.parametrize("ca", ["good", "untrusted"])
def test_api_wrong_password_or_ca_503_no_secret(
    ca: str,
    secure: SecureRedis,
    published: Published,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A published version is there, but the API's credentials or CA are wrong: 503."""
    caplog.set_level(logging.DEBUG)
    url = secure.url("api", "wrong-S3cret-pw" if ca == "good" else API_PASSWORD)
    settings = api_settings(url, published.prefix, secure)
    if ca == "untrusted":
        make_ca(tmp_path, "someone-else")
        redis_cfg = settings.redis.model_copy(update={"tls_ca_file": tmp_path / "ca.crt"})
        settings = settings.model_copy(update={"redis": redis_cfg})
    with TestClient(create_app(settings)) as api:
        for resp in (api.get(f"/v1/recommendations/{published.user}"), api.get("/readyz")):
            assert resp.status_code == 503
            assert resp.json()["error"] == "redis_unavailable"
            assert_no_secret(resp.text)
            assert "wrong-S3cret-pw" not in resp.text
    assert "wrong-S3cret-pw" not in caplog.text
    assert_no_secret(caplog.text)


@pytest.mark.parametrize(
    ("password", "shown"),
    [("p%40ss:w0rd-S3cret", "rediss://batch:***@"), ("only-S3cret", "redis://:***@")],
    ids=["encoded-at-and-colon", "requirepass-only"],
)
def test_url_password_masked_in_batch_output_and_files(
    password: str, shown: str, secure: SecureRedis, prefix: str, tmp_path: Path
) -> None:
    """A refused password, percent-encoded or not, appears in no form (as written, decoded)
    in the batch's output or its files; the URL is shown masked."""
    tls = shown.startswith("rediss")
    url = secure.url("batch" if tls else "", password, tls=tls)
    env = secure_env(tmp_path, url, prefix, secure)
    result = nightly(env, "--debug")
    status = invoke(["status"], env)
    assert (result.exit_code, status.exit_code) == (4, 4), result.output
    written = everything_written(tmp_path)
    for secret in (password, password.replace("%40", "@"), "w0rd-S3cret", "only-S3cret"):
        assert secret not in result.output
        assert secret not in status.output
        assert secret not in written
    assert shown in flat(result.output)
    assert store.mask_url(url) == url.replace(password, "***")


# --- key injection, request limits, no tracebacks ------------------------------------------


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
    "1:*", "*", "1%0D%0AFLUSHALL", "1%20FLUSHALL", "..%2F..%2Fcurrent", "-1", "1e3", "0x10",
    "%D9%A1%D9%A2",  # Arabic-Indic digits: str.isdigit() is True, not ASCII
    "9223372036854775808", "9" * 5000, "%00", "1;2",
]  # fmt: skip
# Accepted, but read as the integer 1: the key is built from the int, never from the text.
NORMALISED = ["%2B1", "1%20", "01", "%201", "1.0"]


def test_user_ids_cannot_inject_keys(secure: SecureRedis, published: Published) -> None:
    """Malformed ids are 422 before Redis; every key the API touches is a well-formed key of
    the published version (seen with MONITOR); the version is unchanged."""
    p, version = published.prefix, published.version
    admin = secure.admin()
    keys_before = admin.dbsize()
    settings = Settings(
        redis={"url": f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{secure.plain_port}/0",
               "key_prefix": p},
        api={"current_cache_seconds": 0.0},
    )  # fmt: skip
    allowed = re.compile(  # the version's keys, and the shop state (scenarios, availability)
        rf"^{p}:(current|ab|scenarios|unavailable|promo|"
        rf"v:{re.escape(version)}:([utr]:\d{{1,19}}|meta|popular|items))$"
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
        own = api.get(f"/v1/recommendations/{published.user}").json()
        assert own["items"] == published.items
    touched = [token for line in monitor.commands for token in line.split() if p in token]
    assert touched, "the monitor saw no command of this prefix"
    assert all(allowed.match(token.strip('"')) for token in touched), touched
    assert admin.dbsize() == keys_before
    assert snapshot(admin, p, version) == published.keys
    admin.close()


@pytest.fixture
def plain_api(secure: SecureRedis, published: Published) -> Iterator[TestClient]:
    settings = Settings(
        redis={"url": secure.url("api", API_PASSWORD, tls=False), "key_prefix": published.prefix},
        api={"max_batch": 100},
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        yield api


def test_batch_and_k_limits(plain_api: TestClient, published: Published) -> None:
    assert plain_api.post("/v1/recommendations", json={"user_ids": list(range(100))}).is_success
    too_many = plain_api.post("/v1/recommendations", json={"user_ids": list(range(101))})
    assert too_many.status_code == 422
    assert "at most 100 user ids" in too_many.text
    user = published.user
    assert plain_api.get(f"/v1/recommendations/{user}?k=100").status_code == 200
    assert plain_api.get(f"/v1/recommendations/{user}?k=101").status_code == 422
    assert plain_api.get(f"/v1/recommendations/{user}?k=0").status_code == 422
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
    """An async Redis double whose every command fails in an unexpected way.

    No real Redis fails like this; it is the API's last line of defence under test.
    """

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


@pytest.mark.parametrize("password", ["pa#ss-S3cret", "pa/ss-S3cret", "pa?ss-S3cret"])
def test_password_with_unencoded_special_characters_is_masked(
    password: str, tmp_path: Path
) -> None:
    """People paste passwords unencoded. urlsplit then finds no password (the ``#``, ``/``
    or ``?`` ends the authority), so ``mask_url`` returns the URL unchanged and the CLI
    prints it in "invalid Redis URL ...". No part of the password may be shown."""
    url = f"redis://batch:{password}@127.0.0.1:6379/0"
    env = batch_env(tmp_path, url, "secspecial")
    result = invoke(["status"], env)
    assert result.exit_code in {2, 4}, result.output
    batch = nightly(env, "--no-gate")
    assert batch.exit_code in {2, 4}, batch.output
    secret_part = password[3:]  # what follows the special character
    assert secret_part not in result.output
    assert secret_part not in batch.output
    assert secret_part not in everything_written(tmp_path)
    assert secret_part not in store.mask_url(url)
    assert secret_part not in store.mask_text(f"failed: {url}", url)


@pytest.mark.parametrize("bad", ["rec sys", "recsys:*", "a*", "x" * 40, ""])
def test_invalid_key_prefix_is_a_config_error(bad: str, tmp_path: Path) -> None:
    """A prefix that ``keys`` would refuse (spaces, ``:``, ``*``, too long) fails when the
    batch builds its settings (exit 2, one line naming ``key_prefix``), before any run, not
    as a ValueError at the first key (exit 1) or a traceback from the API's startup."""
    env = batch_env(tmp_path, "redis://127.0.0.1:1/0", "placeholder")
    env["RECSYS_REDIS__KEY_PREFIX"] = bad
    result = nightly(env, "--no-gate")
    assert result.exit_code == 2, result.output
    assert "key_prefix" in flat(result.output)
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
