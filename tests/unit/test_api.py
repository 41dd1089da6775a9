"""Unit tests of the lookup API against fakeredis (issue #6)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from api import metrics
from api.fastpath import parse_fast
from api.main import create_app
from api.models import BatchResponse, Recommendation
from api.redis_client import resolve_url
from api.service import Lookup
from api.shop import PLAIN, Options
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.errors import ConfigError
from recsys_batch.publish import keys
from recsys_batch.publish.status import version_info
from tests.publishing import publish_users

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PREFIX = "recsys"
BUCKETS = 3
CFG = RedisConfig(key_prefix=PREFIX, user_buckets=BUCKETS)
"""What the batch side publishes with: the writer's own buckets, prefix and lifecycle."""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def created_at(client: Any, version: str, cfg: RedisConfig = CFG) -> str:
    """When ``begin_version`` stamped ``version`` (the API's ``generated_at``)."""
    return version_info(client, version, cfg).meta["created_at"]


USERS = {1: [11, 12, 13, 14, 15], 2: [21, 22, 23, 24, 25]}
POPULAR = [91, 92, 93, 94, 95]
ITEMS = {
    11: {"department": "PRODUCE", "brand": "National"},
    12: {"department": "DELI", "brand": "Private"},
}


def make_client(
    fake: Any, fast_path: bool = True, **api: Any
) -> TestClient:  # a started app (lifespan ran)
    settings = Settings(api={"current_cache_seconds": 60.0, **api})
    return TestClient(create_app(settings, redis_client=fake, fast_path=fast_path))


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def batch(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The batch's (sync) client: it publishes through the writer into the API's server."""
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def v1(batch: fakeredis.FakeRedis) -> str:
    """The live version: ``USERS``, ``POPULAR`` and ``ITEMS``, published by the writer."""
    return publish_users(batch, USERS, POPULAR, CFG, items=ITEMS)


@pytest.fixture
def fake(server: fakeredis.FakeServer, v1: str) -> Any:
    """The API's (async) client on the same server, with ``v1`` live."""
    return fakeredis.FakeAsyncRedis(server=server)


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
def api(request: pytest.FixtureRequest, fake: Any) -> Iterator[TestClient]:
    with make_client(fake, fast_path=request.param) as client:
        yield client


class TestKSettings:
    """``api.default_k`` and ``api.max_k`` are settings, honoured by both paths (#15)."""

    @pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi-route"])
    def test_default_and_max_k_come_from_settings(self, fake: Any, fast_path: bool) -> None:
        with make_client(fake, fast_path=fast_path, default_k=2, max_k=3) as client:
            assert client.get("/v1/recommendations/1").json()["items"] == [11, 12]
            assert client.get("/v1/recommendations/1?k=3").json()["items"] == [11, 12, 13]
            assert client.get("/v1/recommendations/1?k=4").status_code == 422
            batch = client.post("/v1/recommendations?k=4", json={"user_ids": [1]})
            assert batch.status_code == 422
            default = client.post("/v1/recommendations", json={"user_ids": [1]})
            assert default.json()["results"][0]["items"] == [11, 12]


class TestGetOne:
    def test_known_user_gets_personal_items(
        self, api: TestClient, batch: fakeredis.FakeRedis, v1: str
    ) -> None:
        resp = api.get("/v1/recommendations/1")
        assert resp.status_code == 200
        assert resp.json() == {
            "user_id": 1,
            "items": USERS[1],
            "source": "personal",
            "fallback_items": 0,
            "variant": "control",
            "version": v1,
            "generated_at": created_at(batch, v1),
        }
        Recommendation.model_validate(resp.json())
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["server-timing"].startswith("lookup;dur=")

    def test_unknown_user_gets_fallback(self, api: TestClient, v1: str) -> None:
        body = api.get("/v1/recommendations/777").json()
        assert body["items"] == POPULAR
        assert body["source"] == "fallback"
        assert body["version"] == v1

    @pytest.mark.parametrize(
        ("k", "expected", "fallback_items"),
        [(1, [11], 0), (3, [11, 12, 13], 0), (100, USERS[1] + POPULAR, 5)],
    )
    def test_k_truncates_then_refills_from_popular(
        self, api: TestClient, k: int, expected: list[int], fallback_items: int
    ) -> None:
        body = api.get(f"/v1/recommendations/1?k={k}").json()
        assert (body["items"], body["fallback_items"]) == (expected, fallback_items)

    def test_details_in_item_order(self, api: TestClient) -> None:
        body = api.get("/v1/recommendations/1?k=3&details=true").json()
        assert body["details"] == [
            {"item_id": 11, "department": "PRODUCE", "brand": "National"},
            {"item_id": 12, "department": "DELI", "brand": "Private"},
            {"item_id": 13},
        ]

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/recommendations/abc",
            "/v1/recommendations/-1",
            "/v1/recommendations/1.5",
            "/v1/recommendations/" + "9" * 20,
            "/v1/recommendations/%2A",
            "/v1/recommendations/1?k=0",
            "/v1/recommendations/1?k=101",
            "/v1/recommendations/1?k=x",
            "/v1/recommendations/1?details=maybe",
        ],
    )
    def test_malformed_request_is_422(self, api: TestClient, path: str) -> None:
        resp = api.get(path)
        assert resp.status_code == 422
        assert "detail" in resp.json()

    def test_fast_path_and_route_answer_identically(self, fake: Any) -> None:
        paths = ["/v1/recommendations/1", "/v1/recommendations/2?k=2", "/v1/recommendations/5"]
        with make_client(fake, fast_path=True) as fast, make_client(fake, False) as slow:
            for path in paths:
                a, b = fast.get(path), slow.get(path)
                assert (a.status_code, a.content) == (b.status_code, b.content)


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/v1/recommendations/42", b"", (42, 5, PLAIN)),
        ("/v1/recommendations/0", b"k=7", (0, 7, PLAIN)),
        ("/v1/recommendations/42", b"k=0", None),
        ("/v1/recommendations/42", b"k=101", None),
        ("/v1/recommendations/42", b"details=true", None),
        ("/v1/recommendations/42", b"k=5&details=true", None),
        ("/v1/recommendations/42", b"scenario=w&k=2", (42, 2, Options(scenario="w"))),
        ("/v1/recommendations/42", b"store=3", (42, 5, Options(store=3))),
        ("/v1/recommendations/42", b"new_only=true", (42, 5, Options(new_only=True))),
        ("/v1/recommendations/42", b"min_new=2", (42, 5, Options(rules=(("min_new", "2"),)))),
        ("/v1/recommendations/42", b"min_new=x", None),  # FastAPI's 422 names the rule
        ("/v1/recommendations/42", b"scenario=%2A", None),  # not a scenario name
        ("/v1/recommendations/42", b"new_only=maybe", None),
        ("/v1/recommendations/42", b"store=-1", None),
        ("/v1/recommendations/42", b"k=1&k=2", None),  # twice
        ("/v1/recommendations/42", b"foo=1", None),  # FastAPI's 422 names it
        ("/v1/recommendations/4x", b"", None),
        ("/v1/recommendations/", b"", None),
        ("/v1/recommendations/\u0663", b"", None),  # a non-ASCII digit
        ("/v1/recommendations/" + "9" * 19, b"", None),  # above 2**63 - 1
    ],
)
def test_parse_fast(path: str, query: bytes, expected: tuple[int, int, Options] | None) -> None:
    assert parse_fast(path, query) == expected


