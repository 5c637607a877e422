"""Monitoring end to end on a real server: metrics, drift verdict, feedback, the report,
and retraining on drift."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from bench.servers import free_port

from mnistops.config import Settings
from mnistops.data import Mnist
from mnistops.ops.simulate import scenario_images, simulate
from tests.support.server import run_server

pytestmark = pytest.mark.integration


def _cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``mnistops ARGS`` in a child process of this interpreter."""
    command = [sys.executable, "-m", "mnistops.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _cli_env(settings: Settings) -> dict[str, str]:
    """The environment of a command run against ``settings``' store."""
    return {
        "MNISTOPS_HOME": str(settings.home),
        "MNISTOPS_MNIST_DIR": str(settings.mnist_dir),
        "MNISTOPS_ACCURACY_FLOOR": "0.5",
        "PATH": str(Path(sys.executable).parent),
    }


@pytest.fixture
def store_copy(trained_settings: Settings, tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    # the shared store, without any prediction log other tests' servers left in it
    shutil.copytree(trained_settings.home, home, ignore=shutil.ignore_patterns("predictions.db*"))
    return Settings(home=home, mnist_dir=trained_settings.mnist_dir, accuracy_floor=0.5)


def test_drift_feedback_report_and_retrain(store_copy: Settings, tmp_path: Path) -> None:
    env = {"MNISTOPS_DRIFT_MIN_INTERVAL_S": "0", "MNISTOPS_MNIST_DIR": str(store_copy.mnist_dir)}
    with run_server("models:/mnist-classifier@champion", free_port(), store_copy.home, env) as srv:
        clean, labels = scenario_images("clean", store_copy, 300, seed=1)
        assert simulate(srv.url, clean, labels=labels, feedback=True) == {"200": 300}
        client = srv.client()
        verdict = client.get("/monitoring/drift").json()
        assert verdict["checked"] and verdict["drift"] is False, verdict
        metrics = client.get("/metrics").text
        assert "mnistops_live_accuracy 0.9" in metrics or "mnistops_live_accuracy 1.0" in metrics
        assert 'mnistops_feedback_total{correct="true"}' in metrics

        fashion, _ = scenario_images("fashion", store_copy, 200, seed=2)
        assert simulate(srv.url, fashion) == {"200": 200}
        verdict = client.get("/monitoring/drift").json()
        assert verdict["drift"] is True
        assert verdict["tests"]["mean_pixel_mean"]["score"] > verdict["threshold"]
        metrics = client.get("/metrics").text
        assert 'mnistops_drift_detected{model="mnist-classifier",version="1"} 1.0' in metrics
        assert 'mnistops_drift_score{test="label_chi2"}' in metrics
        assert "mnistops_input_pixel_mean_bucket" in metrics
        assert (
            'mnistops_predictions_total{digit="7",model="mnist-classifier",version="1"}' in metrics
        )

        env_cli = _cli_env(store_copy)
        retrain = _cli(
            ["retrain", "--url", srv.url, "--epochs", "1", "--limit", "3000"], env_cli, 600
        )
        assert retrain.returncode == 0, retrain.stderr[-3000:]
        assert "reports drift" in retrain.stdout
        assert "adding 300 feedback-labelled images" in retrain.stdout
        assert "version 2:" in retrain.stdout

    report = tmp_path / "report.html"
    done = _cli(
        ["monitor", "report", "--out", str(report), "--model", "models:/mnist-classifier/1"],
        env_cli,
        300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert "500 predictions" in text and "Drift over the last 500 predictions: <b>" not in text
    assert text.count("data:image/png;base64,") >= 3 and "http://" not in text
    assert "Live accuracy: 0.9" in text or "Live accuracy: 1.0" in text
    assert re.search(r"Estimated accuracy without labels \(ATC\) over the last 500: 0\.\d{3}", text)


def test_the_loop_closes_drift_feedback_retrain_gate_swap_and_the_flag_clears(
    store_copy: Settings,
) -> None:
    env = {
        "MNISTOPS_DRIFT_MIN_INTERVAL_S": "0",
        "MNISTOPS_MNIST_DIR": str(store_copy.mnist_dir),
        "MNISTOPS_RELOAD_INTERVAL_S": "1",  # the server follows the champion alias
    }
    with run_server("models:/mnist-classifier@champion", free_port(), store_copy.home, env) as srv:
        client = srv.client()
        inverted, labels = scenario_images("invert", store_copy, 300, seed=3)
        assert simulate(srv.url, inverted, labels=labels, feedback=True) == {"200": 300}
        assert client.get("/monitoring/drift").json()["drift"] is True
        flag = 'mnistops_drift_detected{model="mnist-classifier",version="%s"} %s'
        assert flag % ("1", "1.0") in client.get("/metrics").text

        env_cli = _cli_env(store_copy)
        # more data and epochs than the champion's (12,000 images, 2 epochs): it beats it
        retrain = _cli(
            ["retrain", "--url", srv.url, "--epochs", "3", "--limit", "24000"], env_cli, 900
        )
        assert retrain.returncode == 0, retrain.stderr[-3000:]
        assert "adding 300 feedback-labelled images" in retrain.stdout
        assert "version 2: champion" in retrain.stdout, retrain.stdout

        deadline = time.monotonic() + 30
        while (
            client.post("/predict", json={"image": [[0] * 28] * 28}).json()["model_version"] != "2"
        ):
            assert time.monotonic() < deadline, "version 2 was not swapped in"
            time.sleep(0.5)
        clean, clean_labels = scenario_images("clean", store_copy, 300, seed=4)
        assert simulate(srv.url, clean, labels=clean_labels) == {"200": 300}
        verdict = client.get("/monitoring/drift").json()
        assert verdict["model_version"] == "2" and verdict["checked"], verdict
        assert verdict["drift"] is False, {k: v["score"] for k, v in verdict["tests"].items()}
        assert flag % ("2", "0.0") in client.get("/metrics").text


def _monitor_pid(server_pid: int, timeout: float = 30) -> int:
    """The monitor process the server started (not multiprocessing's resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{server_pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                    return int(pid)
        time.sleep(0.1)
    raise AssertionError("no monitor process found")


def _monitor_dropped(metrics: str) -> float:
    """Predictions the serving side counted as never reaching the monitor's log."""
    return sum(
        float(v) for v in re.findall(r"^mnistops_monitor_dropped_total (\S+)$", metrics, re.M)
    )


def _dropped(metrics: str) -> float:
    """Predictions the monitor never logged, and rows its log dropped."""
    log = re.findall(r"^mnistops_prediction_log_rows_dropped_total\{[^}]*\} (\S+)$", metrics, re.M)
    return _monitor_dropped(metrics) + sum(float(v) for v in log)


def _logged_ids(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        try:
            return [row[0] for row in db.execute("SELECT request_id FROM predictions")]
        except sqlite3.OperationalError:  # nothing written yet: no table
            return []


def _predictions_total(metrics: str) -> float:
    return sum(
        float(v) for v in re.findall(r"^mnistops_predictions_total\{[^}]*\} (\S+)$", metrics, re.M)
    )


def test_killed_monitor_process_is_restarted_and_serving_never_stops(
    trained_bundle: Any, mnist: Mnist, tmp_path: Path
) -> None:
    with run_server(str(trained_bundle.path), free_port(), tmp_path) as srv:
        client = srv.client()
        for i in range(50):
            client.post("/predict", json={"image": mnist.x_test[i].tolist()}).raise_for_status()
        assert _predictions_total(client.get("/metrics").text) == 50
        first = _monitor_pid(srv.process.pid)
        os.kill(first, signal.SIGKILL)
        statuses = [
            client.post("/predict", json={"image": mnist.x_test[i].tolist()}).status_code
            for i in range(50, 150)
        ]
        assert set(statuses) == {200}  # serving never noticed
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            second = _monitor_pid(srv.process.pid)
            if second != first:
                break
            time.sleep(0.2)
        assert second != first, "the monitor process was not started again"
        for i in range(150, 200):
            client.post("/predict", json={"image": mnist.x_test[i].tolist()}).raise_for_status()
        # every prediction is a row of the log or counted dropped (what the killed process
        # had not logged): none is lost uncounted, none written twice
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = client.get("/metrics").text
            dropped = _dropped(metrics)
            logged = _logged_ids(tmp_path / "predictions.db")
            if len(logged) + dropped >= 200:
                break
            time.sleep(0.5)
        assert len(logged) + dropped == 200, (len(logged), dropped)
        assert len(set(logged)) == len(logged)
        assert 50 <= _predictions_total(metrics) <= 150  # what the new process saw
        assert client.get("/monitoring/drift").status_code == 200
        assert "monitor process ended" in srv.log()


def test_a_stopped_monitor_process_never_holds_up_serving(
    trained_bundle: Any, mnist: Mnist, tmp_path: Path
) -> None:
    """SIGSTOP the monitor process: /metrics gives up on it after its timeout and serves the
    last state, predictions (a 100-image batch among them) are answered at once, and
    when it goes on again everything recorded meanwhile arrives or is counted dropped."""
    with run_server(str(trained_bundle.path), free_port(), tmp_path) as srv:
        client = srv.client()
        for i in range(20):
            client.post("/predict", json={"image": mnist.x_test[i].tolist()}).raise_for_status()
        assert _predictions_total(client.get("/metrics").text) == 20
        monitor = _monitor_pid(srv.process.pid)
        os.kill(monitor, signal.SIGSTOP)
        try:
            batch = {"images": mnist.x_test[:100].tolist()}
            for _ in range(40):  # several MB of pixels: more than the pipe holds
                client.post("/predict", json=batch).raise_for_status()
            timings = []
            for _ in range(3):
                started = time.monotonic()
                scrape = client.get("/metrics", timeout=10)
                timings.append(time.monotonic() - started)
                assert scrape.status_code == 200 and "mnistops_" in scrape.text
            started = time.monotonic()
            client.post("/predict", json=batch).raise_for_status()
            batch_took = time.monotonic() - started
            drift = client.get("/monitoring/drift", timeout=15)
        finally:
            os.kill(monitor, signal.SIGCONT)
        assert max(timings) < 2, timings  # its timeout is 0.5 s
        assert batch_took < 2
        assert drift.status_code == 200
        expected = 20 + 41 * 100
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = client.get("/metrics").text
            dropped = _monitor_dropped(metrics)
            if _predictions_total(metrics) + dropped >= expected:
                break
            time.sleep(0.5)
        assert _predictions_total(metrics) + dropped == expected
