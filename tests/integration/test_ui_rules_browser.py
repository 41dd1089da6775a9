"""The console's scenario picker, new-items list and rule badges in headless Chromium (#26,
#27).

The world of :mod:`tests.api_rules_data` is published by the batch's writer into the real
Redis with its scenarios and promotion (``recsys_batch.publish.shop_state``); uvicorn serves
the real app; the browser of ``tests/integration/test_ui_browser.py`` loads ``/ui/``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvicorn

from api.main import create_app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.publish import shop_state
from recsys_batch.rules import RuleSet
from tests.api_rules_data import publish_world
from tests.conftest import free_port
from tests.integration.test_ui_browser import browser, console_errors, wait_for  # noqa: F401

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def base_url(redis_url: str, key_prefix: str, real_redis: redis.Redis) -> Iterator[str]:
    cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
    publish_world(real_redis, cfg)
    shop_state.set_scenario(real_redis, "promo", RuleSet(promoted_first=1), cfg)
    service = create_app(Settings(redis={"url": redis_url, "key_prefix": key_prefix}))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(service, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def badges(driver: Any, where: str, kind: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, f"{where} li.item .badge.{kind}"))


def test_picking_a_scenario_shows_the_rules_effect(browser: Any, base_url: str) -> None:  # noqa: F811
    """User 1 without a scenario: their own list, no badge; picking ``weekend`` (min_new 2,
    one item per category) brings three items of their new-items list (badge ``new``), one
    popular refill (badge ``refilled``) and the places left empty; the new-items list is
    shown below."""
    browser.get_log("browser")
    browser.get(f"{base_url}/ui/?user=1")
    wait_for(browser, "#lookup-result li.item")
    wait_for(browser, "#lookup-new li.item")
    assert badges(browser, "#lookup-result", "new") == 0
    new_list = browser.find_elements(By.CSS_SELECTOR, "#lookup-new li.item")
    assert [li.get_attribute("data-item") for li in new_list] == [
        "31", "32", "33", "91", "92", "93", "94"
    ]  # fmt: skip
    assert badges(browser, "#lookup-new", "new") == 3
    assert "From a category this customer buys" in browser.find_element(By.ID, "lookup-new").text

    WebDriverWait(browser, 15).until(
        lambda d: len(Select(d.find_element(By.ID, "scenario")).options) == 4
    )
    Select(browser.find_element(By.ID, "scenario")).select_by_value("weekend")
    wait_for(browser, "#lookup-result .badge.scenario")
    result = browser.find_element(By.ID, "lookup-result")
    items = [li.get_attribute("data-item") for li in result.find_elements(By.CSS_SELECTOR, "li")]
    assert items == ["12", "14", "15", "31", "32", "33", "91"]
    assert badges(browser, "#lookup-result", "new") == 3
    assert badges(browser, "#lookup-result", "refilled") == 1
    assert "3 place(s) left empty" in result.text
    assert "scenario=weekend" in browser.current_url
    assert console_errors(browser) == []


def test_promoted_items_get_their_badge(browser: Any, base_url: str) -> None:  # noqa: F811
    """Scenario ``promo`` (promoted_first = 1) from a deep link: item 15, on promotion,
    leads with its badge."""
    browser.get(f"{base_url}/ui/?user=1&scenario=promo")
    wait_for(browser, "#lookup-result .badge.scenario")
    first = browser.find_element(By.CSS_SELECTOR, "#lookup-result li.item")
    assert first.get_attribute("data-item") == "15"
    assert badges(browser, "#lookup-result", "promoted") == 1
    assert first.find_elements(By.CSS_SELECTOR, ".badge.promoted")
    assert console_errors(browser) == []