def test_cached_version_builds_the_golden_key() -> None:
    server = fakeredis.FakeServer()
    cfg = RedisConfig(key_prefix="p1", user_buckets=1000)
    version = publish_users(fakeredis.FakeRedis(server=server), USERS, POPULAR, cfg)
    fake = fakeredis.FakeAsyncRedis(server=server)

    async def check() -> list[str]:
        live = await Lookup(fake, "p1", 1.0).live()
        return [live.key(42), live.key(42, "t"), live.key(42, "r")]

    assert run(check()) == [
        f"p1:v:{version}:u:902",
        f"p1:v:{version}:t:902",
        f"p1:v:{version}:r:902",
    ]


class TestBatch:
    def test_one_answer_per_id_in_order(self, api: TestClient, v1: str) -> None:
        resp = api.post("/v1/recommendations?k=2", json={"user_ids": [2, 9, 1, 2]})
        assert resp.status_code == 200
        body = resp.json()
        BatchResponse.model_validate(body)
        assert body["version"] == v1
        assert [(r["user_id"], r["items"], r["source"]) for r in body["results"]] == [
            (2, [21, 22], "personal"),
            (9, [91, 92], "fallback"),
            (1, [11, 12], "personal"),
            (2, [21, 22], "personal"),
        ]

    def test_details(self, api: TestClient) -> None:
        body = api.post("/v1/recommendations?k=1&details=true", json={"user_ids": [1]}).json()
        assert body["results"][0]["details"] == [
            {"item_id": 11, "department": "PRODUCE", "brand": "National"}
        ]

    def test_empty_batch(self, api: TestClient) -> None:
        body = api.post("/v1/recommendations", json={"user_ids": []}).json()
        assert body["results"] == []

    def test_limit_is_inclusive_and_named(self, fake: Any) -> None:
        with make_client(fake, max_batch=3) as client:
            ok = client.post("/v1/recommendations", json={"user_ids": [1, 2, 3]})
            too_many = client.post("/v1/recommendations", json={"user_ids": [1, 2, 3, 4]})
        assert ok.status_code == 200
        assert len(ok.json()["results"]) == 3
        assert too_many.status_code == 422
        assert "at most 3 user ids" in too_many.text

    def test_default_limit_is_1000(self, api: TestClient) -> None:
        resp = api.post("/v1/recommendations", json={"user_ids": list(range(1001))})
        assert resp.status_code == 422
        assert "at most 1000" in resp.text
        assert api.post("/v1/recommendations", json={"user_ids": list(range(1000))}).is_success

    @pytest.mark.parametrize(
        "payload",
        [
            {"user_ids": ["1"]},
            {"user_ids": [True]},
            {"user_ids": [-1]},
            {"user_ids": [1.5]},
            {"user_ids": [2**63]},
            {"user_ids": 1},
            {"ids": [1]},
            {},
        ],
    )
    def test_malformed_body_is_422(self, api: TestClient, payload: dict[str, Any]) -> None:
        assert api.post("/v1/recommendations", json=payload).status_code == 422


