"""The monitor process's core, fed batches directly: metrics, the drift verdict, the
prediction log, a new model version, and the message loop over a real pipe."""

from __future__ import annotations

import logging
import multiprocessing
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from mnistops.bundle import ONNX_FILE, REFERENCE_FILE, write_metadata
from mnistops.config import Settings
from mnistops.features import FEATURE_NAMES
from mnistops.monitor import worker
from mnistops.monitor.messages import (
    FEEDBACK_UNKNOWN,
    FeedbackReply,
    GiveFeedback,
    Predictions,
    Settled,
    StatusReply,
    StatusRequest,
    Stop,
    SwitchModel,
)
from mnistops.monitor.predlog import predictions
from mnistops.monitor.worker import Hub, MonitorCore, answer_until_stopped
from tests.unit.monitor.traffic import profile, traffic

pytestmark = pytest.mark.unit
WINDOW, EVERY = 200, 100
KEY = b"k" * 32
"""The shared monitor's authkey in these tests."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path, drift_window=WINDOW, drift_check_every=EVERY, drift_min_interval_s=0
    )


def _status(core: MonitorCore) -> StatusReply:
    reply = core.handle(StatusRequest(seq=1))
    assert isinstance(reply, StatusReply) and reply.seq == 1
    return reply


def _predicted(text: str, model: str) -> float:
    pattern = rf'^mnistops_predictions_total\{{digit="\d",model="{model}",version="1"\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_traffic_like_the_reference_is_checked_and_is_not_drift(settings: Settings) -> None:
    core = MonitorCore(settings, "tiny-clean", "1", profile())
    for seed in (1, 2):
        assert core.handle(traffic(seed, EVERY)) is None
    reply = _status(core)
    assert reply.drift["checked"] is True and reply.drift["drift"] is False, reply.drift
    assert reply.drift["observed"] == WINDOW and reply.drift["model_name"] == "tiny-clean"
    assert _predicted(reply.metrics_text.decode(), "tiny-clean") == 2 * EVERY


def test_inverted_images_are_drift_and_exported_as_such(settings: Settings) -> None:
    core = MonitorCore(settings, "tiny-inverted", "1", profile())
    for seed in (1, 2):
        core.handle(traffic(seed, EVERY, inverted=True))
    reply = _status(core)
    assert reply.drift["drift"] is True
    assert reply.drift["tests"]["mean_pixel_mean"]["score"] > reply.drift["threshold"]
    text = reply.metrics_text.decode()
    assert 'mnistops_drift_detected{model="tiny-inverted",version="1"} 1.0' in text


def test_no_check_before_the_window_holds_enough_predictions(settings: Settings) -> None:
    core = MonitorCore(settings, "tiny-young", "1", profile())
    core.handle(traffic(1, 50))
    drift = _status(core).drift
    assert drift["checked"] is False and drift["drift"] is False and drift["observed"] == 50


def _logged(settings: Settings, batch: Predictions) -> list[sa.Row[Any]]:
    """The rows a monitor core writes to its log for ``batch``, in order."""
    core = MonitorCore(settings, "tiny-log", "1", profile())
    core.log.start()
    core.handle(batch)
    core.log.stop()
    engine = sa.create_engine(settings.prediction_log)
    with engine.connect() as db:
        rows = list(db.execute(sa.select(predictions).order_by(predictions.c.id)).all())
    engine.dispose()
    return rows


def test_each_prediction_becomes_one_row_of_the_log(settings: Settings) -> None:
    batch = traffic(3, 5, prefix="log")
    rows = _logged(settings, batch)
    assert [r.request_id for r in rows] == list(batch.request_ids)
    assert [r.label for r in rows] == batch.probabilities.argmax(axis=1).tolist()
    assert rows[0].latency_ms == pytest.approx(2.0)
    assert rows[0].model_version == "1" and len(rows[0].image) == 784
    assert set(rows[0].features) == set(FEATURE_NAMES)
    pixels = np.round(batch.pixels[0] * 255).astype(np.uint8)
    assert rows[0].image == pixels.tobytes()
    assert rows[0].probabilities == pytest.approx(batch.probabilities[0].tolist(), abs=1e-6)


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (0.25, 30, 70), (1.0, 200, 200)])
def test_images_are_kept_at_the_configured_rate(
    tmp_path: Path, rate: float, low: int, high: int
) -> None:
    settings = Settings(home=tmp_path, prediction_log_image_rate=rate)
    rows = _logged(settings, traffic(4, 200, prefix="rate"))
    assert len(rows) == 200  # every prediction is logged, with or without its image
    kept = sum(r.image is not None for r in rows)
    assert low <= kept <= high, kept


def test_a_bad_batch_is_logged_and_monitoring_goes_on(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    core = MonitorCore(settings, "tiny-bad", "1", profile())
    wrong_width = Predictions.of_call(["x", "y"], np.zeros((2, 100)), np.eye(10)[:2], 0.0, "1")
    with caplog.at_level(logging.ERROR, logger="mnistops.monitor"):
        assert core.handle(wrong_width) is None
    assert "monitor failed to process 2 predictions" in caplog.text
    core.handle(traffic(1, 10))
    assert _status(core).drift["observed"] == 10


def test_a_new_model_version_gets_its_reference_and_a_fresh_window(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "v2"
    folder.mkdir()
    profile(seed=5).save(folder / REFERENCE_FILE)
    (folder / ONNX_FILE).write_bytes(b"")  # never opened by the monitor
    write_metadata(folder, {"name": "tiny-switch", "version": "2"})
    core = MonitorCore(settings, "tiny-switch", "1", profile())
    core.handle(traffic(1, 150))
    assert core.handle(SwitchModel(folder)) is None
    drift = _status(core).drift
    assert drift["model_version"] == "2" and drift["observed"] == 0 and not drift["checked"]


def test_the_loop_answers_over_a_pipe_until_stop(settings: Settings) -> None:
    core = MonitorCore(settings, "tiny-pipe", "1", profile())
    server, monitor = multiprocessing.get_context("spawn").Pipe()
    loop = threading.Thread(target=answer_until_stopped, args=(monitor, core))
    loop.start()
    server.send(traffic(1, 20))
    server.send(StatusRequest(seq=9))
    reply = server.recv()
    server.send(Stop())
    loop.join(10)
    assert not loop.is_alive()
    assert isinstance(reply, StatusReply) and reply.seq == 9
    assert reply.drift["observed"] == 20
    server.close()
    monitor.close()


def test_the_sender_hears_how_many_of_its_predictions_are_logged(settings: Settings) -> None:
    """``Settled`` counts what is written: if the monitor process dies, the sender counts
    the rest as dropped instead of losing them uncounted."""
    core = MonitorCore(settings, "tiny-settled", "1", profile())
    core.log.start()
    server, monitor = multiprocessing.get_context("spawn").Pipe()
    loop = threading.Thread(target=answer_until_stopped, args=(monitor, core))
    loop.start()
    server.send(traffic(1, 20))
    server.send(traffic(2, 7))
    settled = 0
    while settled < 27 and server.poll(10):
        message = server.recv()
        if isinstance(message, Settled):
            settled = message.images
    server.send(Stop())
    loop.join(10)
    core.log.stop()
    assert settled == 27
    assert len(_rows_in(settings.prediction_log)) == 27
    server.close()
    monitor.close()


def test_the_loop_ends_when_the_serving_process_is_gone(settings: Settings) -> None:
    core = MonitorCore(settings, "tiny-gone", "1", profile())
    server, monitor = multiprocessing.get_context("spawn").Pipe()
    server.close()
    answer_until_stopped(monitor, core)  # returns on the end of the pipe, not hangs
    monitor.close()


def test_the_log_of_a_home_folder_not_made_yet_gets_its_rows(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "not" / "made")
    assert len(_logged(settings, traffic(4, 3, prefix="home"))) == 3


def _rows_in(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as db:
            return [r.request_id for r in db.execute(sa.select(predictions.c.request_id))]
    except sa.exc.OperationalError:  # no table: a new, empty file
        return []
    finally:
        engine.dispose()


def test_a_deleted_log_file_is_made_again_rather_than_written_into_the_void(
    settings: Settings,
) -> None:
    core = MonitorCore(settings, "tiny-deleted", "1", profile())
    core.log.start()
    core.handle(traffic(1, 3, prefix="before"))
    deadline = time.monotonic() + 10
    while len(_rows_in(settings.prediction_log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    database = Path(sa.make_url(settings.prediction_log).database or "")
    for path in database.parent.glob(f"{database.name}*"):  # with its -wal and -shm
        path.unlink()
    after = traffic(2, 4, prefix="after")
    core.handle(after)
    core.log.stop()
    assert _rows_in(settings.prediction_log) == list(after.request_ids)


def test_feedback_on_a_prediction_counts_and_an_unknown_id_is_refused(
    settings: Settings,
) -> None:
    core = MonitorCore(settings, "tiny-feedback", "1", profile())
    batch = traffic(1, 3, prefix="fb")
    core.handle(batch)
    predicted = int(batch.probabilities[1].argmax())
    right = core.handle(GiveFeedback(1, batch.request_ids[1], predicted))
    wrong = core.handle(GiveFeedback(2, batch.request_ids[2], (predicted + 1) % 10))
    unknown = core.handle(GiveFeedback(3, "never-predicted", 4))
    assert isinstance(right, FeedbackReply) and right.answer is not None
    assert right.answer["correct"] is True and right.answer["predicted"] == predicted
    assert isinstance(wrong, FeedbackReply) and wrong.answer is not None
    assert wrong.answer["live_accuracy"] == 0.5
    assert unknown == FeedbackReply(3, error=FEEDBACK_UNKNOWN)
    assert "mnistops_live_accuracy 0.5" in _status(core).metrics_text.decode()


@dataclass
class SharedHub:
    """A shared monitor's hub on a Unix socket, run in a thread."""

    owner: Connection
    """The end of the process that started it (it says Stop)."""
    path: str
    core: MonitorCore
    listener: Listener
    loop: threading.Thread

    def stop(self) -> None:
        if self.loop.is_alive():
            self.owner.send(Stop())
            self.loop.join(10)
            self.listener.close()
        assert not self.loop.is_alive()


