"""Online serving suites: mnistops against the lab's Flask app and `mlflow models serve`,
batching and monitoring on and off, and the same app under two ASGI servers."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.load import JSON_HEADERS, Load, median_load, wrk
from bench.results import (
    BATCHING_OFF,
    DEFAULTS,
    LAB_FLASK,
    MLFLOW_SERVE,
    MNISTOPS,
    MONITORING_OFF,
    NOOP_ROUTE,
    ServingResult,
    Startup,
    WorkerRun,
    WorkersResult,
)
from bench.servers import (
    LOOPBACK,
    ServerProcess,
    cpu_seconds,
    descendants,
    free_port,
    http_ok,
    niceness,
    serving,
    tree_rss_mb,
)
from bench.training import ensure_lab_model
from bench.workspace import (
    HOME,
    LAB,
    MODEL_NAME,
    VENV_BIN,
    WORK,
    base_env,
    ensure_labenv,
    export_champion,
    lab_env,
    log,
    mnistops,
    sample_image,
    slug,
)

CONCURRENCY = (1, 8, 32)
READY_TIMEOUT_S = 180.0  # `mlflow models serve` takes about 10 s, on a busy machine far more
READY_STARTS = 5
WARMUP_CONNECTIONS = 8
WARMUP_MAX_S = 3.0
PACED_CONNECTIONS = 32
CALIBRATION_MAX_S = 4.0
VARIANTS = {
    BATCHING_OFF: {"MNISTOPS_BATCHING": "false"},
    MONITORING_OFF: {"MNISTOPS_MONITORING": "false"},
    DEFAULTS: {},
}
ASGI_LOADS = {"predict c=1": 1, "predict c=8": 8}
WORKER_COUNTS = (1, 2)
WORKERS_CONCURRENCY = (8, 32)
ASGI_NOOP = ("noop c=8", 8)

K = TypeVar("K")


@dataclass(frozen=True)
class Contender:
    """A server to measure: how to start it, and the request that load sends it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    """Where predictions are asked for; answering there means ready."""
    body: bytes
    """One prediction request: one image."""

    @property
    def noop_url(self) -> str:
        return self.url.replace("/predict", "/noop")


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def mnistops_server(name: str, model_dir: Path, **settings: str) -> Contender:
    """``mnistops serve`` on a local model folder, with extra MNISTOPS_ settings."""
    port = free_port()
    return Contender(
        name,
        mnistops("serve", "--model", str(model_dir), "--port", str(port)),
        base_env(MNISTOPS_RELOAD_INTERVAL_S="0", **settings),
        f"http://{LOOPBACK}:{port}/predict",
        _json({"image": sample_image()}),
    )


def lab_flask(python: Path, model_path: Path) -> Contender:
    port = free_port()
    return Contender(
        LAB_FLASK,
        [str(python), str(LAB / "app.py")],
        lab_env(MODEL_PATH=str(model_path), PORT=str(port)),
        f"http://{LOOPBACK}:{port}/predict",
        _json({"image": sample_image()}),
    )


def mlflow_serve() -> Contender:
    """`mlflow models serve` on the champion from the project's own environment: a
    registered version's default flavour is its ONNX model (onnxruntime), the same file
    mnistops serves, so this measures the two servers, not two runtimes."""
    port = free_port()
    model = f"models:/{MODEL_NAME}@champion"
    options = ["--env-manager", "local", "-h", LOOPBACK, "-p", str(port)]
    return Contender(
        MLFLOW_SERVE,
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model, *options],
        base_env(),
        f"http://{LOOPBACK}:{port}/invocations",
        _json({"inputs": [sample_image()]}),
    )


def granian(model_dir: Path) -> Contender:
    """The same app as ``mnistops serve``, under granian (one worker, uvloop)."""
    port = free_port()
    options = ["--interface", "asgi", "--factory", "--host", LOOPBACK, "--port", str(port)]
    options += ["--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning"]
    return Contender(
        "granian",
        [str(VENV_BIN / "granian"), *options, "mnistops.serve.server:app_from_environment"],
        base_env(MNISTOPS_MODEL_URI=str(model_dir), MNISTOPS_RELOAD_INTERVAL_S="0"),
        f"http://{LOOPBACK}:{port}/predict",
        _json({"image": sample_image()}),
    )