def still_writing(batch: fakeredis.FakeRedis) -> None:
    """No fault: the first nightly run is still writing, so ``P:current`` names nothing yet."""
    publish_users(batch, USERS, POPULAR, CFG, finish=False)


def live_in_format(fmt: str) -> Callable[[fakeredis.FakeRedis], None]:
    """A published version whose meta hash then names the format ``fmt``."""

    def publish(batch: fakeredis.FakeRedis) -> None:
        version = publish_users(batch, USERS, POPULAR, CFG)
        # Fault: the live version claims a format this API does not read (as if a batch of
        # another release had published it); everything else is the writer's.
        batch.hset(keys.meta_key(version, PREFIX), "format", fmt)

    return publish


def flipped_while_writing(batch: fakeredis.FakeRedis) -> None:
    """A version still in state ``writing`` that the pointer names anyway."""
    version = publish_users(batch, USERS, POPULAR, CFG, finish=False)
    # Fault: P:current moved before finish_version (which flips only a complete version).
    batch.set(keys.current_key(PREFIX), version)


class TestUnavailable:
    @pytest.mark.parametrize(
        ("publish", "reason", "words"),
        [
            (still_writing, "no_live_version", "recsys nightly-batch"),
            (live_in_format("1"), "unsupported_format", "format '1'"),
            (live_in_format("json-v7"), "unsupported_format", "reads format 2"),
            (flipped_while_writing, "version_incomplete", "'writing'"),
        ],
        ids=["not-flipped-yet", "format-1", "format-json-v7", "flipped-while-writing"],
    )
    def test_unreadable_live_version_is_503_with_reason(
        self,
        server: fakeredis.FakeServer,
        batch: fakeredis.FakeRedis,
        publish: Callable[[fakeredis.FakeRedis], None],
        reason: str,
        words: str,
    ) -> None:
        publish(batch)
        with make_client(fakeredis.FakeAsyncRedis(server=server)) as client:
            for resp in (
                client.get("/v1/recommendations/1"),
                client.get("/v1/recommendations/1?details=true"),
                client.post("/v1/recommendations", json={"user_ids": [1]}),
                client.get("/readyz"),
            ):
                assert resp.status_code == 503
                assert resp.json()["error"] == reason
                assert words in resp.json()["detail"]

    def test_corrupt_value_is_refused(self, batch: fakeredis.FakeRedis, fake: Any, v1: str) -> None:
        head = keys.user_key(v1, 1, BUCKETS, PREFIX)
        assert batch.hget(head, "1") == keys.pack_items(USERS[1])  # the writer's value...
        batch.hset(head, "1", b"[1, 2, 3]")  # ...fault: overwritten by 9 bytes, not 4 x n
        with make_client(fake) as client:
            resp = client.get("/v1/recommendations/1")
        assert resp.status_code == 503
        assert resp.json()["error"] == "corrupt_value"
        assert head in resp.json()["detail"]

    def test_redis_down_then_back(self, server: fakeredis.FakeServer, fake: Any) -> None:
        errors = metrics.REDIS_ERRORS._value.get()
        with make_client(fake, current_cache_seconds=0.0) as client:
            assert client.get("/v1/recommendations/1").status_code == 200
            server.connected = False
            for resp in (
                client.get("/v1/recommendations/1"),
                client.post("/v1/recommendations", json={"user_ids": [1]}),
                client.get("/readyz"),
            ):
                assert resp.status_code == 503
                assert resp.json()["error"] == "redis_unavailable"
            assert client.get("/healthz").status_code == 200
            server.connected = True
            assert client.get("/v1/recommendations/1").json()["items"] == USERS[1]
            assert client.get("/readyz").status_code == 200
        assert metrics.REDIS_ERRORS._value.get() >= errors + 3


