"""Routes of the service's own API: predict, admin reload, metrics, the page."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from mnistops.serve import schemas
from mnistops.serve.http import (
    ERROR_RESPONSES,
    JSON,
    REQUEST_ID_HEADER,
    check_admin,
    json_response,
    new_request_id,
    page,
)
from mnistops.serve.inputs import ACCEPTED_BODIES, MULTIPART, UPLOAD_FIELD, predict_pixels
from mnistops.serve.runtime import Runtime, RuntimeDep

router = APIRouter()

MONITORING_OFF = "# monitoring is off (MNISTOPS_MONITORING=false)\n"
_BINARY = {"type": "string", "format": "binary"}
_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"One of: {ACCEPTED_BODIES}.",
        "content": {
            JSON: {"schema": schemas.request_schema(schemas.PredictRequest)},
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {UPLOAD_FIELD: _BINARY},
                    "required": [UPLOAD_FIELD],
                }
            },
            "image/png": {"schema": _BINARY},
            "image/jpeg": {"schema": _BINARY},
        },
    }
}


def _prediction(probs: np.ndarray, is_digit: bool) -> dict[str, Any]:
    digit = int(probs.argmax())
    return {
        "digit": digit,
        "confidence": float(probs[digit]),
        "probabilities": [round(float(p), 6) for p in probs],
        "is_digit": bool(is_digit),
    }


@router.post(
    "/predict",
    response_model=schemas.PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_PREDICT_BODY,
    summary="Recognise a digit from pixels (JSON) or an image (PNG/JPEG upload or raw body)",
)
async def predict(request: Request) -> Response:
    # the runtime straight from app.state: a FastAPI dependency costs ~7 % of this route
    runtime: Runtime = request.app.state.runtime
    request_id = new_request_id()
    pixels = await predict_pixels(request, runtime.settings)
    predictor, (probs, digits) = await runtime.predict(pixels, request_id)
    answer = _prediction(probs[0], digits[0])
    answer.update(model_name=predictor.name, model_version=predictor.version, request_id=request_id)
    if len(probs) > 1:
        answer["predictions"] = [_prediction(p, d) for p, d in zip(probs, digits, strict=True)]
    return json_response(answer, request_id=request_id)


@router.post(
    "/admin/reload",
    dependencies=[Depends(check_admin)],
    responses={401: {}, 403: {}, 404: {}},
    summary="Resolve the model URI again and hot-swap a new version in",
)
async def reload(runtime: RuntimeDep) -> Response:
    changed, message = await asyncio.to_thread(runtime.slot.reload)
    if runtime.relay_reload is not None:  # one of several workers: every one reloads
        runtime.relay_reload()
    return json_response(
        {"changed": changed, "message": message, "model_version": runtime.slot.current.version}
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    if runtime.monitor is None:
        return Response(MONITORING_OFF, media_type="text/plain")
    body = await runtime.monitor.in_thread(runtime.monitor.render_metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return page()


@router.get("/noop", include_in_schema=False)
@router.post("/noop", include_in_schema=False)
async def noop(request: Request) -> Response:
    """Reads the body and answers: the ceiling a route of this server can reach (benchmark)."""
    await request.body()
    return Response(b"{}", media_type=JSON, headers={REQUEST_ID_HEADER: "noop"})
