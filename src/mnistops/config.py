"""Settings for every stage, read once at the edge from MNISTOPS_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(".mnistops")
REGISTERED_MODEL = "mnist-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"


class Settings(BaseSettings):
    """Everything mnistops can be told; `MNISTOPS_<FIELD>` sets a field."""

    model_config = SettingsConfigDict(env_prefix="MNISTOPS_", extra="ignore", populate_by_name=True)

    # --- state -----------------------------------------------------------
    home: Path = DEFAULT_HOME
    """State folder: data cache, MLflow store, checkpoints, prediction log."""
    tracking_uri: str | None = Field(default=None, validation_alias="MLFLOW_TRACKING_URI")
    """MLflow tracking URI; default SQLite under `home` (artifacts on disk beside it)."""
    registry_uri: str | None = Field(default=None, validation_alias="MLFLOW_REGISTRY_URI")
    """MLflow registry URI; default the tracking URI."""
    mnist_dir: Path | None = None
    """A local folder holding MNIST as IDX .gz files or a Keras-style mnist.npz."""
    fashion_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    """Folder holding the Fashion-MNIST IDX .gz files (Debian package dataset-fashion-mnist)."""

    # --- training and registry ---------------------------------------------
    experiment: str = "mnist"
    """MLflow experiment that training runs are logged to."""
    registered_model: str = REGISTERED_MODEL
    """Name of the registered model every run adds a version to."""
    accuracy_floor: float = Field(default=0.97, ge=0.0, le=1.0)
    """The quality gate: a version below this test accuracy never becomes champion."""
    challenger: bool = True
    """`mnistops run` trains the fast recipe beside a weaker champion it serves, and the
    server hot-swaps it in once the gate promotes it."""

    # --- serving -----------------------------------------------------------
    model_uri: str = DEFAULT_MODEL_URI
    """What `serve` loads: models:/NAME@ALIAS, models:/NAME/VERSION or a local folder."""
    host: str = "127.0.0.1"
    """Address the server binds to."""
    port: int = Field(default=8000, validation_alias=AliasChoices("MNISTOPS_PORT", "PORT"))
    """Port the server listens on (MNISTOPS_PORT, or PORT as Cloud Run sets it)."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC, on ``host`` (8001, as Triton's; 0
    turns gRPC off)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted on any route, with a Content-Length or chunked (413
    above; an over-limit body of up to four times this is read and discarded first, so
    that a client that sends its whole body before reading sees the 413)."""
    max_header_bytes: int = Field(default=32 << 10, ge=1024)
    """Largest request line and headers together (431 and the connection closed above)."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """How long a connection may take to send a request's line and headers, counted from
    the connection's opening or the end of its previous answer: an idle keep-alive
    connection is then closed, a half-sent head is answered 408 (slow or idle clients
    cannot hold the descriptors)."""
    body_timeout_s: float = Field(default=10.0, gt=0)
    """Longest pause while a request's body arrives; past it the request is answered 408."""
    max_in_flight: int = Field(default=128, ge=0)
    """Requests answered at once, waiting for the model included; past it a request gets
    503 with Retry-After at once (load shedding). Health and /metrics are never shed; 0
    turns shedding off. Two full batches queued: about 20 ms of work on 2 cores. Under a
    flood at c=256 it kept 90 % of the throughput (64 kept 60 %: answering 503s costs)."""
    max_connections: int = Field(default=4096, ge=1)
    """Open connections the server keeps (uvicorn's limit_concurrency); past it every
    request is answered 503 and its connection closed: a backstop for descriptors."""
    max_batch_images: int = 256
    """Most images one request may carry."""
    max_image_pixels: int = 2048 * 2048
    """Largest image decoded, in pixels (413 above, checked before decoding): a digit
    needs 28x28. A JPEG is decoded at a reduced scale first, so a phone photo fits."""
    batching: bool = True
    """Gather concurrent requests into one onnxruntime call."""
    batch_max_size: int = 64
    """Most images in one gathered onnxruntime call."""
    batch_max_wait_ms: float = 0.0
    """How long a batch lingers for stragglers (0: take what is queued and go)."""
    intra_op_threads: int = 1
    """onnxruntime threads per inference call."""
    precision: Literal["fp32", "int8"] = "fp32"
    """Which of a version's ONNX models serving runs: the float one, or its statically
    quantised INT8 copy (``model.int8.onnx``; a version without one is refused)."""
    admin_token: str | None = None
    """Bearer token for /admin routes; the routes are off when unset."""
    reload_interval_s: float = 30.0
    """How often the registry is polled for a moved alias (0 turns polling off)."""
    grace_period_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""
    workers: int = Field(default=1, ge=1, le=256)
    """Server processes on the one port (each with its own model and event loop; one
    monitor process for all). ``max_in_flight`` and ``max_connections`` are per worker."""

    # --- monitoring --------------------------------------------------------
    monitoring: bool = True
    """Metrics, drift detection and the prediction log (off only to measure their cost)."""
    drift_window: int = 500
    """The accuracy estimate's window: about this many recent predictions."""
    drift_ert: int = Field(default=1_000_000, gt=20_000)
    """Expected run time between false drift alarms, in predictions, for traffic like the
    held-out data: the detector's threshold is set from the calibration stored with the
    version (one false alarm per million predictions by default)."""
    drift_check_every: int = 50
    """Publish the drift verdict and its evidence after this many new predictions (every
    prediction is scored; an alarm's onset is published at once)."""
    drift_min_interval_s: float = 1.0
    """At most one published verdict per this many seconds, however busy the service is
    (an alarm's onset is published at once)."""
    feedback_max_age_s: float = Field(default=7 * 24 * 3600, gt=0)
    """Feedback is taken for predictions at most this old (a week); older ones get 410."""
    service_token: str | None = None
    """Bearer token that commands asking a running service send (``mnistops retrain``):
    for a private Cloud Run service, an ID token whose audience is its URL."""
    feedback_token: str | None = None
    """Bearer token that POST /feedback requires when set (open when unset, as the draw
    page sends feedback without one)."""
    low_confidence: float = 0.6
    """Predictions less confident than this are counted as low-confidence."""
    prediction_log_url: str | None = None
    """SQLAlchemy URL of the prediction log; default SQLite under `home`."""
    prediction_log_images: bool = True
    """Store the 28x28 input (784 bytes) with logged predictions."""
    prediction_log_image_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of logged predictions whose image is stored, picked at random (retraining
    learns from the feedback-labelled ones that have their image: a lower rate costs the
    log less and leaves fewer of them)."""
    prediction_log_queue: int = 10_000
    """Bounded queue between requests and the log writer; overflow is dropped and counted."""

    @model_validator(mode="after")
    def _absolute_home(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        return self

    @property
    def data_dir(self) -> Path:
        """Cache of verified datasets."""
        return self.home / "data"

    @property
    def checkpoint_dir(self) -> Path:
        """Per-run training checkpoints, for resuming."""
        return self.home / "checkpoints"

    @property
    def models_dir(self) -> Path:
        """Local copies of registered model versions, resolved for serving."""
        return self.home / "models"

    @property
    def mlflow_tracking_uri(self) -> str:
        """The tracking URI in force: configured, or SQLite under `home`."""
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        """Where a new experiment keeps artifacts in the embedded store."""
        return (self.home / "mlartifacts").as_uri()

    @property
    def prediction_log(self) -> str:
        """The prediction-log URL in force."""
        return self.prediction_log_url or f"sqlite:///{self.home / 'predictions.db'}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, then apply explicit overrides."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)  # type: ignore[arg-type]


def shown_default(name: str) -> str:
    """A setting's default as ``--help`` shows it: the variables that set it, then its value."""
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        variables = [str(choice) for choice in alias.choices]
    else:
        variables = [str(alias or f"MNISTOPS_{name.upper()}")]
    return f"{' or '.join(variables)}, else {field.default}"


def environment_has(name: str) -> bool:
    """True when an environment variable is set and non-empty."""
    return bool(os.environ.get(name))