class TestVersionCache:
    def test_pointer_read_with_each_lookup_follows_a_flip(
        self, batch: fakeredis.FakeRedis, fake: Any, v1: str
    ) -> None:
        """The pointer travels in every lookup's pipeline (#18): a flip is followed at once."""
        with make_client(fake, current_cache_seconds=60.0) as client:
            assert client.get("/v1/recommendations/1").json()["version"] == v1
            v2 = publish_users(batch, {1: [31, 32]}, [99], CFG)  # the next night's flip
            body = client.get("/v1/recommendations/1?k=2").json()
            assert client.get("/readyz").json()["version"] == v2
        assert (body["version"], body["items"]) == (v2, [31, 32])

    def test_one_round_trip_per_cached_lookup(self, fake: Any) -> None:
        calls: list[str] = []

        class Counting:
            def __getattr__(self, name: str) -> Any:
                calls.append(name)
                return getattr(fake, name)

        async def lookups() -> list[list[str]]:
            lookup = Lookup(Counting(), PREFIX, 60.0)
            await lookup.one(1, 5)
            calls.clear()
            for user in (1, 2):
                await lookup.one(user, 5)
            hits = list(calls)
            calls.clear()
            await lookup.one(3, 5, [91])  # unknown, with an exclusion: still one pipeline
            await lookup.one(1, 5, explain=True)
            await lookup.many([1, 2, 3], 20)
            return [hits, list(calls)]

        assert run(lookups()) == [["pipeline", "pipeline"], ["pipeline"] * 3]

    def test_stale_pointer_is_followed_on_a_miss(
        self, batch: fakeredis.FakeRedis, fake: Any, v1: str
    ) -> None:
        """Issue #7: the cached version was unlinked by two quick publishes; a miss re-reads
        the pointer and answers from the new version, for one user and for a batch."""
        published: list[str] = []

        async def go() -> tuple[Any, ...]:
            lookup = Lookup(fake, PREFIX, 60.0)
            await lookup.live()
            publish_users(batch, {1: [21], 2: [22]}, [92], CFG)
            published.append(publish_users(batch, {1: [31], 2: [32]}, [93], CFG))
            # the second publish's cleanup unlinked v1 (neither live nor previous)
            assert not batch.exists(keys.meta_key(v1, PREFIX), keys.popular_key(v1, PREFIX))
            one = await lookup.one(2, 1)
            published.append(publish_users(batch, {1: [41], 2: [42]}, [94], CFG))
            # Fault: the cached version's removal has begun (one bucket hash, users 1 and 2,
            # is gone; the rest is not): the batch is read again whole, from the new version.
            assert batch.unlink(keys.user_bucket_key(published[0], 1, PREFIX)) == 1
            live, many = await lookup.many([1, 2, 3], 1)
            return one, live, many

        (live1, answer1), live, many = run(go())
        v3, v4 = published
        assert (live1.version, answer1.items, answer1.source) == (v3, [32], "personal")
        assert live.version == v4
        assert [(a.items, a.source) for a in many] == [
            ([41], "personal"),
            ([42], "personal"),
            ([94], "fallback"),
        ]

    def test_concurrent_misses_share_one_pointer_read(self, fake: Any) -> None:
        calls: list[str] = []

        class Counting:
            def __getattr__(self, name: str) -> Any:
                calls.append(name)
                return getattr(fake, name)

        async def go() -> list[Any]:
            lookup = Lookup(Counting(), PREFIX, 60.0, coalesce=True)
            await lookup.live()
            calls.clear()
            return await asyncio.gather(*(lookup.one(u, 2) for u in (7, 8, 9)))

        answers = run(go())
        assert [answer.source for _, answer in answers] == ["fallback"] * 3
        assert calls == ["pipeline"]  # the users' fields and the pointer, shared by all three

    def test_version_whose_popular_key_is_gone_is_not_cached(
        self, batch: fakeredis.FakeRedis, fake: Any, v1: str
    ) -> None:
        """The pointer named a version whose keys are being removed (popular gone, meta not
        yet): the pointer is read again and the newer version is used."""
        v5 = publish_users(batch, {1: [51]}, [95], CFG)
        # Fault: v5 is complete but not flipped yet (the pointer is back on v1; the flip
        # happens below, between the lookup's two pointer reads), and v1's removal has begun:
        # its popular list is gone, its meta hash not yet.
        batch.set(keys.current_key(PREFIX), v1)
        assert batch.unlink(keys.popular_key(v1, PREFIX)) == 1

        async def go() -> str:
            lookup = Lookup(fake, PREFIX, 60.0)

            real_get = fake.get
            reads = 0

            async def flipping_get(key: Any) -> Any:
                nonlocal reads
                if key == keys.current_key(PREFIX):
                    reads += 1
                    if reads == 2:  # the publish flipped between the two pointer reads
                        await fake.set(keys.current_key(PREFIX), v5)
                return await real_get(key)

            fake.get = flipping_get
            try:
                return (await lookup.live()).version
            finally:
                del fake.get

        assert run(go()) == v5


