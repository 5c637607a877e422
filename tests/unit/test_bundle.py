"""A version's reference profile is checked when it is read: one that does not fit the
monitor is refused in one line, not discovered by a crash-looping monitor process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnistops.bundle import BundleError, ReferenceProfile
from mnistops.features import FEATURE_NAMES, NUM_CLASSES

pytestmark = pytest.mark.unit
ROWS = 40


def _profile(**changes: object) -> ReferenceProfile:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(NUM_CLASSES), ROWS)
    arrays: dict[str, object] = {
        "feature_names": FEATURE_NAMES,
        "features": rng.random((ROWS, len(FEATURE_NAMES))),
        "probabilities": probabilities,
        "labels": probabilities.argmax(axis=1),
    }
    arrays.update(changes)
    return ReferenceProfile(**arrays)  # type: ignore[arg-type]


def test_a_consistent_profile_reads_back_as_written(tmp_path: Path) -> None:
    written = _profile()
    written.save(tmp_path / "reference.npz")
    read = ReferenceProfile.load(tmp_path / "reference.npz")
    assert read.feature_names == FEATURE_NAMES
    np.testing.assert_array_equal(read.labels, written.labels)


MISFITS = {
    "features of another width": (
        {"features": np.zeros((ROWS, len(FEATURE_NAMES) + 1))},
        "features are",
    ),
    "other feature names": ({"feature_names": ("a",) * len(FEATURE_NAMES)}, "not the ones"),
    "probabilities of 9 classes": ({"probabilities": np.full((ROWS, 9), 0.1)}, "probabilities"),
    "probabilities above 1": ({"probabilities": np.full((ROWS, NUM_CLASSES), 2.0)}, "[0, 1]"),
    "labels that are not digits": ({"labels": np.full(ROWS, 12)}, "digits"),
    "fewer labels than rows": ({"labels": np.zeros(ROWS - 1, dtype=np.int64)}, "not ("),
    "NaN features": ({"features": np.full((ROWS, len(FEATURE_NAMES)), np.nan)}, "finite"),
    "too few rows": (
        {
            "features": np.zeros((3, len(FEATURE_NAMES))),
            "probabilities": np.full((3, NUM_CLASSES), 0.1),
            "labels": np.zeros(3, dtype=np.int64),
        },
        "at least",
    ),
}


@pytest.mark.parametrize(("changes", "said"), MISFITS.values(), ids=MISFITS.keys())
def test_a_profile_that_does_not_fit_the_monitor_is_refused_saying_why(
    tmp_path: Path, changes: dict[str, object], said: str
) -> None:
    path = tmp_path / "reference.npz"
    _profile(**changes).save(path)
    with pytest.raises(BundleError) as refused:
        ReferenceProfile.load(path)
    message = str(refused.value)
    assert said in message and "mnistops export" in message and "\n" not in message
