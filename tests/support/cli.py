"""Running the command line in tests: in process (Typer's runner) or as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import Result

FAST = 25.0
"""Seconds within which an unreachable tracking server must be reported."""


def one_line_error(result: Result, code: int = 1) -> str:
    """The error line of a failed command, after checking it failed like a tool."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], lines
    return str(lines[0])


def broken_model(folder: Path) -> Path:
    """A model folder with every file present and none of them usable."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a protobuf")
    (folder / "reference.npz").write_bytes(b"not a zip")
    (folder / "metadata.json").write_text("{}")
    return folder


def mnistops_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "mnistops", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=2 * FAST,
    )
