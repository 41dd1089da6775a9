"""The console page at ``/ui/`` in a real headless Chromium (issue #19).

The real ``recsys nightly-batch`` publishes twice on small synthetic data into the real Redis;
uvicorn serves the real app on a free loopback port; Debian's ``chromium`` driven by
``chromium-driver`` through Selenium loads the page. ``.ci/run`` installs both packages; in
CI a missing browser fails (``tests/conftest.py``). ``RECSYS_UI_SCREENSHOTS=1`` writes
``docs/ui-desktop.png`` (1280x800) and ``docs/ui-mobile.png`` (390x844).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import uvicorn
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app as cli_app
from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from tests.conftest import free_port
from tests.small import small_env

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNKNOWN_USER = 99_999_999
PUBLISHED_RUNS = 2


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "chromium and chromium-driver are not installed "
            "(apt-get install -y chromium chromium-driver)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[str, int]]:
    """(key prefix, a known user id) after two real published runs."""
    import redis  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("ui")
    prefix = f"ui{os.getpid()}{int(time.time()) % 100000}"
    env = {
        **small_env(300, 100),
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp / "nightly.lock"),
    }
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    summaries = []
    try:
        for _ in range(PUBLISHED_RUNS):
            result = CliRunner().invoke(
                cli_app,
                ["nightly-batch", "--source", "synthetic", "--log-format", "json"],
                env=env,
            )
            assert result.exit_code == 0, result.output
            summaries.append(json.loads(result.stdout))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    recs = pl.read_parquet(Path(summaries[-1]["run_dir"]) / "recommendations.parquet")
    user = int(recs[C.USER].min())  # type: ignore[arg-type]
    yield prefix, user
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.unlink(key)
    client.close()


@pytest.fixture(scope="module")
def base_url(published: tuple[str, int], redis_url: str) -> Iterator[str]:
    prefix, _ = published
    service = create_app(Settings(redis={"url": redis_url, "key_prefix": prefix}))
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, css: str, timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_for(driver, "#runs-table tr.run")
    wait_for(driver, "#live dl.facts")
    wait_for(driver, "#popular li.item")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") in {"SEVERE", "ERROR"}]


def test_page_loads_without_console_errors(browser: Any, base_url: str) -> None:
    browser.get_log("browser")  # drop what earlier pages logged
    open_page(browser, f"{base_url}/ui/")
    assert "recsys console" in browser.title
    live = browser.find_element(By.ID, "live").text
    assert "previous" in live.lower()
    # The source as the batch named it (docs/data.md), never a machine path (#29).
    assert "Data source" in live and "synthetic (users=300, seed=42)" in live
    assert console_errors(browser) == []


def test_known_user_lookup_renders_items(
    browser: Any, base_url: str, published: tuple[str, int]
) -> None:
    _, user = published
    open_page(browser, f"{base_url}/ui/")
    box = browser.find_element(By.ID, "user-id")
    label = browser.find_element(By.CSS_SELECTOR, "label[for='user-id']")
    assert label.text
    box.clear()
    box.send_keys(str(user))
    box.send_keys("\n")  # the keyboard submits the form
    wait_for(browser, "#lookup-result li.item")
    result = browser.find_element(By.ID, "lookup-result")
    items = result.find_elements(By.CSS_SELECTOR, "li.item")
    assert len(items) == 10  # the page asks k=10; a version stores publish.top_n (20) (#18)
    assert "department:" in result.text
    # Every item carries its reason, in words (explain=true; docs/api.md), never raw JSON.
    reasons = [r.text for r in result.find_elements(By.CSS_SELECTOR, ".reason")]
    assert len(reasons) == len(items)
    assert all(r.startswith("Why: ") and "{" not in r for r in reasons), reasons
    assert result.find_elements(By.CSS_SELECTOR, ".badge.personal")
    assert not result.find_elements(By.CSS_SELECTOR, ".badge.fallback")
    assert f"user={user}" in browser.current_url
    assert console_errors(browser) == []


def test_unknown_user_deep_link_shows_fallback_badge(browser: Any, base_url: str) -> None:
    browser.get(f"{base_url}/ui/?user={UNKNOWN_USER}")
    badge = wait_for(browser, "#lookup-result .badge.fallback")
    assert "fallback" in badge.text
    assert browser.find_elements(By.CSS_SELECTOR, "#lookup-result li.item")
    assert console_errors(browser) == []


def test_run_history_one_row_per_published_run(browser: Any, base_url: str) -> None:
    open_page(browser, f"{base_url}/ui/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tr.run")
    assert [r.get_attribute("data-status") for r in rows] == ["published"] * PUBLISHED_RUNS
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs-chart svg rect")) == PUBLISHED_RUNS
    assert console_errors(browser) == []


@pytest.mark.parametrize(
    ("name", "width", "height"), [("desktop", 1280, 800), ("mobile", 390, 844)]
)
def test_readable_at_desktop_and_phone_sizes(
    browser: Any, base_url: str, published: tuple[str, int], name: str, width: int, height: int
) -> None:
    _, user = published
    browser.set_window_size(width, height)
    try:
        open_page(browser, f"{base_url}/ui/?user={user}")
        wait_for(browser, "#lookup-result li.item")
        # What the viewport shows is what a person sees: no horizontal scrolling.
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= browser.execute_script("return window.innerWidth")
        assert browser.find_element(By.ID, "user-id").is_displayed()
        if os.environ.get("RECSYS_UI_SCREENSHOTS") == "1":  # docs/ui-*.png, committed once
            browser.save_screenshot(str(ROOT / "docs" / f"ui-{name}.png"))
    finally:
        browser.set_window_size(1280, 800)
