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

from mnistops.config import Settings
from mnistops.data import Mnist
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/mnistops-test:latest"
SIZE_LIMIT_MB = 250


def _engine_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = subprocess.run(["bash", "-c", "source deploy/podman-env.sh && echo $CONTAINERS_CONF"],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    env["CONTAINERS_CONF"] = conf.stdout.strip()
    return env


@pytest.fixture(scope="module")
def image(trained_settings: Settings) -> str:
    assert shutil.which("podman") or shutil.which("docker"), "podman (or a Docker engine) is required"
    env = {**_engine_env(), "MNISTOPS_HOME": str(trained_settings.home), "IMAGE": IMAGE}
    started = time.monotonic()
    done = subprocess.run(["bash", "deploy/build-image.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"image built in {time.monotonic() - started:.0f} s: {done.stdout.strip().splitlines()[-1]}")
    return IMAGE


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=_engine_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_image_serves_digits_as_non_root_and_stops_cleanly(image: str, mnist: Mnist) -> None:
    port = free_port()
    started = time.perf_counter()
    run = _podman("run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", "--read-only",
                  "--tmpfs", "/tmp", image)  # fmt: skip
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
        for forbidden in ("keras", "torch", "jax", "tensorflow", "mlflow"):
            probe = _podman("exec", container, "python3", "-c", f"import {forbidden}")
            assert probe.returncode != 0, f"{forbidden} is installed in the serving image"
    finally:
        stop = _podman("stop", "-t", "10", container)
    assert stop.returncode == 0


def test_image_size_is_recorded(image: str) -> None:
    size = int(_podman("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())
    save = subprocess.run(f"podman save {image} | gzip -1 | wc -c", shell=True, env=_engine_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    compressed = int(save.stdout.strip())
    print(f"image size: {size / 1e6:.0f} MB on disk, {compressed / 1e6:.0f} MB compressed")
    assert compressed / 1e6 <= SIZE_LIMIT_MB
    assert size / 1e6 <= 600  # see README: numpy, scipy and onnxruntime alone take 250 MB
    config = _podman("image", "inspect", image, "--format", "{{json .Config.Healthcheck}}").stdout
    assert "/v2/health/ready" in config
