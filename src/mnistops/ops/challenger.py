"""`mnistops run`'s challenger: the fast recipe trained beside the server that serves the
lab's model, promoted by the quality gate and hot-swapped in by the server's registry poll.

The first `make run` on a bare machine serves the lab's MLP within a minute and, meanwhile,
trains the fast recipe (about two minutes of fit on two cores) in a child process whose
output goes to ``MNISTOPS_HOME/logs/challenger.log``. A run killed with the server resumes
from its last epoch at the next `mnistops run`, at most :data:`MAX_ATTEMPTS` times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mnistops.config import Settings

STRONG_ACCURACY = 0.994
"""A champion at or above this test accuracy needs no challenger."""
MAX_ATTEMPTS = 3
RECIPE = "fast"


def state_file(settings: Settings) -> Path:
    return settings.home / "challenger.json"


def log_file(settings: Settings) -> Path:
    return settings.home / "logs" / "challenger.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wanted(settings: Settings, champion_accuracy: float | None) -> str | None:
    """Why no challenger should start now (None: start one)."""
    if not settings.challenger:
        return "MNISTOPS_CHALLENGER is off"
    if champion_accuracy is not None and champion_accuracy >= STRONG_ACCURACY:
        return f"the champion is at {champion_accuracy:.2%} already"
    state = _read(settings)
    if state.get("pid") and _alive(int(state["pid"])):
        return f"a challenger is training already (pid {state['pid']})"
    if int(state.get("attempts", 0)) >= MAX_ATTEMPTS:
        return f"the challenger was started {MAX_ATTEMPTS} times already ({log_file(settings)})"
    return None


def start(
    settings: Settings, epochs: int | None = None, limit: int | None = None
) -> subprocess.Popen[bytes]:
    """Start `mnistops train --model fast` in a child process logging to :func:`log_file`
    (with ``--epochs`` and ``--limit`` when given, as `mnistops run` was)."""
    log = log_file(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    state = _read(settings)
    extra = [
        *(["--epochs", str(epochs)] if epochs else []),
        *(["--limit", str(limit)] if limit else []),
    ]
    with log.open("ab") as out:
        child = subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "mnistops", "train", "--model", RECIPE, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    state = {"pid": child.pid, "attempts": int(state.get("attempts", 0)) + 1}
    state_file(settings).write_text(json.dumps(state))
    return child


def _read(settings: Settings) -> dict[str, int]:
    try:
        data = json.loads(state_file(settings).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
