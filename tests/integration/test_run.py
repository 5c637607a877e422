"""`mnistops run`: trains when there is no champion, then serves from a clean process."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from mnistops.data import Mnist
from tests.conftest import FIXTURE_FLOOR
from tests.support.server import run_command

pytestmark = pytest.mark.integration
TRAINING_STACK = {"jax", "jaxlib", "jax_plugins", "keras", "tensorflow", "torch"}


def _mapped_files(pid: int) -> set[Path]:
    """Every file mapped into a process: its shared objects among them."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(fields[5]) for fields in map(str.split, lines) if len(fields) > 5}


def _resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_run_trains_then_serves_without_the_training_stack(
    mnist_dir: Path, mnist: Mnist, tmp_path: Path, free_port: int
) -> None:
    env = {"MNISTOPS_MNIST_DIR": str(mnist_dir), "MNISTOPS_ACCURACY_FLOOR": str(FIXTURE_FLOOR)}
    env["MNISTOPS_CHALLENGER"] = "false"  # the next test covers it
    command = ["run", "--epochs", "1", "--limit", "3000"]
    with run_command(command, free_port, tmp_path / "home", env, ready_timeout=300) as srv:
        digit = mnist.x_test[0]
        answer = httpx.post(f"{srv.url}/predict", json={"image": digit.tolist()}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["digit"] == int(mnist.y_test[0])
        assert answer.json()["model_version"] == "1"

        loaded = {part for path in _mapped_files(srv.process.pid) for part in path.parts}
        rss = _resident_mb(srv.process.pid)
        assert not loaded & TRAINING_STACK, (
            f"serving process ({rss:.0f} MB) maps {loaded & TRAINING_STACK}"
        )
        assert "no champion yet: training" in srv.log()
        assert "challenger" not in srv.log()


def test_run_trains_a_challenger_beside_the_server_and_swaps_in_what_the_gate_promotes(
    mnist_dir: Path, mnist: Mnist, tmp_path: Path, free_port: int
) -> None:
    env = {
        "MNISTOPS_MNIST_DIR": str(mnist_dir),
        "MNISTOPS_ACCURACY_FLOOR": "0.5",
        "MNISTOPS_RELOAD_INTERVAL_S": "1",
    }
    command = ["run", "--epochs", "2", "--limit", "3000"]
    home = tmp_path / "home"
    with run_command(command, free_port, home, env, ready_timeout=300) as srv:
        assert "training the fast recipe as a challenger" in srv.log()
        log = home / "logs" / "challenger.log"
        deadline = time.monotonic() + 240
        while "registered mnist-classifier version 2" not in _text(log):
            assert time.monotonic() < deadline, _text(log)
            time.sleep(1)
        promoted = "version 2: champion" in _text(log)
        digit = mnist.x_test[0].tolist()
        deadline = time.monotonic() + 20
        while True:
            answer = httpx.post(f"{srv.url}/predict", json={"image": digit}, timeout=10).json()
            if answer["model_version"] == ("2" if promoted else "1") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer["model_version"] == ("2" if promoted else "1"), (promoted, srv.log())


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
