"""The quality gate's decision rule."""

from __future__ import annotations

import pytest

from mnistops.registry import decide

pytestmark = pytest.mark.unit


def test_first_version_above_floor_becomes_champion() -> None:
    decision = decide(0.98, floor=0.97, champion_accuracy=None)
    assert decision.alias == "champion" and "no champion yet" in decision.reason


def test_version_below_floor_is_challenger() -> None:
    decision = decide(0.96, floor=0.97, champion_accuracy=None)
    assert decision.alias == "challenger" and "below the floor" in decision.reason


def test_version_worse_than_champion_is_challenger() -> None:
    decision = decide(0.978, floor=0.97, champion_accuracy=0.981)
    assert decision.alias == "challenger" and "champion's 0.9810" in decision.reason


def test_equal_accuracy_replaces_champion() -> None:
    assert decide(0.981, floor=0.97, champion_accuracy=0.981).promoted
