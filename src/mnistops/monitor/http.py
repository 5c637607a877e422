"""The monitoring routes: the drift verdict and feedback (true labels).

The routes do HTTP only; the monitor they are handed does the work, in a worker thread
(a status question or feedback waits for the monitor process, which stores the label).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from mnistops.auth import check_bearer
from mnistops.config import Settings
from mnistops.errors import AlreadyLabelledError, MonitorUnavailableError
from mnistops.ids import issued_at
from mnistops.pages import html_page

JSON = "application/json"
PAGE = Path(__file__).with_name("static") / "monitor.html"
TAG = "monitoring"
T = TypeVar("T")


class DriftAndFeedback(Protocol):
    """What the routes need of a monitor (``service.Monitor`` is one)."""

    def drift_status(self) -> dict[str, Any]: ...

    def summary(self) -> dict[str, Any]: ...

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]: ...

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T: ...


@functools.cache
def _page_html() -> str:
    return PAGE.read_text(encoding="utf-8")


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction."""

    request_id: str = Field(min_length=1, max_length=80, description="From the prediction.")
    label: int = Field(ge=0, le=9, description="The digit actually written.")


def monitor_router(monitor: DriftAndFeedback, settings: Settings) -> APIRouter:
    """GET /monitoring/drift and POST /feedback, answered by ``monitor``.

    Feedback is taken once per prediction, for ids this service issued (the X-Request-ID
    of the prediction, or its ``request_id``), at most ``feedback_max_age_s`` old, and
    with ``feedback_token`` when one is set. Ids that are not this service's, or too old,
    are refused at the edge: they never reach the monitor process or the database.
    """
    router = APIRouter(tags=[TAG])

    async def check_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if settings.feedback_token:
            check_bearer(authorization, settings.feedback_token, "feedback")

    @router.get("/monitoring", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        """The live monitoring page (no external assets; it polls /monitoring/summary)."""
        return html_page(_page_html())

    @router.get("/monitoring/summary")
    async def summary() -> Response:
        """What the live page shows: totals so far (requests, errors, latency histogram,
        CPU, memory, predictions by digit, confidence, feedback), the drift verdict and
        the reference digit shares."""
        answer = await monitor.in_thread(monitor.summary)
        return Response(orjson.dumps(answer), media_type=JSON)

    @router.get("/monitoring/drift")
    async def drift() -> Response:
        """The drift verdict, and each test's score, effect and window, since the previous one."""
        status = await monitor.in_thread(monitor.drift_status)
        return Response(orjson.dumps(status), media_type=JSON)

    @router.post(
        "/feedback",
        dependencies=[Depends(check_token)],
        responses={401: {}, 403: {}, 404: {}, 409: {}, 410: {}, 422: {}, 503: {}},
    )
    async def give_feedback(body: FeedbackRequest) -> Response:
        """Record the true label of an earlier prediction (by its request id), once."""
        unknown = (
            f"no prediction with request_id {body.request_id!r}: send the X-Request-ID "
            "(or request_id) this service answered the prediction with"
        )
        issued = issued_at(body.request_id)
        if issued is None:
            raise HTTPException(404, unknown)
        age = time.time() - issued
        if age > settings.feedback_max_age_s:
            raise HTTPException(
                410,
                f"the prediction is {age:.0f} s old; feedback is taken within "
                f"{settings.feedback_max_age_s:.0f} s (MNISTOPS_FEEDBACK_MAX_AGE_S)",
            )
        try:
            answer = await monitor.in_thread(monitor.record_feedback, body.request_id, body.label)
        except KeyError as exc:
            raise HTTPException(404, unknown) from exc
        except AlreadyLabelledError as exc:
            raise HTTPException(409, f"{exc}: one label per prediction") from exc
        except MonitorUnavailableError as exc:
            raise HTTPException(
                503, "the prediction log store is unavailable; send the feedback again later"
            ) from exc
        return Response(orjson.dumps(answer), media_type=JSON)

    return router