class TestOperations:
    def test_healthz(self, api: TestClient) -> None:
        assert api.get("/healthz").json() == {"status": "ok"}

    def test_readyz(self, api: TestClient, batch: fakeredis.FakeRedis, v1: str) -> None:
        """The age is counted from the version's ``created_at`` (not from now, nor negative)."""
        stamped = datetime.fromisoformat(created_at(batch, v1)).timestamp()
        before = time.time()
        body = api.get("/readyz").json()
        after = time.time()
        assert (body["status"], body["version"]) == ("ready", v1)
        assert body["generated_at"] == created_at(batch, v1)
        # rounded to 3 decimals by the route: half a millisecond either way is the rounding
        assert before - stamped - 0.0005 <= body["age_seconds"] <= after - stamped + 0.0005

    def test_metrics(self, api: TestClient) -> None:
        personal = metrics.PERSONAL._value.get()
        fallback = metrics.FALLBACK._value.get()
        api.get("/v1/recommendations/1")
        api.get("/v1/recommendations/1")
        api.get("/v1/recommendations/555")
        text = api.get("/metrics").text
        assert metrics.PERSONAL._value.get() == personal + 2
        assert metrics.FALLBACK._value.get() == fallback + 1
        for name in (
            'recsys_api_request_duration_seconds_bucket{le="0.001",'
            'route="/v1/recommendations/{user_id}"}',
            "recsys_api_lookups_total{source=",
            "recsys_api_redis_errors_total",
            "recsys_api_live_version_age_seconds",
        ):
            assert name in text

    def test_docs_and_schema(self, api: TestClient) -> None:
        assert api.get("/docs").status_code == 200
        paths = api.get("/openapi.json").json()["paths"]
        assert {"/v1/recommendations/{user_id}", "/v1/recommendations", "/readyz"} <= set(paths)

    def test_not_started_is_503(self, fake: Any) -> None:
        client = TestClient(create_app(Settings(), redis_client=fake))  # no lifespan
        resp = client.get("/v1/recommendations/1")
        assert resp.status_code == 503
        assert resp.json()["error"] == "starting"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", ("redis://h:6379/0", False)),
        ("redis+cluster://h:7000", ("redis://h:7000", True)),
        ("rediss+cluster://h:7000", ("rediss://h:7000", True)),
        ("unix:///tmp/r.sock", ("unix:///tmp/r.sock", False)),
    ],
)
def test_resolve_url(url: str, expected: tuple[str, bool]) -> None:
    assert resolve_url(RedisConfig(url=url)) == expected