@contextlib.contextmanager
def running(contender: Contender) -> Iterator[ServerProcess]:
    """Start the contender, yield it once it answers a prediction, stop it."""
    log(f"starting {contender.name}")
    log_path = WORK / f"{slug(contender.name)}.log"
    ready = functools.partial(http_ok, contender.url, contender.body)
    with serving(contender.argv, contender.env, log_path, ready, READY_TIMEOUT_S) as server:
        log(f"  {contender.name} answered after {server.ready_seconds:.2f} s")
        yield server


def measure(
    name: str,
    url: str,
    body: bytes,
    seconds: float,
    headers: Mapping[str, str] = JSON_HEADERS,
    binary: bool = False,
) -> dict[int, Load]:
    """A warm-up, then a wrk run at each concurrency (``headers`` and ``binary`` as
    :func:`bench.load.started` takes them)."""
    run = functools.partial(wrk, url, body, headers=headers, binary=binary)
    run(connections=WARMUP_CONNECTIONS, seconds=min(WARMUP_MAX_S, seconds))
    loads = {}
    for c in CONCURRENCY:
        loads[c] = load = run(connections=c, seconds=seconds)
        log(
            f"  {name} c={c}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, "
            f"p99 {load.p99_ms:.2f} ms, bad {load.bad}"
        )
    return loads


def paced(contender: Contender, rate: float, seconds: float) -> Load:
    """Load paced at ``rate`` requests/s.

    wrk paces each connection by a delay between answer and next request, so the rate it
    reaches falls short of the one asked for: calibrate once, then measure.
    """
    url, body, c = contender.url, contender.body, PACED_CONNECTIONS
    trial = wrk(url, body, connections=c, seconds=min(CALIBRATION_MAX_S, seconds), rate=rate)
    load = wrk(url, body, connections=c, seconds=seconds, rate=rate * rate / max(trial.rps, 1.0))
    log(f"  paced at {rate:,.0f} req/s: got {load.rps:,.0f}, p99 {load.p99_ms:.2f} ms")
    return load


def median_ready(make: Callable[[], Contender], starts: int) -> float:
    """Median exec-to-ready of ``starts`` fresh servers."""
    times = []
    for _ in range(starts):
        with running(make()) as server:
            times.append(server.ready_seconds)
    return float(statistics.median(times))


def bench_serving(seconds: float, repeats: int) -> ServingResult:
    """mnistops and its no-op route, the lab's app, MLflow's server; then the variants."""
    for old in HOME.glob("predictions.db*"):  # start each run with an empty prediction log
        old.unlink()
    model_dir = export_champion()
    python = ensure_labenv()
    lab_model = ensure_lab_model(python)
    ours = mnistops_server(MNISTOPS, model_dir)
    with running(ours) as server:
        loads = {MNISTOPS: measure(MNISTOPS, ours.url, ours.body, seconds)}
        rss = tree_rss_mb(server.process.pid)
        loads[NOOP_ROUTE] = measure(NOOP_ROUTE, ours.noop_url, ours.body, seconds)
        half = max(load.rps for load in loads[MNISTOPS].values()) / 2
        paced_load = paced(ours, half, seconds)
    ready = median_ready(lambda: mnistops_server(MNISTOPS, model_dir), READY_STARTS)
    log(f"  mnistops exec-to-ready, median of {READY_STARTS}: {ready:.2f} s")
    startup = {MNISTOPS: Startup(ready, rss)}
    for rival in (lab_flask(python, lab_model), mlflow_serve()):
        loads[rival.name], startup[rival.name] = _measure_rival(rival, seconds)
    return ServingResult(
        loads=loads,
        startup=startup,
        ready_starts=READY_STARTS,
        paced_target_rps=half,
        paced=paced_load,
        variants=bench_variants(model_dir, seconds, repeats),
    )


def _measure_rival(rival: Contender, seconds: float) -> tuple[dict[int, Load], Startup]:
    with running(rival) as server:
        loads = measure(rival.name, rival.url, rival.body, seconds)
        return loads, Startup(server.ready_seconds, tree_rss_mb(server.process.pid))


