"""The live monitoring page in a real headless Chromium: it updates while traffic flows,
and a drift scenario turns it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from bench.servers import free_port

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.ops.simulate import scenario_images, simulate
from tests.e2e.test_page import chromium
from tests.support.server import RunningServer, run_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e
WAIT_MS = 30_000


@pytest.fixture
def live(trained_bundle: ModelBundle, tmp_path: Path) -> Iterator[RunningServer]:
    env = {"MNISTOPS_DRIFT_MIN_INTERVAL_S": "0"}
    with run_server(str(trained_bundle.path), free_port(), tmp_path / "home", env) as srv:
        yield srv


@pytest.fixture
def page(live: RunningServer) -> Iterator[Page]:
    with chromium() as browser:
        page = browser.new_page(bypass_csp=True)  # wait_for_function evaluates strings
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(live.url + "/monitoring")
        yield page
        assert all(url.startswith(live.url) for url in requested), requested


def _send(url: str, name: str, settings: Settings, n: int, rate: float) -> threading.Thread:
    images, labels = scenario_images(name, settings, n, seed=7)
    thread = threading.Thread(
        target=simulate, args=(url, images), kwargs={"rate": rate, "labels": labels}
    )
    thread.start()
    return thread


def test_the_page_follows_the_traffic_and_turns_on_drift(
    page: Page, live: RunningServer, trained_settings: Settings, tmp_path: Path
) -> None:
    assert page.locator("#verdict").text_content() == "not checked yet"
    clean = _send(live.url, "clean", trained_settings, 600, rate=150)
    page.wait_for_function(
        "parseFloat(document.getElementById('rate').textContent) > 20", timeout=WAIT_MS
    )
    assert page.locator("#p99").text_content().endswith("ms")  # type: ignore[union-attr]
    clean.join(60)
    page.wait_for_function(
        "document.getElementById('verdict').textContent === 'no drift'", timeout=WAIT_MS
    )
    shares = page.eval_on_selector_all(
        "#digits .live", "bars => bars.map(b => parseFloat(b.style.width))"
    )
    assert len(shares) == 10 and abs(sum(shares) - 100) < 1 and max(shares) < 30
    assert page.locator("#live").text_content() == "no feedback yet"

    _send(live.url, "invert", trained_settings, 400, rate=200).join(60)
    page.wait_for_function(
        "document.getElementById('verdict').textContent === 'drift'", timeout=WAIT_MS
    )
    assert page.locator("#tests tr.fired").count() >= 1
    assert "drift" in (page.locator("#verdict").get_attribute("class") or "")
    page.screenshot(path=str(tmp_path / "monitoring.png"), full_page=True)
