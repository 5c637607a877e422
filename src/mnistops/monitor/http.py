"""The monitoring routes: the drift verdict and feedback (true labels).

The routes do HTTP only; the monitor they are handed does the work, in a worker thread
(a status question or feedback waits for the monitor process, which stores the label).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mnistops.errors import MonitorUnavailableError

JSON = "application/json"
TAG = "monitoring"


class DriftAndFeedback(Protocol):
    """What the routes need of a monitor (``service.Monitor`` is one)."""

    def drift_status(self) -> dict[str, Any]: ...

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]: ...


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction."""

    request_id: str = Field(min_length=1, max_length=80, description="From the prediction.")
    label: int = Field(ge=0, le=9, description="The digit actually written.")


def monitor_router(monitor: DriftAndFeedback) -> APIRouter:
    """GET /monitoring/drift and POST /feedback, answered by ``monitor``."""
    router = APIRouter(tags=[TAG])

    @router.get("/monitoring/drift")
    async def drift() -> Response:
        """The drift verdict, and each test's statistic and p-value, at the last check."""
        status = await asyncio.to_thread(monitor.drift_status)
        return Response(orjson.dumps(status), media_type=JSON)

    @router.post("/feedback", responses={404: {}, 422: {}})
    async def give_feedback(body: FeedbackRequest) -> Response:
        """Record the true label of an earlier prediction (by its request id)."""
        try:
            answer = await asyncio.to_thread(monitor.record_feedback, body.request_id, body.label)
        except KeyError as exc:
            raise HTTPException(404, f"no prediction with request_id {body.request_id!r}") from exc
        except MonitorUnavailableError as exc:
            raise HTTPException(
                503, "the prediction log store is unavailable; send the feedback again later"
            ) from exc
        return Response(orjson.dumps(answer), media_type=JSON)

    return router
