"""The monitoring routes in process (httpx's ASGITransport), around a small monitor with
real feedback on SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from mnistops.config import Settings
from mnistops.errors import MonitorUnavailableError
from mnistops.ids import new_request_id
from mnistops.monitor.feedback import Feedback
from mnistops.monitor.http import DriftAndFeedback, monitor_router
from mnistops.monitor.predlog import FeedbackStore, make_engine, meta, now, predictions

pytestmark = pytest.mark.unit
real_time = time.time
T = TypeVar("T")
DRIFT = {"checked": True, "drift": False, "threshold": 5e-5, "tests": {}}


class SmallMonitor:
    """What the routes ask of a monitor: a fixed drift verdict, real feedback."""

    def __init__(self, feedback: Feedback) -> None:
        self.feedback = feedback

    def drift_status(self) -> dict[str, Any]:
        return DRIFT

    def summary(self) -> dict[str, Any]:
        return {"drift": DRIFT}

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        try:
            return self.feedback.record(request_id, label)
        except SQLAlchemyError as exc:  # as the monitor process answers it
            raise MonitorUnavailableError(str(exc)) from exc

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture
def feedback(log_url: str) -> Iterator[Feedback]:
    store = FeedbackStore(log_url)
    yield Feedback(store)
    store.close()


def _call(
    monitor: DriftAndFeedback | Feedback,
    method: str,
    path: str,
    body: object = None,
    settings: Settings | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """``method path`` on the monitoring routes around ``monitor`` (a small monitor
    around real feedback, given a ``Feedback``), in process."""
    if isinstance(monitor, Feedback):
        monitor = SmallMonitor(monitor)
    app = FastAPI()
    app.include_router(monitor_router(monitor, settings or Settings()))

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
            return await client.request(method, path, json=body, headers=headers)

    return asyncio.run(go())


def _one_hot(digit: int) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[[digit]]


def test_drift_answers_the_monitors_status_as_json(feedback: Feedback) -> None:
    response = _call(feedback, "GET", "/monitoring/drift")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == DRIFT


def test_feedback_on_a_recent_prediction_updates_live_accuracy(feedback: Feedback) -> None:
    right, wrong = new_request_id(), new_request_id()
    feedback.remember([right], _one_hot(3))
    feedback.remember([wrong], _one_hot(4))
    first = _call(feedback, "POST", "/feedback", {"request_id": right, "label": 3}).json()
    assert first["correct"] is True and first["live_accuracy"] == 1.0
    second = _call(feedback, "POST", "/feedback", {"request_id": wrong, "label": 9}).json()
    assert second == {
        "request_id": wrong,
        "predicted": 4,
        "label": 9,
        "correct": False,
        "live_accuracy": 0.5,
        "feedback_count": 2,
    }


def test_feedback_on_an_older_prediction_is_looked_up_in_the_log(
    feedback: Feedback, log_url: str
) -> None:
    engine = make_engine(log_url)
    meta.create_all(engine)
    old = new_request_id()
    row = {"ts": now(), "request_id": old, "model_version": "1", "label": 7}
    row |= {"confidence": 0.9, "latency_ms": 1.0, "probabilities": [], "features": {}}
    with engine.begin() as db:
        db.execute(predictions.insert(), [row])
    engine.dispose()
    answer = _call(feedback, "POST", "/feedback", {"request_id": old, "label": 7}).json()
    assert answer["predicted"] == 7 and answer["correct"] is True


def test_feedback_on_an_unknown_request_is_404_naming_it(feedback: Feedback) -> None:
    unknown = new_request_id()
    response = _call(feedback, "POST", "/feedback", {"request_id": unknown, "label": 1})
    assert response.status_code == 404
    assert response.json()["detail"].startswith(f"no prediction with request_id {unknown!r}")


class Untouchable:
    """A monitor that must not be asked: the edge refuses first."""

    def drift_status(self) -> dict[str, Any]:
        raise AssertionError("asked")

    def summary(self) -> dict[str, Any]:
        raise AssertionError("asked")

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        raise AssertionError(f"asked about {request_id!r}")

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)


def _untouched(body: object, settings: Settings) -> httpx.Response:
    return _call(Untouchable(), "POST", "/feedback", body, settings)


@pytest.mark.parametrize(
    "foreign",
    ["nope", "digits-7", "0" * 31, "g" * 32, f"{'a' * 32}-x", f"{'a' * 32} "],
)
def test_an_id_this_service_never_issues_is_refused_at_the_edge(foreign: str) -> None:
    response = _untouched({"request_id": foreign, "label": 1}, Settings())
    assert response.status_code == 404 and "X-Request-ID" in response.json()["detail"]


def test_feedback_on_a_prediction_past_the_age_limit_is_410(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issued = new_request_id()
    monkeypatch.setattr(time, "time", lambda: real_time() + 3601)
    response = _untouched({"request_id": issued, "label": 1}, Settings(feedback_max_age_s=3600))
    assert response.status_code == 410 and "within 3600 s" in response.json()["detail"]


def test_a_second_label_for_the_same_prediction_is_409_and_not_stored(
    feedback: Feedback,
) -> None:
    issued = new_request_id()
    feedback.remember([issued], _one_hot(2))
    assert _call(feedback, "POST", "/feedback", {"request_id": issued, "label": 2}).is_success
    again = _call(feedback, "POST", "/feedback", {"request_id": issued, "label": 5})
    assert again.status_code == 409 and "one label per prediction" in again.json()["detail"]
    fresh = Feedback(feedback.store)  # a restarted monitor: the store says it is labelled
    fresh.remember([issued], _one_hot(2))
    assert _call(fresh, "POST", "/feedback", {"request_id": issued, "label": 5}).status_code == 409


def test_with_a_feedback_token_set_feedback_needs_it(feedback: Feedback) -> None:
    settings = Settings(feedback_token="fb-secret")
    issued = new_request_id()
    feedback.remember([issued], _one_hot(1))
    body = {"request_id": issued, "label": 1}
    assert _call(feedback, "POST", "/feedback", body, settings).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert _call(feedback, "POST", "/feedback", body, settings, wrong).status_code == 403
    right = {"Authorization": "Bearer fb-secret"}
    assert _call(feedback, "POST", "/feedback", body, settings, right).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"request_id": "r", "label": 10}, {"request_id": "", "label": 1}, {"label": 1}],
    ids=["label-above-9", "empty-id", "no-id"],
)
def test_feedback_outside_the_schema_is_422(feedback: Feedback, body: object) -> None:
    assert _call(feedback, "POST", "/feedback", body).status_code == 422


def test_feedback_while_the_log_store_is_down_is_503(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # no folder can be made there
    store = FeedbackStore(f"sqlite:///{tmp_path / 'a-file' / 'predictions.db'}")
    body = {"request_id": new_request_id(), "label": 1}
    response = _call(Feedback(store), "POST", "/feedback", body)
    store.close()
    assert response.status_code == 503
    assert "send the feedback again later" in response.json()["detail"]


def test_the_monitoring_page_is_served_whole_and_its_summary_is_json(feedback: Feedback) -> None:
    page = _call(feedback, "GET", "/monitoring")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        'fetch("monitoring/summary")' in page.text and "http" not in page.text.split("<script>")[1]
    )
    summary = _call(feedback, "GET", "/monitoring/summary")
    assert summary.status_code == 200 and summary.json() == {"drift": DRIFT}
