"""What each benchmark suite measured: the typed results that bench/report.py renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.load import Load

if TYPE_CHECKING:
    from bench.scoring import ScoringResult

# The servers of the serving suite, and its variants of mnistops: keys of ServingResult.
MNISTOPS = "mnistops"
NOOP_ROUTE = "no-op route"
LAB_FLASK = "lab Flask app"
MLFLOW_SERVE = "mlflow models serve"
DEFAULTS = "defaults"
BATCHING_OFF = "batching off"
MONITORING_OFF = "monitoring off"

# The servers of the peers suite (mnistops is MNISTOPS), and the requests it sends them.
MLSERVER = "MLServer"
BENTOML = "BentoML"
LITSERVE = "LitServe"
BARE_APP = "bare FastAPI app"
PEER_FRAMEWORKS = (MLSERVER, BENTOML, LITSERVE)
"""The serving frameworks that "the best peer" is chosen among (the bare app is a baseline)."""
PREDICT_JSON = "/predict JSON"
V2_BINARY = "v2 infer, binary tensor"
V2_JSON = "v2 infer, JSON"


@dataclass(frozen=True)
class TrainRun:
    fit_seconds: float
    """The sum of the epochs' wall times."""
    test_accuracy: float
    wall_seconds: float
    """The whole process: imports, and for mnistops logging, export and registration too."""


@dataclass(frozen=True)
class TrainingResult:
    reps: int
    lab: TrainRun
    """Medians of the lab's script."""
    ours: TrainRun
    """Medians of ``mnistops train --model mlp``."""
    recipes: dict[str, TrainRun] = field(default_factory=dict)
    """Medians of ``mnistops train --model NAME`` for the other recipes (fast, cnn)."""


@dataclass(frozen=True)
class Startup:
    ready_s: float
    """Exec-to-ready: from starting the process to its first answered prediction."""
    rss_mb: float
    """Resident memory of the server and its children after the load."""


@dataclass(frozen=True)
class ServingResult:
    loads: dict[str, dict[int, Load]]
    """By server (mnistops, no-op route, lab Flask app, mlflow models serve), by concurrency."""
    startup: dict[str, Startup]
    """By server, the no-op route aside (it is mnistops)."""
    ready_starts: int
    """How many starts the mnistops exec-to-ready is the median of."""
    paced_target_rps: float
    """Half of mnistops' best throughput: the rate asked of the paced run."""
    paced: Load
    variants: dict[str, dict[int, Load]]
    """Batching and monitoring on and off: medians by variant, by concurrency."""


@dataclass(frozen=True)
class PeerServer:
    """One server of the peers suite: how it ran, and what it measured."""

    configuration: str
    """What ran and how, in the report's words: versions, runtime, batching, processes."""
    json_request: str
    """The key in ``loads`` of its JSON request for one image (MLServer's is v2 JSON)."""
    loads: dict[str, dict[int, Load]] = field(default_factory=dict)
    """Medians over the rounds, by request (:data:`PREDICT_JSON`, ...), by concurrency."""
    startup: Startup | None = None
    """Medians over the rounds."""
    failure: str | None = None
    """Why it, or one of its requests, was not measured: the error line."""

    @property
    def json_loads(self) -> dict[int, Load] | None:
        """Its JSON request's loads, by concurrency; None if that was not measured."""
        return self.loads.get(self.json_request)


@dataclass(frozen=True)
class PeersResult:
    repeats: int
    """Interleaved rounds: each server started afresh in each, the figures their medians."""
    servers: dict[str, PeerServer]
    """mnistops first, then MLServer, BentoML, LitServe and the bare app."""

    def json_loads(self, name: str) -> dict[int, Load] | None:
        """``name``'s JSON request's loads; None if it is absent or was not measured."""
        server = self.servers.get(name)
        return None if server is None else server.json_loads


@dataclass(frozen=True)
class WorkerRun:
    """One worker count's medians over the rounds."""

    loads: dict[int, Load]
    """By concurrency."""
    server_cpu_ms: float
    """CPU per answered request at the highest concurrency: every process of the server
    (supervisor, workers, monitor)."""
    monitor_cpu_ms: float
    """Of which the monitor process's."""


@dataclass(frozen=True)
class WorkersResult:
    repeats: int
    cores: int
    runs: dict[int, WorkerRun]
    """By worker count."""


@dataclass(frozen=True)
class EstimateRow:
    scenario: str
    true: float
    """Mean true accuracy over the windows."""
    estimated: float
    """Mean estimated accuracy over the windows."""
    error: float
    """Mean |true - estimated| over the windows (a fraction)."""


@dataclass(frozen=True)
class EstimateResult:
    window: int
    windows: int
    temperature: float
    ece_before: float
    ece_after: float
    rows: list[EstimateRow]


@dataclass(frozen=True)
class DriftRow:
    scenario: str
    median: float
    """Median detection delay, in shifted predictions (NaN: never found)."""
    p95: float
    """95th percentile of the delay over the repeats that found it."""
    missed: int
    """Repeats not found within the longest stream."""
    target: int | None
    """The delay its 95th percentile must be within, when the issue sets one."""


@dataclass(frozen=True)
class DriftResult:
    ert: int
    """The configured expected run time between false alarms."""
    threshold: float
    windows: tuple[int, ...]
    tolerance: float
    clean_predictions: int
    clean_alarms: int
    repeats: int
    rows: list[DriftRow]

    @property
    def measured_ert(self) -> float:
        """Clean predictions per false alarm (all of them when there was none)."""
        return self.clean_predictions / max(self.clean_alarms, 1)


@dataclass(frozen=True)
class BatchResult:
    images: int
    batch: int
    threads: int
    flops_per_image: int
    ours_images_per_s: float
    ours_gflops: float
    gemm_gflops: float
    cli_seconds: float
    """``mnistops predict`` on all the images, the whole command."""


@dataclass(frozen=True)
class StressResult:
    seconds: float
    connections: int
    wrk_output: str
    rss_start_mb: float
    rss_end_mb: float
    reload_status: int
    responses_4xx: float
    responses_5xx: float
    alive: bool
    """Whether the service still answered a prediction afterwards."""


@dataclass
class Results:
    """What one run measured; a suite that did not run is left empty."""

    training: TrainingResult | None = None
    serving: ServingResult | None = None
    servers: dict[str, dict[str, Load]] = field(default_factory=dict)
    """The ASGI servers: medians by server, by load (``predict c=1``, ...)."""
    batch: BatchResult | None = None
    scoring: ScoringResult | None = None
    peers: PeersResult | None = None
    workers: WorkersResult | None = None
    estimate: EstimateResult | None = None
    drift: DriftResult | None = None
    stress: StressResult | None = None

    @property
    def stress_only(self) -> bool:
        """Whether this is the soak alone (``--stress``)."""
        others = (
            self.training,
            self.serving,
            self.servers,
            self.batch,
            self.peers,
            self.workers,
            self.estimate,
            self.drift,
        )
        return self.stress is not None and not any(others)
