"""Talking to MLflow: point the client at the configured store, keep an outage short, and
tell an unreachable store from a missing model, version or alias.

MLflow is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mnistops.config import Settings
from mnistops.errors import MnistopsError, first_line, redacted

SERVER_SCHEMES = ("http://", "https://", "databricks")
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
"""MLflow's client retries for minutes by default; a command should say the server is down."""
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
_REASONS = (
    re.compile(r"\[Errno -?\d+\] [^'\")>]+"),  # refused, unknown host: the OS's words
    re.compile(r"too many \d{3} error responses"),  # the server kept failing
    re.compile(r"error code \d{3}"),  # something answered, but not as MLflow does
    re.compile(r"timed out"),
)


class TrackingUnavailableError(MnistopsError):
    """The MLflow tracking server or store cannot be reached, or fails."""

    http_status = 503

    def __init__(self, uri: str, cause: BaseException) -> None:
        served = uri.startswith(SERVER_SCHEMES)
        what = "tracking server" if served else "tracking store"
        todo = "start it" if served else "check it"
        super().__init__(
            f"MLflow {what} {redacted(uri)} is unreachable or failing ({_reason(cause)}); "
            f"{todo}, or point MLFLOW_TRACKING_URI at a working one"
        )


def _reason(exc: BaseException) -> str:
    """The gist of a failed MLflow call, which MLflow buries in a long message."""
    text = str(exc)
    for pattern in _REASONS:
        match = pattern.search(text)
        if match:
            return match.group(0)
    return first_line(exc)[:200]


def setup_mlflow(settings: Settings) -> Any:
    """Point MLflow at the configured store and return a client.

    Raises:
        TrackingUnavailableError: a database store cannot be opened.
    """
    import mlflow
    from mlflow import MlflowClient

    if settings.tracking_uri is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        # creating the embedded store on first use is routine, not something to report
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    for variable, limit in _HTTP_LIMITS.items():
        os.environ.setdefault(variable, limit)
    for uri in {settings.mlflow_tracking_uri, registry_uri(settings)}:
        probe(uri)
    # MLflow also writes these URIs into os.environ, where the next Settings() would read
    # them as configuration: keep the environment as the user set it.
    saved = {k: os.environ.get(k) for k in _MLFLOW_ENV}
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(registry_uri(settings))
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    with tracking(settings.mlflow_tracking_uri):
        return MlflowClient()  # opens (and migrates) a database store at once


PROBE_TIMEOUT_S = 3.0
_probed: set[str] = set()


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Once per process, make sure a tracking server at ``uri`` answers at all (its
    ``/health``), within ``timeout``, with no retries: MLflow's own calls retry with
    back-off, right for a blip mid-run but 20 s of silence before saying a server is down
    or hung. Any HTTP answer will do (authentication and the rest are MLflow's to judge).

    Raises:
        TrackingUnavailableError: no connection, or no answer within ``timeout``.
    """
    if not uri.startswith(("http://", "https://")) or uri in _probed:
        return
    parts = urllib.parse.urlsplit(uri)
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])  # any user:password@ off
    health = urllib.parse.urlunsplit(bare).rstrip("/") + "/health"
    try:  # bandit B310 waived: the scheme was checked to be http or https above
        urllib.request.urlopen(health, timeout=timeout).close()  # nosec B310
    except urllib.error.HTTPError:
        pass  # it answered
    except (OSError, ValueError) as exc:  # refused, unknown host, timed out, a bad URL
        raise TrackingUnavailableError(uri, exc) from exc
    _probed.add(uri)


def registry_uri(settings: Settings) -> str:
    """The model registry's URI in force: configured, or the tracking URI."""
    return settings.registry_uri or settings.mlflow_tracking_uri


def _store_failures() -> tuple[type[Exception], ...]:
    """What MLflow raises when its store fails: its own errors, the network's, the database's."""
    from mlflow.exceptions import MlflowException

    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # mlflow-skinny talking to a server needs no database driver
        return (MlflowException, OSError)
    return (MlflowException, OSError, SQLAlchemyError)


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    """Report a failing MLflow call as TrackingUnavailableError, naming the store at ``uri``."""
    failures = _store_failures()
    try:
        yield
    except failures as exc:
        raise TrackingUnavailableError(uri, exc) from exc


def existing(settings: Settings, lookup: Callable[[], Any]) -> Any | None:
    """What a registry lookup returns, or None when MLflow says there is no such thing.

    Raises:
        TrackingUnavailableError: the registry failed for any other reason.
    """
    from mlflow.exceptions import MlflowException

    with tracking(registry_uri(settings)):
        try:
            return lookup()
        except MlflowException as exc:
            if exc.error_code not in _NOT_FOUND:
                raise
    return None
