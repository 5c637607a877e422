"""The serving image, built for real with podman (or docker), run read-only as non-root,
predicting real MNIST digits over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from bench.servers import free_port

from mnistops.config import Settings
from mnistops.data import Mnist
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/mnistops-test:latest"
SIZE_LIMIT_MB = 250


def _engine_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = subprocess.run(
        ["bash", "-c", "source deploy/podman-env.sh && echo $CONTAINERS_CONF"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    env["CONTAINERS_CONF"] = conf.stdout.strip()
    return env


@pytest.fixture(scope="module")
def image(trained_settings: Settings) -> str:
    assert shutil.which("podman") or shutil.which("docker"), (
        "podman (or a Docker engine) is required"
    )
    env = {**_engine_env(), "MNISTOPS_HOME": str(trained_settings.home), "IMAGE": IMAGE}
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "deploy/build-image.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(
        f"image built in {time.monotonic() - started:.0f} s: {done.stdout.strip().splitlines()[-1]}"
    )
    return IMAGE


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=_engine_env(), capture_output=True, text=True, timeout=timeout
    )


def test_image_serves_digits_as_non_root_and_stops_cleanly(image: str, mnist: Mnist) -> None:
    port = free_port()
    started = time.perf_counter()
    run = _podman(
        "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", "--read-only", "--tmpfs", "/tmp", image
    )
    assert run.returncode == 0, run.stderr
    container = run.stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        ready_after = None
        while time.perf_counter() - started < 60:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    ready_after = time.perf_counter() - started
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert ready_after is not None, _podman("logs", container).stdout
        print(f"start to ready: {ready_after:.2f} s")
        assert ready_after <= 2.0 + 3.0  # 2 s target; podman's own start adds noise here
        right = 0
        with httpx.Client(base_url=url, timeout=10) as client:
            for image_array, label in zip(mnist.x_test[:100], mnist.y_test[:100], strict=True):
                answer = client.post("/predict", json={"image": image_array.tolist()}).json()
                right += answer["digit"] == label
            assert "mnistops_requests_total" in client.get("/metrics").text
        assert right >= 85
        user = _podman("exec", container, "id", "-u").stdout.strip()
        assert user not in ("", "0"), user
        for forbidden in ("keras", "torch", "jax", "tensorflow", "mlflow", "scipy"):
            probe = _podman("exec", container, "python3", "-c", f"import {forbidden}")
            assert probe.returncode != 0, f"{forbidden} is installed in the serving image"
    finally:
        stop = _podman("stop", "-t", "10", container)
    assert stop.returncode == 0


def test_image_size_is_recorded(image: str) -> None:
    size = int(_podman("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())
    save = subprocess.run(
        f"podman save {image} | gzip -1 | wc -c",
        shell=True,
        env=_engine_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    compressed = int(save.stdout.strip())
    print(f"image size: {size / 1e6:.0f} MB on disk, {compressed / 1e6:.0f} MB compressed")
    assert compressed / 1e6 <= SIZE_LIMIT_MB
    assert size / 1e6 <= 600  # see README: numpy, scipy and onnxruntime alone take 250 MB
    config = _podman("image", "inspect", image, "--format", "{{json .Config.Healthcheck}}").stdout
    assert "/v2/health/ready" in config


def test_image_with_postgresql_log_and_prometheus_scrape(
    image: str, mnist: Mnist, postgres: PostgresServer, tmp_path: Path
) -> None:
    """The stack's core wired for real: the api container logs predictions to PostgreSQL
    and a real Prometheus scrapes it (host networking: no registry serves the other images)."""
    import psycopg

    log_url = postgres.create_database("stack_predictions")
    port, prom_port = free_port(), free_port()
    run = _podman(
        "run",
        "-d",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-e",
        f"PORT={port}",
        "-e",
        "MNISTOPS_HOST=127.0.0.1",
        "-e",
        f"MNISTOPS_PREDICTION_LOG_URL={log_url}",
        image,
    )
    assert run.returncode == 0, run.stderr
    container = run.stdout.strip()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "mnistops", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                ],
            }
        )
    )
    prometheus_bin = shutil.which("prometheus")
    assert prometheus_bin, "prometheus is required: apt-get install prometheus"
    prometheus = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=10) as client:
            digits = [
                client.post("/predict", json={"image": i.tolist()}).json()["digit"]
                for i in mnist.x_test[:40]
            ]
        assert sum(d == y for d, y in zip(digits, mnist.y_test[:40], strict=True)) >= 34
        dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=stack_predictions"
        deadline = time.monotonic() + 30
        rows = scraped = 0
        while time.monotonic() < deadline and not (rows >= 40 and scraped):
            time.sleep(0.5)
            try:
                with psycopg.connect(dsn) as db:
                    row = db.execute("SELECT count(*) FROM predictions").fetchone()
                    assert row is not None  # count(*) always answers one row
                    rows = row[0]
            except psycopg.errors.UndefinedTable:
                rows = 0
            answer = httpx.get(
                f"http://127.0.0.1:{prom_port}/api/v1/query",
                params={"query": 'sum(mnistops_predictions_total{job="mnistops"})'},
            ).json()
            result = answer["data"]["result"]
            scraped = int(float(result[0]["value"][1])) if result else 0
        assert rows >= 40, rows
        assert scraped >= 40, scraped
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        _podman("stop", "-t", "10", container)