@pytest.fixture
def hub(settings: Settings, tmp_path: Path) -> Iterator[SharedHub]:
    path = str(tmp_path / "monitor.sock")
    core = MonitorCore(settings, "tiny-hub", "1", profile())
    owner, theirs = multiprocessing.get_context("spawn").Pipe()
    listener = Listener(path, "AF_UNIX", authkey=KEY)
    loop = threading.Thread(target=Hub(core, theirs, listener).run, daemon=True)
    loop.start()
    shared = SharedHub(owner, path, core, listener, loop)
    yield shared
    shared.stop()


def _worker(path: str) -> Connection:
    return Client(path, "AF_UNIX", authkey=KEY)


def test_the_shared_monitor_sees_every_workers_predictions(
    hub: SharedHub,
) -> None:
    path = hub.path
    first, second = _worker(path), _worker(path)
    first.send(traffic(1, 30, prefix="a"))
    first.send(StatusRequest(seq=1))
    assert first.recv().drift["observed"] == 30
    second.send(traffic(2, 20, prefix="b"))
    second.send(StatusRequest(seq=2))
    reply = second.recv()
    assert reply.seq == 2 and reply.drift["observed"] == 50
    assert _predicted(reply.metrics_text.decode(), "tiny-hub") == 50


def test_feedback_waits_for_the_worker_that_made_the_prediction(
    hub: SharedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "FEEDBACK_WAIT_S", 0.3)
    path = hub.path
    predicting, asking = _worker(path), _worker(path)
    batch = traffic(3, 2, prefix="late")
    asking.send(GiveFeedback(7, batch.request_ids[0], 1))
    assert not asking.poll(0.1)  # not refused: that prediction may still be on its way
    predicting.send(batch)
    reply = asking.recv()
    assert reply.seq == 7 and reply.answer is not None, reply
    asking.send(GiveFeedback(8, "never-predicted", 1))
    assert asking.poll(5) and asking.recv() == FeedbackReply(8, error=FEEDBACK_UNKNOWN)


