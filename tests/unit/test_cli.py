"""The command line: every command and option explains itself; errors are for people."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mnistops.cli import app
from mnistops.model import MODELS, Architecture

pytestmark = pytest.mark.unit
runner = CliRunner()
FAST = 25.0
"""Seconds within which an unreachable tracking server must be reported."""


def _one_line_error(result, code: int = 1) -> str:  # type: ignore[no-untyped-def]
    """The error line of a failed command, after checking it failed like a tool."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], lines
    return str(lines[0])


def _broken_model(folder: Path) -> Path:
    """A model folder with every file present and none of them usable."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a protobuf")
    (folder / "reference.npz").write_bytes(b"not a zip")
    (folder / "metadata.json").write_text("{}")
    return folder


def _mnistops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "mnistops", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=2 * FAST,
    )


def _commands(group, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_and_option_has_help_text() -> None:
    root = typer.main.get_command(app)
    found = dict(_commands(root))
    for expected in ("train", "promote", "rollback", "export", "ui", "run", "models"):
        assert (expected,) in found
    assert ("data", "fetch") in found and ("data", "info") in found
    for path, command in found.items():
        assert command.help, f"{' '.join(path)} has no help text"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"


def test_train_refuses_unknown_model_and_names_the_choices() -> None:
    result = runner.invoke(app, ["train", "--model", "resnet"])
    assert result.exit_code == 2
    assert "'mlp'" in result.output and "'cnn'" in result.output


def test_architecture_choices_are_the_known_models() -> None:
    assert tuple(Architecture) == MODELS


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mnistops {version('mnistops')}\n"


def test_serve_help_shows_the_real_defaults() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "[default: (MNISTOPS_HOST, else 127.0.0.1)]" in text
    assert "[default: (MNISTOPS_PORT or PORT, else 8000)]" in text
    assert "models:/mnist-classifier@champion" in text
    assert "bind ." not in text


def test_missing_model_folder_is_one_line(tmp_path: Path, free_port: int) -> None:
    missing = tmp_path / "nowhere"
    for command in (
        ["serve", "--model", str(missing), "--port", str(free_port)],
        ["monitor", "report", "--model", str(missing)],
    ):
        line = _one_line_error(runner.invoke(app, command))
        assert f"{missing} is not a model folder" in line


def test_corrupt_model_files_are_one_line(tmp_path: Path, free_port: int) -> None:
    model = _broken_model(tmp_path / "model")
    pixels = tmp_path / "digits.npy"
    np.save(pixels, np.zeros((2, 784), np.float32))
    line = _one_line_error(runner.invoke(app, ["predict", str(pixels), "--model", str(model)]))
    assert "model.onnx is not a model onnxruntime can run" in line
    serve = ["serve", "--model", str(model), "--port", str(free_port)]
    line = _one_line_error(runner.invoke(app, serve))
    assert "reference.npz is not a reference profile" in line


def test_predict_on_a_missing_file_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(runner.invoke(app, ["predict", str(tmp_path / "digit.png")]))
    assert "cannot read" in line and "No such file or directory" in line


def test_serve_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["serve", "--model", str(tmp_path), "--port", str(port)]
        line = _one_line_error(runner.invoke(app, command))
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_report_without_a_prediction_log_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path / "home"))
    model = _broken_model(tmp_path / "model")
    command = ["monitor", "report", "--model", str(model), "--out", str(tmp_path / "r.html")]
    line = _one_line_error(runner.invoke(app, command))
    assert "cannot read the prediction log" in line


def test_unreachable_service_is_one_line(
    mnist_dir: Path, free_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MNISTOPS_MNIST_DIR", str(mnist_dir))
    url = f"http://127.0.0.1:{free_port}"
    for command in (["retrain", "--url", url], ["monitor", "simulate", "--url", url, "--n", "3"]):
        line = _one_line_error(runner.invoke(app, command))
        assert f"cannot reach the service at {url}" in line


def test_retrain_without_url_or_force_is_a_usage_error() -> None:
    result = runner.invoke(app, ["retrain"])
    assert result.exit_code == 2 and "--force" in result.output


@pytest.mark.parametrize("command", [["models"], ["export"], ["serve"], ["run"]])
def test_unreachable_tracking_server_is_reported_as_such(
    command: list[str], tmp_path: Path, mnist_dir: Path, free_port: int
) -> None:
    uri = f"http://127.0.0.1:{free_port}"
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MNISTOPS_HOME": str(tmp_path),
        "MNISTOPS_MNIST_DIR": str(mnist_dir),
    }
    started = time.monotonic()
    done = _mnistops(*command, env=env)
    assert time.monotonic() - started < FAST
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "no champion" not in done.stdout
    assert done.stderr.splitlines() == [
        f"error: MLflow tracking server {uri} is unreachable or failing "
        "([Errno 111] Connection refused); start it, or point MLFLOW_TRACKING_URI at a working one"
    ]


def test_promote_unknown_version_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path))
    result = runner.invoke(app, ["promote", "41"])
    assert "has no version 41" in _one_line_error(result)


def test_export_writes_a_servable_folder(
    trained_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MNISTOPS_HOME", str(trained_settings.home))
    out = tmp_path / "model"
    result = runner.invoke(app, ["export", "models:/mnist-classifier@champion", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.onnx", "reference.npz"]
    result = runner.invoke(app, ["export", "models:/mnist-classifier@nope", "--out", str(out)])
    assert result.exit_code == 1 and "no alias @nope" in result.output
