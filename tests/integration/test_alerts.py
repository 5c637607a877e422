"""Prometheus rules (promtool), and a real Prometheus + Alertmanager scraping a real server
fed by the simulator: every dashboard panel returns data; Fashion-MNIST traffic makes the
drift alert reach Alertmanager's webhook."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from bench.servers import free_port

from mnistops.config import Settings
from mnistops.ops.simulate import scenario_images, simulate
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert Path(path).exists(), (
        f"{name} is required: apt-get install prometheus prometheus-alertmanager"
    )
    return path


def test_alert_rules_pass_their_unit_tests() -> None:
    done = subprocess.run(
        [_tool("promtool"), "test", "rules", "rules.test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_and_alertmanager_configs_are_valid() -> None:
    rules = subprocess.run(
        [_tool("promtool"), "check", "rules", str(DEPLOY / "prometheus/rules.yml")],
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    am = subprocess.run(
        [_tool("amtool"), "check-config", str(DEPLOY / "alertmanager/alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert am.returncode == 0, am.stdout + am.stderr


class Webhook:
    """A tiny Alertmanager webhook receiver that remembers what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alert_names(self) -> set[str]:
        return {
            a["labels"]["alertname"]
            for m in self.received
            for a in m["alerts"]
            if a["status"] == "firing"
        }


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@pytest.fixture
def stack(
    trained_settings: Settings, tmp_path: Path
) -> Iterator[tuple[RunningServer, str, Webhook]]:
    webhook = Webhook()
    am_port, prom_port = free_port(), free_port()
    am_config = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    for receiver in am_config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = hook["url"].replace(
                "http://alert-webhook:5001", f"http://127.0.0.1:{webhook.port}"
            )
    am_config["route"]["group_wait"] = "1s"
    for route in am_config["route"].get("routes", []):
        route["group_wait"] = "1s"
    (tmp_path / "am.yml").write_text(yaml.safe_dump(am_config))
    # The shipped rules, with their hold times shortened so the test need not wait minutes.
    rules = (DEPLOY / "prometheus/rules.yml").read_text()
    for hold in ("for: 1m", "for: 5m", "for: 10m", "for: 15m"):
        rules = rules.replace(hold, "for: 0s")
    (tmp_path / "rules.yml").write_text(rules)
    env = {
        "MNISTOPS_DRIFT_MIN_INTERVAL_S": "0",
        "MNISTOPS_MNIST_DIR": str(trained_settings.mnist_dir),
    }
    with run_server(
        "models:/mnist-classifier@champion", free_port(), trained_settings.home, env
    ) as srv:
        prom_config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
        prom_config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        prom_config["rule_files"] = [str(tmp_path / "rules.yml")]
        prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
            f"127.0.0.1:{am_port}"
        ]
        prom_config["scrape_configs"][0]["static_configs"][0]["targets"] = [
            srv.url.removeprefix("http://")
        ]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
        alertmanager = _start(
            [
                _tool("prometheus-alertmanager"),
                f"--config.file={tmp_path / 'am.yml'}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp_path / "am.log",
        )
        prometheus = _start(
            [
                _tool("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--rules.alert.resend-delay=1s",
            ],
            tmp_path / "prometheus.log",
        )
        try:
            _wait(f"http://127.0.0.1:{am_port}/-/ready")
            _wait(f"http://127.0.0.1:{prom_port}/-/ready")
            yield srv, f"http://127.0.0.1:{prom_port}", webhook
        finally:
            for process in (prometheus, alertmanager):
                process.terminate()
                process.wait(10)
            webhook.server.shutdown()


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def test_dashboard_queries_return_data_and_drift_alert_reaches_alertmanager(
    stack: tuple[RunningServer, str, Webhook], trained_settings: Settings
) -> None:
    srv, prometheus, webhook = stack
    clean, labels = scenario_images("clean", trained_settings, 300, seed=11)
    assert labels is not None  # MNIST digits come with their labels
    simulate(srv.url, clean[:150], labels=labels[:150], feedback=True, rate=100)
    simulate(srv.url, clean[150:], rate=100)
    dashboard = json.loads((DEPLOY / "grafana/dashboards/mnistops.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    deadline = time.monotonic() + 45
    while True:  # until Prometheus holds enough scrapes for every rate() window
        empty = [expr for expr in exprs if not _query(prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            break
        simulate(srv.url, clean[:20], rate=40)
    assert not empty, f"panels without data: {empty}"
    deadline = time.monotonic() + 30
    while True:  # a recording rule holds data from its first evaluation after two scrapes
        routes = {r["metric"]["route"] for r in _query(prometheus, "mnistops:request_rate:5m")}
        if "/predict" in routes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "/predict" in routes, routes
    assert "MnistopsDriftDetected" not in webhook.alert_names()

    fashion, _ = scenario_images("fashion", trained_settings, 300, seed=12)
    simulate(srv.url, fashion, rate=150)
    deadline = time.monotonic() + 60
    while "MnistopsDriftDetected" not in webhook.alert_names() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "MnistopsDriftDetected" in webhook.alert_names(), webhook.received
    firing = [
        a
        for m in webhook.received
        for a in m["alerts"]
        if a["labels"]["alertname"] == "MnistopsDriftDetected"
    ]
    assert (
        firing[0]["labels"]["model"] == "mnist-classifier"
        and firing[0]["labels"]["severity"] == "ticket"
    )
