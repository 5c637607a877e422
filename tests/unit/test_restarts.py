"""Restarts of a process that keeps ending back off; one that lived long starts quickly."""

from __future__ import annotations

import time

import pytest

from mnistops.restarts import Backoff

pytestmark = pytest.mark.unit


def test_a_process_that_keeps_ending_waits_longer_each_time_up_to_the_most() -> None:
    backoff = Backoff(first=1, most=8, steady=60)
    waits = []
    for _ in range(6):
        backoff.started()
        waits.append(backoff.delay())
    assert waits == [1, 2, 4, 8, 8, 8]


def test_a_process_that_lived_steadily_is_started_again_after_the_first_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    backoff = Backoff(first=1, most=8, steady=60)
    for _ in range(4):
        backoff.started()
        backoff.delay()
    backoff.started()
    clock[0] += 61
    assert backoff.delay() == 1
