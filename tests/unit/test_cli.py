"""The command line: every command and option explains itself; errors are for people."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mnistops.cli import app

pytestmark = pytest.mark.unit
runner = CliRunner()


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
    assert "mlp, cnn" in result.output


def test_promote_unknown_version_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path))
    result = runner.invoke(app, ["promote", "41"])
    assert result.exit_code == 1
    assert "has no version 41" in result.output


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
