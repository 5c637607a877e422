"""The command line against real outages and a real model: an unreachable tracking server,
an unreachable service, and export from a trained registry, each a one-line error or a
servable folder."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mnistops.cli import app
from mnistops.config import Settings
from tests.support.cli import FAST, mnistops_process, one_line_error

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_unreachable_service_is_one_line(
    mnist_dir: Path, free_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MNISTOPS_MNIST_DIR", str(mnist_dir))
    url = f"http://127.0.0.1:{free_port}"
    for command in (["retrain", "--url", url], ["monitor", "simulate", "--url", url, "--n", "3"]):
        line = one_line_error(runner.invoke(app, command))
        assert f"cannot reach the service at {url}" in line


COMMANDS = [["models"], ["export"], ["serve"], ["run"], ["train", "--epochs", "1"]]
COMMANDS += [["retrain", "--force"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_tracking_server_is_reported_as_such(
    command: list[str], tmp_path: Path, mnist_dir: Path, free_port: int
) -> None:
    uri = f"http://127.0.0.1:{free_port}"
    _says_tracking_is_down(command, uri, "[Errno 111] Connection refused", tmp_path, mnist_dir)


def _says_tracking_is_down(
    command: list[str], uri: str, reason: str, home: Path, mnist_dir: Path
) -> None:
    """``mnistops COMMAND`` against the tracking server at ``uri`` fails fast, in one line
    naming the server and ``reason``, with nothing trained or registered."""
    env = {"MLFLOW_TRACKING_URI": uri, "MNISTOPS_HOME": str(home)}
    env["MNISTOPS_MNIST_DIR"] = str(mnist_dir)
    started = time.monotonic()
    done = mnistops_process(*command, env=env)
    assert time.monotonic() - started < FAST
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "no champion" not in done.stdout
    assert done.stderr.splitlines() == [
        f"error: MLflow tracking server {uri} is unreachable or failing ({reason}); "
        "start it, or point MLFLOW_TRACKING_URI at a working one"
    ]
    assert not list(home.rglob("model.onnx"))  # nothing trained, nothing half-registered


def test_promote_unknown_version_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path))
    result = runner.invoke(app, ["promote", "41"])
    assert "has no version 41" in one_line_error(result)


def test_export_writes_a_servable_folder(
    trained_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(trained_settings.home))
    out = tmp_path / "model"
    result = runner.invoke(app, ["export", "models:/mnist-classifier@champion", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["metadata.json", "model.int8.onnx", "model.onnx", "reference.npz"]
    result = runner.invoke(app, ["export", "models:/mnist-classifier@nope", "--out", str(out)])
    assert result.exit_code == 1 and "no alias @nope" in result.output


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A tracking server that takes connections and never answers (a hung process)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # the kernel completes connections; nobody ever reads them
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("command", [["serve"], ["run"], ["train", "--epochs", "1"]])
def test_a_tracking_server_that_never_answers_is_reported_as_such(
    command: list[str], tmp_path: Path, mnist_dir: Path, silent_server: str
) -> None:
    _says_tracking_is_down(command, silent_server, "timed out", tmp_path, mnist_dir)