def test_a_worker_that_goes_leaves_the_shared_monitor_running(
    hub: SharedHub,
) -> None:
    path = hub.path
    gone = _worker(path)
    gone.send(traffic(1, 10, prefix="gone"))
    gone.close()
    staying = _worker(path)
    staying.send(StatusRequest(seq=3))
    assert staying.poll(5) and staying.recv().drift["observed"] == 10


def test_stop_first_takes_what_the_workers_sent(hub: SharedHub) -> None:
    sender = _worker(hub.path)
    sender.send(StatusRequest(seq=1))  # connected and heard
    assert sender.poll(5)
    sender.recv()
    sender.send(traffic(5, 40, prefix="last"))
    sender.close()
    hub.stop()
    assert hub.core.drift.in_window == 40


def test_accuracy_is_estimated_over_the_window_when_the_version_is_calibrated(
    settings: Settings,
) -> None:
    from mnistops.calibration import calibrate

    reference = profile()
    calibration = calibrate(reference.probabilities, reference.labels)
    core = MonitorCore(settings, "tiny-estimate", "1", reference, calibration)
    assert core.drift_status()["estimated_accuracy"] is None
    for seed in range(1, 5):  # 400 predictions, more than the window of 200
        core.handle(traffic(seed, EVERY, prefix=f"e{seed}"))
    assert core._in_window >= WINDOW and core._in_window < WINDOW + EVERY
    estimate = core.drift_status()["estimated_accuracy"]
    last = np.concatenate([traffic(s, EVERY, prefix="x").probabilities for s in (3, 4)])
    assert estimate == pytest.approx(calibration.estimate_accuracy(last))
    text = _status(core).metrics_text.decode()
    assert f'mnistops_estimated_accuracy{{model="tiny-estimate",version="1"}} {estimate}' in text
    uncalibrated = MonitorCore(settings, "tiny-no-estimate", "1", reference)
    uncalibrated.handle(traffic(1, EVERY))
    assert uncalibrated.drift_status()["estimated_accuracy"] is None
