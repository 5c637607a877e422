"""The command line: every command and option explains itself; errors are for people."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import typer
from typer._click import Command  # typer vendors click: its Command has no public name
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from mnistops.cli import app
from mnistops.model import MODELS, Architecture
from tests.support.cli import broken_model, one_line_error

pytestmark = pytest.mark.unit
runner = CliRunner()


def _commands(
    group: TyperGroup, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Command]]:
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_and_option_has_help_text() -> None:
    root = typer.main.get_group(app)
    found = dict(_commands(root))
    for expected in ("train", "promote", "rollback", "export", "ui", "run", "models"):
        assert (expected,) in found
    assert ("data", "fetch") in found and ("data", "info") in found
    for path, command in found.items():
        assert command.help, f"{' '.join(path)} has no help text"
        for param in command.params:
            if isinstance(param, TyperOption) and param.name != "help":
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"


def test_train_refuses_unknown_model_and_names_the_choices() -> None:
    line = one_line_error(runner.invoke(app, ["train", "--model", "resnet"]), code=2)
    assert "'mlp'" in line and "'cnn'" in line and "'fast'" in line


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "-1"], "--batch-size"),
        (["train", "--wings", "2"], "--wings"),
    ],
)
def test_a_usage_mistake_is_one_line_and_exit_2(argv: list[str], said: str) -> None:
    assert said in one_line_error(runner.invoke(app, argv), code=2)


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
        line = one_line_error(runner.invoke(app, command))
        assert f"{missing} is not a model folder" in line


def test_corrupt_model_files_are_one_line(tmp_path: Path, free_port: int) -> None:
    model = broken_model(tmp_path / "model")
    pixels = tmp_path / "digits.npy"
    np.save(pixels, np.zeros((2, 784), np.float32))
    line = one_line_error(runner.invoke(app, ["predict", str(pixels), "--model", str(model)]))
    assert "model.onnx is not a model onnxruntime can run" in line
    serve = ["serve", "--model", str(model), "--port", str(free_port)]
    line = one_line_error(runner.invoke(app, serve))
    assert "reference.npz is not a reference profile" in line


def test_predict_on_a_missing_file_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "digit.png")]))
    assert "nothing to score" in line and "digit.png: no such file or directory" in line


def test_serve_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["serve", "--model", str(tmp_path), "--port", str(port)]
        line = one_line_error(runner.invoke(app, command))
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_serve_on_a_taken_grpc_port_is_one_line(tmp_path: Path, free_port: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        command = ["serve", "--model", str(tmp_path), "--port", str(free_port)]
        line = one_line_error(runner.invoke(app, [*command, "--grpc-port", str(grpc_port)]))
    assert f"cannot listen on 127.0.0.1:{grpc_port}" in line and "MNISTOPS_GRPC_PORT" in line


def test_report_without_a_prediction_log_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path / "home"))
    model = broken_model(tmp_path / "model")
    command = ["monitor", "report", "--model", str(model), "--out", str(tmp_path / "r.html")]
    line = one_line_error(runner.invoke(app, command))
    assert "cannot read the prediction log" in line


def test_retrain_without_url_or_force_is_a_usage_error() -> None:
    result = runner.invoke(app, ["retrain"])
    assert result.exit_code == 2 and "--force" in result.output