def test_resolve_url_rejects_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match="unsupported Redis URL scheme 'http'"):
        resolve_url(RedisConfig(url="http://h"))


def test_api_imports_no_heavy_modules() -> None:
    code = (
        "import sys, api.main; api.main.app; "
        "print(','.join(m for m in ('polars', 'numpy', 'implicit', 'lightgbm') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_the_served_app_freezes_what_it_was_built_from() -> None:
    """``api.main:app`` (what uvicorn serves) leaves the objects built at startup out of the
    cyclic GC's collections (#27); an app built by ``create_app`` (tests) does not."""
    code = (
        "import gc, api.main; api.main.create_app(); before = gc.get_freeze_count(); "
        "api.main.app; print(before, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["0", "True"]


class TestServeCommand:
    def test_runs_uvicorn_with_uvloop_and_httptools(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import uvicorn  # noqa: PLC0415
        from typer.testing import CliRunner  # noqa: PLC0415

        from cli.main import app  # noqa: PLC0415

        seen: dict[str, Any] = {}
        monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(kw, target=target))
        result = CliRunner().invoke(app, ["serve", "--port", "8123", "--workers", "2"])
        assert result.exit_code == 0, result.output
        assert seen["target"] == "api.main:app"
        assert (seen["port"], seen["workers"], seen["host"]) == (8123, 2, "127.0.0.1")
        assert (seen["loop"], seen["http"]) == ("uvloop", "httptools")

    def test_bad_config_exits_2(self, tmp_path: Any) -> None:
        from typer.testing import CliRunner  # noqa: PLC0415

        from cli.main import app  # noqa: PLC0415

        bad = tmp_path / "bad.toml"
        bad.write_text("[api]\nport = 'not a port'\n")
        result = CliRunner().invoke(app, ["serve", "--config", str(bad)])
        assert result.exit_code == 2


def test_unexpected_error_is_json_without_traceback(fake: Any) -> None:
    class Broken:
        async def one(self, user_id: int, k: int, **_: Any) -> Any:
            raise RuntimeError("boom at /secret/path")

    with make_client(fake) as client:
        client.app.state.lookup = Broken()  # type: ignore[attr-defined]
        resp = client.get("/v1/recommendations/1")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal", "detail": "unexpected RuntimeError"}


class TestCoalescing:
    def _lookup(self, fake: Any, calls: list[str]) -> Lookup:
        class Counting:
            def __getattr__(self, name: str) -> Any:
                calls.append(name)
                return getattr(fake, name)

        return Lookup(Counting(), PREFIX, 60.0, coalesce=True)

    def test_concurrent_lookups_share_one_pipeline(self, fake: Any) -> None:
        calls: list[str] = []

        async def go() -> list[Any]:
            lookup = self._lookup(fake, calls)
            await lookup.live()
            calls.clear()
            return await asyncio.gather(*(lookup.one(u, 2) for u in (1, 2, 3, 1)))

        answers = run(go())
        assert calls == ["pipeline"]  # every user's field and the pointer, one round trip
        assert [(a.items, a.source) for _, a in answers] == [
            ([11, 12], "personal"),
            ([21, 22], "personal"),
            ([91, 92], "fallback"),
            ([11, 12], "personal"),
        ]

    def test_a_lone_lookup_is_one_pipeline(self, fake: Any) -> None:
        calls: list[str] = []

        async def go() -> Any:
            lookup = self._lookup(fake, calls)
            await lookup.live()
            calls.clear()
            return await lookup.one(2, 5)

        assert run(go())[1].items == USERS[2]
        assert calls == ["pipeline"]

    def test_failure_reaches_every_waiting_request(
        self, server: fakeredis.FakeServer, fake: Any
    ) -> None:
        async def go() -> list[Any]:
            lookup = Lookup(fake, PREFIX, 60.0, coalesce=True)
            await lookup.live()
            server.connected = False
            return await asyncio.gather(
                *(lookup.one(u, 5) for u in (1, 2, 3)), return_exceptions=True
            )

        errors = run(go())
        assert [getattr(e, "reason", e) for e in errors] == ["redis_unavailable"] * 3

    def test_off_on_a_cluster(self, fake: Any) -> None:
        assert Lookup(fake, PREFIX, 1.0, cluster=True, coalesce=True).coalescer is None


def test_unexpected_error_behind_fastapi_is_json_too(fake: Any) -> None:
    class Broken:
        async def many(self, user_ids: list[int], k: int, *args: Any, **kwargs: Any) -> Any:
            raise KeyError("internal detail")

    app = create_app(Settings(), redis_client=fake)
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.lookup = Broken()
        resp = client.post("/v1/recommendations", json={"user_ids": [1]})
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal", "detail": "unexpected KeyError; see the logs"}
    assert "Traceback" not in resp.text


class TestBodyLimit:
    def test_oversized_body_is_413_before_parsing(self, fake: Any) -> None:
        with make_client(fake, max_body_bytes=1000) as client:
            resp = client.post(
                "/v1/recommendations",
                content=b'{"user_ids": [' + b"1," * 600 + b"1]}",
                headers={"content-type": "application/json"},
            )
        assert resp.status_code == 413
        assert resp.json()["error"] == "body_too_large"
        assert "1000 bytes" in resp.json()["detail"]

    def test_chunked_body_is_counted(self, fake: Any) -> None:
        def chunks() -> Iterator[bytes]:
            yield b'{"user_ids": ['
            for _ in range(100):
                yield b"1," * 10
            yield b"1]}"

        with make_client(fake, max_body_bytes=1000) as client:
            resp = client.post(
                "/v1/recommendations",
                content=chunks(),
                headers={"content-type": "application/json"},
            )
        assert resp.status_code == 413

    @pytest.mark.parametrize("chunked", [False, True])
    def test_body_within_the_limit_is_served(self, fake: Any, chunked: bool) -> None:
        payload = b'{"user_ids": [1, 2]}'
        content: Any = iter([payload[:5], payload[5:]]) if chunked else payload
        with make_client(fake, max_body_bytes=len(payload)) as client:
            resp = client.post(
                "/v1/recommendations", content=content, headers={"content-type": "application/json"}
            )
        assert resp.status_code == 200
        assert [r["user_id"] for r in resp.json()["results"]] == [1, 2]


def test_serve_refuses_an_unknown_redis_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from cli.main import app  # noqa: PLC0415

    monkeypatch.setenv("RECSYS_REDIS__URL", "http://localhost:6379")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "unsupported Redis URL scheme" in result.output


def test_settings_from_config_file_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.deps import CONFIG_FILE_ENV, get_settings  # noqa: PLC0415

    config = tmp_path / "serve.toml"
    config.write_text("[api]\nmax_batch = 7\n\n[redis]\nkey_prefix = 'shop'\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    assert (settings.api.max_batch, settings.redis.key_prefix) == (7, "shop")


def test_live_version_age_gauge(api: TestClient, batch: fakeredis.FakeRedis, v1: str) -> None:
    """The gauge is the seconds from the version's ``created_at`` to the scrape."""
    stamped = datetime.fromisoformat(created_at(batch, v1)).timestamp()
    api.get("/v1/recommendations/1")
    before = time.time()
    text = api.get("/metrics").text
    after = time.time()
    line = next(x for x in text.splitlines() if x.startswith("recsys_api_live_version_age_seconds"))
    assert before - stamped <= float(line.split()[-1]) <= after - stamped


def test_the_served_app_collects_young_objects_at_the_configured_threshold() -> None:
    """``api.main.app`` (what uvicorn serves) sets the youngest GC generation's threshold
    from ``api.gc_young_threshold`` and keeps the older ones (#27). In a subprocess: the
    threshold is the process's. Catches dropping the call, or reading another setting."""
    code = (
        "import gc; before = gc.get_threshold(); import api.main as m; m.app; "
        "after = gc.get_threshold(); print(before[0], after[0], before[1:] == after[1:])"
    )
    env = {"RECSYS_API__GC_YOUNG_THRESHOLD": "12345", "PATH": "", "RECSYS_REDIS__URL": "redis://x"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["700", "12345", "True"]
