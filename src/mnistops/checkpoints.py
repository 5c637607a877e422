"""Per-epoch checkpoints of an unfinished run: the Keras model and the run's progress."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
CHECKPOINT_FILE = "model.keras"


@dataclass
class RunProgress:
    """How far one training run got: saved after every epoch, read back to resume."""

    run_id: str
    epoch: int = 0
    fit_seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)

    def record_epoch(self, epoch: int, seconds: float, values: dict[str, float]) -> None:
        """Count one finished epoch (1-based ``epoch``) with its metrics."""
        self.epoch = epoch
        self.fit_seconds += seconds
        for name, value in values.items():
            self.history.setdefault(name, []).append(value)


def load_progress(checkpoint: Path) -> RunProgress | None:
    """The progress of an unfinished run in ``checkpoint``, or None if there is none."""
    if (checkpoint / STATE_FILE).is_file() and (checkpoint / CHECKPOINT_FILE).is_file():
        return RunProgress(**json.loads((checkpoint / STATE_FILE).read_text()))
    return None


def save_checkpoint(checkpoint: Path, model: Any, progress: RunProgress) -> None:
    """Write model then progress, each atomically, so a kill leaves a consistent pair."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    partial = checkpoint / f"partial-{CHECKPOINT_FILE}"
    model.save(partial)
    partial.replace(checkpoint / CHECKPOINT_FILE)
    tmp = checkpoint / f"{STATE_FILE}.partial"
    tmp.write_text(json.dumps(asdict(progress)))
    tmp.replace(checkpoint / STATE_FILE)
