"""The draw-a-digit page in a real headless Chromium: draw strokes, upload a digit."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from bench.servers import free_port
from PIL import Image

from mnistops.bundle import ModelBundle
from mnistops.data import Mnist
from tests.support.server import RunningServer, run_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def live(
    trained_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with run_server(str(trained_bundle.path), free_port(), tmp_path_factory.mktemp("page")) as srv:
        yield srv


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium (the system's, as CI installs it), closed on exit."""
    assert shutil.which("chromium") or Path(CHROMIUM).exists(), (
        "Chromium is required for the browser tests: apt-get install chromium"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser(live: RunningServer) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(browser: Browser, live: RunningServer) -> Page:
    # wait_for_function evaluates its string as code, which the page's policy forbids
    page = browser.new_page(bypass_csp=True)
    page.goto(live.url + "/")
    return page


def test_drawing_a_one_shows_a_prediction_and_bars(page: Page, tmp_path: Path) -> None:
    box = page.locator("#pad").bounding_box()
    assert box is not None  # the pad is on screen
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 50)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x + step * 0.5, box["y"] + 50 + step * 9)
    page.mouse.up()
    # the answer to the whole stroke: no prediction in flight or queued (the page also
    # predicts while drawing, and an early answer is of part of the stroke)
    page.wait_for_function(
        "!pending && !again && document.getElementById('digit').textContent !== ''",
        timeout=10_000,
    )
    assert page.locator("#digit").text_content() == "1"
    widths = page.eval_on_selector_all(
        ".bar > div", "els => els.map(e => parseFloat(e.style.width))"
    )
    assert len(widths) == 10 and abs(sum(widths) - 100) < 2
    assert "version 1" in (page.locator("#model").text_content() or "")
    page.screenshot(path=str(tmp_path / "drawn.png"))
    page.click("#clear")
    assert page.locator("#digit").text_content() == ""


def test_uploading_an_mnist_digit_shows_its_label(page: Page, mnist: Mnist, tmp_path: Path) -> None:
    for index in (0, 1, 2, 3):  # labels 7, 2, 1, 0
        path = tmp_path / f"digit{index}.png"
        buffer = io.BytesIO()
        Image.fromarray(mnist.x_test[index]).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue())
        page.click("#clear")
        page.set_input_files("#file", str(path))
        page.wait_for_function(
            "document.getElementById('digit').textContent !== ''", timeout=10_000
        )
        assert page.locator("#digit").text_content() == str(mnist.y_test[index])


def test_page_loads_nothing_from_outside(browser: Browser, live: RunningServer) -> None:
    requested: list[str] = []
    page = browser.new_page()
    page.on("request", lambda request: requested.append(request.url))
    page.goto(live.url + "/")
    page.wait_for_load_state("networkidle")
    assert requested and all(url.startswith(live.url) for url in requested), requested


def test_telling_the_right_digit_records_feedback_once(
    page: Page, live: RunningServer, mnist: Mnist, tmp_path: Path
) -> None:
    path = tmp_path / "digit.png"
    Image.fromarray(mnist.x_test[0]).save(path, "PNG")  # a 7
    page.click("#clear")
    assert not page.locator("#feedback").is_visible()
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('digit').textContent !== ''", timeout=10_000)
    assert page.locator("#feedback").is_visible()
    page.click("#labels button[data-label='1']")  # "wrong: it is a 1"
    page.wait_for_function(
        "document.getElementById('thanks').textContent.includes('recorded as 1')", timeout=10_000
    )
    page.click("#labels button[data-label='2']")  # a second label for the same prediction
    page.wait_for_function(
        "document.getElementById('thanks').textContent.includes('one label per prediction')",
        timeout=10_000,
    )
    metrics = live.client().get("/metrics").text
    assert 'mnistops_feedback_total{correct="false"} 1.0' in metrics


@pytest.mark.parametrize("path", ["/", "/monitoring"])
def test_the_pages_run_under_their_content_security_policy(
    browser: Browser, live: RunningServer, path: str
) -> None:
    """The pages' own inline script and style are allowed by hash; nothing is refused."""
    refused: list[str] = []
    requested: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: refused.append(m.text) if "Security Policy" in m.text else None)
    page.on("pageerror", lambda error: refused.append(str(error)))
    page.on("request", lambda request: requested.append(request.url))
    response = page.goto(live.url + path)
    assert response is not None
    assert "script-src 'sha256-" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    page.wait_for_load_state("networkidle")
    if path == "/monitoring":  # its script ran: it asked for the summary
        assert any(url.endswith("/monitoring/summary") for url in requested), requested
    else:  # its script ran: the canvas was given its size and listeners
        page.locator("canvas").first.click()
    assert not refused, refused
    page.close()


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/docs", "#swagger-ui .opblock-summary-path"), ("/redoc", ".api-content h2")],
)
def test_the_api_docs_render_offline_under_their_policy(
    browser: Browser, live: RunningServer, path: str, rendered: str
) -> None:
    """Swagger UI and ReDoc draw the API from this service alone: every request the page
    makes goes to it (other origins are cut off), and the policy refuses nothing of its own."""
    refused: list[str] = []
    elsewhere: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: refused.append(m.text) if "Security Policy" in m.text else None)
    page.on("pageerror", lambda error: refused.append(str(error)))

    def offline(route: Route) -> None:
        if route.request.url.startswith(live.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    response = page.goto(live.url + path)
    assert response is not None and response.status == 200
    assert response.headers["x-frame-options"] == "DENY"
    page.wait_for_selector(rendered, timeout=20_000)
    assert "/predict" in page.content()
    page.wait_for_load_state("networkidle")
    assert not elsewhere, elsewhere
    # ReDoc's bundle names one image on its CDN (the Redocly logo): the policy keeps it
    # from loading, which is the point; anything else refused is a fault of the page
    third_party = re.compile(r"^Loading the image 'https://cdn\.redoc\.ly/[^']+' violates")
    assert not [m for m in refused if not third_party.match(m)], refused
    page.close()
