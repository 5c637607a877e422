"""When `mnistops run` starts the fast recipe as a challenger."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mnistops.config import Settings
from mnistops.ops import challenger

pytestmark = pytest.mark.unit


def test_a_weak_champion_gets_a_challenger(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert challenger.wanted(settings, 0.978) is None
    assert challenger.wanted(settings, None) is None


def test_a_strong_champion_or_the_setting_off_gets_none(
    make_settings: Callable[..., Settings],
) -> None:
    assert "already" in str(challenger.wanted(make_settings(), 0.995))
    assert "MNISTOPS_CHALLENGER" in str(challenger.wanted(make_settings(challenger=False), 0.9))


def test_one_challenger_at_a_time_and_a_few_attempts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    state: Path = challenger.state_file(settings)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"pid": os.getpid(), "attempts": 1}))
    assert "training already" in str(challenger.wanted(settings, 0.97))
    state.write_text(json.dumps({"pid": 2**22 + 1, "attempts": 1}))  # no such process
    assert challenger.wanted(settings, 0.97) is None
    state.write_text(json.dumps({"pid": 2**22 + 1, "attempts": challenger.MAX_ATTEMPTS}))
    assert "3 times" in str(challenger.wanted(settings, 0.97))
    state.write_text("not json")
    assert challenger.wanted(settings, 0.97) is None
