"""Retraining on drift: the served model's verdict, feedback-labelled logged images, a new
candidate registered behind the quality gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import sqlalchemy as sa

from mnistops.config import Settings
from mnistops.errors import ServiceUnavailableError
from mnistops.features import IMAGE_SIDE
from mnistops.monitor.predlog import feedback, make_engine, predictions

if TYPE_CHECKING:  # the training stack is imported only when a candidate is trained
    from mnistops.train import TrainParams, TrainResult


def drift_verdict(url: str, token: str | None = None) -> dict[str, Any]:
    """The running service's GET /monitoring/drift answer (sent with ``token`` as a bearer
    token when given: a private Cloud Run service wants an ID token).

    Raises:
        ServiceUnavailableError: no mnistops service answers at ``url``, or it refuses.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + "/monitoring/drift", timeout=30, headers=headers)
        response.raise_for_status()
        verdict: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ServiceUnavailableError(url, exc) from exc
    return verdict


def labelled_images(log_url: str) -> tuple[np.ndarray, np.ndarray]:
    """Logged 28x28 inputs that received a true label through /feedback."""
    engine = make_engine(log_url)
    query = (
        sa.select(predictions.c.image, feedback.c.label)
        .select_from(predictions.join(feedback, feedback.c.request_id == predictions.c.request_id))
        .where(predictions.c.image.is_not(None))
    )
    try:
        with engine.connect() as db:
            rows = db.execute(query).all()
    except sa.exc.OperationalError:
        rows = []  # no log yet: nothing labelled
    finally:
        engine.dispose()
    if not rows:
        return np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8), np.zeros(0, np.uint8)
    images = np.stack(
        [np.frombuffer(r.image, np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE) for r in rows]
    )
    return images, np.array([r.label for r in rows], dtype=np.uint8)


def retrain(
    settings: Settings,
    *,
    url: str | None,
    force: bool,
    params: TrainParams,
    log: Callable[[str], None] = print,
) -> TrainResult | None:
    """Train a candidate when the service reports drift (or when forced).

    Returns the TrainResult, or None when there was no reason to retrain.
    """
    from mnistops.train import train

    if not force:
        if url is None:
            raise ValueError(
                "give --url of the running service to ask for its drift verdict, or --force"
            )
        verdict = drift_verdict(url, settings.service_token)
        if not verdict.get("drift"):
            version = verdict.get("model_version")
            log(f"no drift reported by {url} (version {version}): nothing to do")
            return None
        log(f"{url} reports drift on version {verdict.get('model_version')}: retraining")
    images, labels = labelled_images(settings.prediction_log)
    log(f"adding {len(images)} feedback-labelled images from the prediction log")
    tags = {"trigger": "forced" if force else "drift", "feedback_images": str(len(images))}
    extra = (images, labels) if len(images) else None
    return train(settings, params, extra_train=extra, tags=tags, log=log)
