"""The serving process's Monitor without its monitor process: recording, shipping order,
and what it answers when the process is absent."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.errors import MonitorUnavailableError
from mnistops.monitor import service
from mnistops.monitor.messages import Predictions, SwitchModel
from mnistops.monitor.service import Monitor
from tests.unit.monitor.traffic import traffic

pytestmark = pytest.mark.unit


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    bundle = ModelBundle(path=tmp_path / "v1", name="tiny-service", version="1")
    yield Monitor(Settings(home=tmp_path), bundle)  # never started: no child process


def _record(monitor: Monitor, batch: Predictions) -> None:
    monitor.record(
        request_ids=batch.request_ids,
        pixels=batch.pixels,
        probabilities=batch.probabilities,
        latency_s=batch.latencies_s[0],
        model_version=batch.model_versions[0],
    )


def _dropped() -> float:
    return REGISTRY.get_sample_value("mnistops_monitor_dropped_total") or 0.0


def test_without_a_monitor_process_feedback_is_refused_as_unavailable(monitor: Monitor) -> None:
    batch = traffic(1, 3)
    _record(monitor, batch)
    with pytest.raises(MonitorUnavailableError):
        monitor.record_feedback(batch.request_ids[1], 1)


def test_set_model_ships_what_was_recorded_before_the_switch(
    monitor: Monitor, tmp_path: Path
) -> None:
    server, child = multiprocessing.get_context("spawn").Pipe()
    monitor._conn = server  # stands in for the monitor process's end of the pipe
    first, second = traffic(1, 2), traffic(2, 3)
    _record(monitor, first)
    _record(monitor, second)
    monitor.set_model(ModelBundle(path=tmp_path / "v2", name="tiny-service", version="2"))
    monitor._ship_pending()  # what the link thread does at its next tick
    shipped, switch = child.recv(), child.recv()
    server.close()
    child.close()
    assert isinstance(shipped, Predictions)
    assert list(shipped.request_ids) == [*first.request_ids, *second.request_ids]
    np.testing.assert_array_equal(shipped.pixels[2:], second.pixels)
    assert switch == SwitchModel(tmp_path / "v2")


def test_records_beyond_the_pending_limit_of_images_are_counted_not_kept(
    monitor: Monitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "PENDING_IMAGES", 4)
    before = _dropped()
    _record(monitor, traffic(1, 2))
    _record(monitor, traffic(2, 3))  # 5 images would be pending: refused whole
    _record(monitor, traffic(3, 2))  # 4: kept
    assert _dropped() - before == 3
    assert [len(call.request_ids) for call in monitor._pending] == [2, 2]  # type: ignore[union-attr]


def test_a_stalled_monitor_process_costs_an_asker_its_timeout_and_no_more(
    monitor: Monitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitor process that stops reading (SIGSTOP, swapping) fills the pipe and the link
    thread's write blocks; /metrics must still answer within its timeout (the last state)
    and recording must not block."""
    monkeypatch.setattr(service, "STATUS_TIMEOUT_S", 0.3)
    server, child = multiprocessing.get_context("spawn").Pipe()
    monitor._conn = server  # nobody reads `child`: a stalled process
    monitor._link.start()
    try:
        for seed in range(4):  # a megabyte each: far more than a pipe holds
            _record(monitor, traffic(seed, 256))
        time.sleep(0.3)  # the link thread is now blocked writing
        answered: list[bytes] = []
        asker = threading.Thread(target=lambda: answered.append(monitor.render_metrics()))
        started = time.monotonic()
        asker.start()
        asker.join(5)
        assert not asker.is_alive(), "the asker is stuck behind the stalled pipe"
        assert time.monotonic() - started < 2
        assert answered and b"mnistops" in answered[0]
        started = time.monotonic()
        _record(monitor, traffic(9, 2))
        assert time.monotonic() - started < 0.1
    finally:
        monitor._stop.set()
        child.close()  # the blocked write fails; the link thread ends
        monitor._link.join(5)
        server.close()
    assert not monitor._link.is_alive()


def test_without_a_monitor_process_the_drift_status_says_nothing_was_checked(
    monitor: Monitor,
) -> None:
    status = monitor.drift_status()
    assert status == {"checked": False, "drift": False, "tests": {}}
