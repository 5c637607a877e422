"""The short form of ``make stress``'s saturating scenario (``bench.attack``): mixed JSON,
PNG, v2 JSON, v2 binary and gRPC (Triton's client) at the most the machine takes, against
a real server: no errors, and resident memory flat after the warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import attack, serving, workspace

from mnistops.bundle import ModelBundle

pytestmark = pytest.mark.integration


def test_saturating_mixed_load_has_no_errors_and_flat_memory(
    trained_bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "HOME", tmp_path / "home")  # not the bench's own state
    monkeypatch.setattr(serving, "WORK", tmp_path)
    figures = attack.saturating(Path(trained_bundle.path), seconds=8, soak_seconds=0)
    assert figures.met, figures.lines
    assert "0 errors" in figures.lines[0], figures.lines