def bench_variants(model_dir: Path, seconds: float, repeats: int) -> dict[str, dict[int, Load]]:
    """Batching and monitoring, on and off, alternated so drift in the machine cancels."""
    runs: dict[str, list[dict[int, Load]]] = {name: [] for name in VARIANTS}
    for round_ in range(repeats):
        for name, settings in VARIANTS.items():
            contender = mnistops_server(f"{MNISTOPS} {name}", model_dir, **settings)
            with running(contender):
                log(f"  A/B round {round_ + 1}/{repeats}: {name}")
                runs[name].append(measure(contender.name, contender.url, contender.body, seconds))
    return medians(runs)


def bench_asgi_servers(seconds: float, repeats: int) -> dict[str, dict[str, Load]]:
    """The same app under uvicorn (what `mnistops serve` runs) and granian, alternated."""
    model_dir = export_champion()
    makers: dict[str, Callable[[], Contender]] = {
        "uvicorn": lambda: mnistops_server("uvicorn", model_dir),
        "granian": lambda: granian(model_dir),
    }
    runs: dict[str, list[dict[str, Load]]] = {name: [] for name in makers}
    for round_ in range(repeats):
        for name, make in makers.items():
            contender = make()
            with running(contender):
                log(f"  ASGI servers, round {round_ + 1}/{repeats}: {name}")
                runs[name].append(_asgi_loads(contender, seconds))
    return medians(runs)


def _asgi_loads(contender: Contender, seconds: float) -> dict[str, Load]:
    url, body = contender.url, contender.body
    loads = {key: wrk(url, body, connections=c, seconds=seconds) for key, c in ASGI_LOADS.items()}
    key, c = ASGI_NOOP
    loads[key] = wrk(contender.noop_url, body, connections=c, seconds=seconds)
    return loads


def medians(runs: Mapping[str, Sequence[Mapping[K, Load]]]) -> dict[str, dict[K, Load]]:
    """The median load of each name and key over repeated rounds."""
    return {
        name: {key: median_load([r[key] for r in rounds]) for key in rounds[0]}
        for name, rounds in runs.items()
    }


def bench_workers(seconds: float, repeats: int) -> WorkersResult:
    """``--workers 1`` against ``--workers 2``, alternated; CPU per request of the whole
    server and of its monitor process, the figures the scaling estimate is made from."""
    model_dir = export_champion()
    rounds: dict[int, list[tuple[dict[int, Load], float, float]]] = {n: [] for n in WORKER_COUNTS}
    for round_ in range(repeats):
        for count in WORKER_COUNTS:
            name = f"{MNISTOPS} --workers {count}"
            contender = mnistops_server(name, model_dir, MNISTOPS_WORKERS=str(count))
            with running(contender) as server:
                log(f"  workers, round {round_ + 1}/{repeats}: {count}")
                rounds[count].append(_worker_loads(contender, server.process.pid, seconds))
    runs = {}
    for count, measured in rounds.items():
        loads = medians({"": [m[0] for m in measured]})[""]
        runs[count] = WorkerRun(
            loads,
            float(statistics.median(m[1] for m in measured)),
            float(statistics.median(m[2] for m in measured)),
        )
    return WorkersResult(repeats=repeats, cores=os.cpu_count() or 1, runs=runs)


def _worker_loads(
    contender: Contender, pid: int, seconds: float
) -> tuple[dict[int, Load], float, float]:
    """Loads by concurrency; CPU ms per request of the server and of its monitor process
    (the one process of the tree that runs at a lower priority) at the last concurrency."""
    run = functools.partial(wrk, contender.url, contender.body)
    run(connections=WARMUP_CONNECTIONS, seconds=min(WARMUP_MAX_S, seconds))
    tree = descendants(pid) | {pid}
    monitor = {p for p in tree if niceness(p) > 0}
    loads: dict[int, Load] = {}
    server_ms = monitor_ms = 0.0
    for c in WORKERS_CONCURRENCY:
        before, before_monitor = cpu_seconds(tree), cpu_seconds(monitor)
        loads[c] = load = run(connections=c, seconds=seconds)
        answered = max(load.requests - load.bad, 1)
        server_ms = (cpu_seconds(tree) - before) * 1000 / answered
        monitor_ms = (cpu_seconds(monitor) - before_monitor) * 1000 / answered
        log(
            f"  {contender.name} c={c}: {load.rps:,.0f} req/s, p99 {load.p99_ms:.2f} ms; "
            f"CPU {server_ms:.3f} ms/request, monitor {monitor_ms:.3f}"
        )
    return loads, server_ms, monitor_ms
