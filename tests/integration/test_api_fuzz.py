"""Property-based fuzzing of the API's OpenAPI schema with schemathesis (issue #6).

Every operation is called with generated valid and invalid inputs against a real Redis
through a real uvicorn server: no answer may be a 5xx, and every answer must match the
documented status codes, content types and response schemas.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvicorn
from hypothesis import HealthCheck, given, settings

from api.main import create_app
from recsys_batch.config import RedisConfig, Settings
from tests.conftest import free_port
from tests.publishing import publish_users

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import checks as st_checks  # noqa: E402

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]

pytestmark = pytest.mark.integration


def _seed(client: redis.Redis, prefix: str) -> None:
    """200 users with five items and reasons each, published through the batch's writer."""
    users = {user: [user * 10 + j for j in range(1, 6)] for user in range(200)}
    publish_users(
        client,
        users,
        [91, 92, 93, 94, 95],
        RedisConfig(key_prefix=prefix),
        items={91: {"department": "DELI"}},
        reasons={user: ["r2.3", "b", "a", "t", "p"] for user in users},
    )


@pytest.fixture(scope="module")
def live_api(redis_url: str) -> Iterator[str]:
    prefix = f"fz{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    _seed(client, prefix)
    app = create_app(
        Settings(redis={"url": redis_url, "key_prefix": prefix}, api={"max_batch": 50})
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.unlink(key)
        client.close()


@pytest.fixture(scope="module")
def api_schema(live_api: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_api}/openapi.json")


WITH_INPUTS = {"/v1/recommendations/{user_id}", "/v1/recommendations"}


def _operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_error_and_answers_match_the_schema(api_schema: Any, mode: str) -> None:
    """Valid inputs (positive) and schema-violating ones (negative) for every operation.

    (schemathesis' pytest plugin does not run under pytest 9, so the hypothesis strategies
    are driven directly.)
    """
    operations = _operations(api_schema)
    assert {op.path for op in operations} >= {
        "/v1/recommendations/{user_id}",
        "/v1/recommendations",
        "/readyz",
        "/metrics",
    }
    for operation in operations:
        if mode == "negative" and operation.path not in WITH_INPUTS:
            continue  # nothing to violate: no parameters, no body
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @given(case=strategy)
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call()
            case.validate_response(response, checks=CHECKS)

        check()
