"""The peers suite: mnistops against MLServer, BentoML, LitServe and a bare FastAPI app, all
serving the same ONNX file through onnxruntime (one thread per call, as mnistops runs it).

Each peer runs from a venv of its own under ``bench/.work/peers/<name>``, installed from
PyPI alone (pip's configuration and local indexes switched off) and built once: a marker
file holding its requirements says it is done. The peers' server code is beside this
module (``mlserver_model.py``, ``bento_service.py``, ``litserve_app.py``, ``bare_app.py``)
and runs in those venvs, never in the project's.

Every server is started afresh in each of the interleaved rounds, so that the noise of a
shared machine falls on all of them; the figures are medians over the rounds. wrk drives
each server's JSON request for one image at each of :data:`bench.serving.CONCURRENCY`;
mnistops (its defaults: batching and monitoring on) also gets the Open Inference
Protocol's infer, with a binary tensor and in JSON; MLServer's own request is that JSON
infer. A peer that cannot be installed or started is reported with its error line and
the suite goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from bench.load import JSON_HEADERS, Load
from bench.results import (
    BARE_APP,
    BENTOML,
    LITSERVE,
    MLSERVER,
    MNISTOPS,
    PREDICT_JSON,
    V2_BINARY,
    V2_JSON,
    PeerServer,
    PeersResult,
    Startup,
)
from bench.servers import (
    LOOPBACK,
    ServerExitedError,
    ServerProcess,
    free_port,
    http_status,
    tree_rss_mb,
)
from bench.serving import Contender, measure, medians, mnistops_server, running
from bench.workspace import WORK, export_champion, log, sample_image, slug
from mnistops.serve.tensors import BINARY_SIZE, HEADER_LENGTH, INPUT_NAME

PEERS_CODE = Path(__file__).resolve().parent
PEERS_WORK = WORK / "peers"
MARKER = ".installed"
PIP_UNSET = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
"""pip settings that point at other indexes than PyPI; the peers' venvs install without."""
INSTALL_TAIL_LINES = 20

# The peers' best configurations, chosen by runs at c=1, 8 and 32 on 2 cores (req/s at c=8):
# - MLServer: adaptive batching 32 / 1 ms ~1,200-1,400, none ~1,100 (but at c=1 batching
#   waits: ~370 against ~820); parallel_workers=1 ~600; httptools ~+15 %.
# - BentoML: 2 workers ~940, 1 worker ~450; max_latency_ms of 10 or less refuses requests
#   (503) once the queue exceeds it, so the latency bound is left loose.
# - LitServe: batching 8 / 1 ms ~690, no batching ~290; fast_queue (ZeroMQ) no better.
MLSERVER_MAX_BATCH_SIZE = 32
MLSERVER_MAX_BATCH_TIME_S = 0.001
BENTOML_WORKERS = 2
BENTOML_MAX_BATCH_SIZE = 64
BENTOML_MAX_LATENCY_MS = 1000
LITSERVE_MAX_BATCH_SIZE = 8
LITSERVE_BATCH_TIMEOUT_S = 0.001


class PeerError(RuntimeError):
    """A peer could not be installed, started or asked: the message is its error line."""


@dataclass(frozen=True)
class PeerRequest:
    """One kind of request load sends a server: one image."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    binary: bool = False
    """Whether the body is binary (wrk gets it hex-encoded; any byte may appear)."""


@dataclass(frozen=True)
class Launch:
    """A server ready to start, and the requests to measure it with (its JSON one first)."""

    contender: Contender
    requests: dict[str, PeerRequest]


@dataclass(frozen=True)
class Peer:
    """A peer server: its venv's requirements, its configuration, how to launch it."""

    name: str
    venv: str
    """Its venv's folder name under ``bench/.work/peers``."""
    package: str
    """The distribution whose installed version the report names."""
    requirements: tuple[str, ...]
    configuration: str
    """How it runs, after its name and version."""
    json_request: str
    launch: Callable[[Path, Path, str], Launch]
    """From the venv's bin folder, the ONNX file and the model's name."""


# --- bodies -------------------------------------------------------------------------


def predict_body(pixels: Sequence[float]) -> bytes:
    """mnistops' /predict body for one image: the bare app and LitServe take it too."""
    return json.dumps({"image": list(pixels)}).encode()


def v2_json_body(pixels: Sequence[float]) -> bytes:
    """An Open Inference Protocol infer request for one image, its data in JSON."""
    tensor = {"name": INPUT_NAME, "shape": [1, len(pixels)], "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": list(pixels)}]}).encode()


def v2_binary_request(url: str, pixels: Sequence[float]) -> PeerRequest:
    """An infer request with the binary tensor data extension: a JSON header whose length
    is the ``Inference-Header-Content-Length`` header, then the image's little-endian
    float32 bytes."""
    data = np.asarray(pixels, dtype="<f4").tobytes()
    tensor = {"name": INPUT_NAME, "shape": [1, len(pixels)], "datatype": "FP32"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {BINARY_SIZE: len(data)}}]}).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return PeerRequest(url, header + data, headers, binary=True)


# --- environments ---------------------------------------------------------------------


def pypi_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for pip installing from PyPI alone: no configuration file, no other index."""
    env = {k: v for k, v in environ.items() if k not in PIP_UNSET}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def peer_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a peer runs in: its venv first on PATH, nothing of the project's."""
    skipped = ("MNISTOPS_", "MLFLOW_", "PYTHON", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def error_line(output: str) -> str:
    """The line of a failed command's output that says what went wrong: pip's first
    ``ERROR:`` line, else the last line (a traceback's exception)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0]
    return lines[-1] if lines else "no output"


def requirements_text(requirements: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in requirements)


def ensure_peer_env(peer: Peer) -> Path:
    """The peer's venv, built from PyPI unless its marker says it is; its bin folder.

    Raises:
        PeerError: the venv or the install failed (the message is pip's error line).
    """
    venv = PEERS_WORK / peer.venv
    marker, wanted = venv / MARKER, requirements_text(peer.requirements)
    if marker.is_file() and marker.read_text() == wanted:
        return venv / "bin"
    if marker.is_file():  # other requirements: start afresh
        shutil.rmtree(venv)
    log(f"building {peer.name}'s environment (PyPI only) in bench/.work/peers/{venv.name}")
    python = venv / "bin" / "python"
    env = pypi_env(os.environ)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", *peer.requirements],
    ]
    for argv in steps:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).splitlines()[-INSTALL_TAIL_LINES:]
            raise PeerError(f"install failed: {error_line(chr(10).join(tail))}")
    marker.write_text(wanted)
    return venv / "bin"


def installed_version(bin_dir: Path, package: str) -> str:
    """The version of ``package`` in the venv of ``bin_dir``.

    Raises:
        PeerError: the venv does not have it.
    """
    code = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    argv = [str(bin_dir / "python"), "-c", code, package]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PeerError(f"{package} is not installed: {error_line(done.stderr)}")
    return done.stdout.strip()


def pinned(*names: str) -> tuple[str, ...]:
    """``name==version`` of each package as the project's environment has it."""
    return tuple(f"{name}=={metadata.version(name)}" for name in names)


# --- the servers ----------------------------------------------------------------------


def infer_url(base: str, model_name: str) -> str:
    return f"{base}/v2/models/{model_name}/infer"


def mnistops_launch(model_dir: Path, model_name: str) -> Launch:
    """``mnistops serve`` with its defaults (gRPC on a free port of its own)."""
    contender = mnistops_server(MNISTOPS, model_dir, MNISTOPS_GRPC_PORT=str(free_port()))
    pixels = sample_image()
    url = infer_url(contender.url.removesuffix("/predict"), model_name)
    return Launch(
        contender,
        {
            PREDICT_JSON: PeerRequest(contender.url, contender.body),
            V2_BINARY: v2_binary_request(url, pixels),
            V2_JSON: PeerRequest(url, v2_json_body(pixels)),
        },
    )


def mlserver_launch(bin_dir: Path, onnx: Path, model_name: str) -> Launch:
    """``mlserver start`` on a folder of settings written for this start (fresh ports)."""
    folder = PEERS_WORK / "mlserver-run"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / model_name).mkdir(parents=True)
    port = free_port()
    settings = {
        "debug": False,
        "host": LOOPBACK,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(folder / "metrics"),
        "parallel_workers": 0,
        "gzip_enabled": False,
    }
    model = {
        "name": model_name,
        "implementation": "mlserver_model.OnnxModel",
        "parameters": {"uri": str(onnx)},
        "max_batch_size": MLSERVER_MAX_BATCH_SIZE,
        "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / model_name / "model-settings.json").write_text(json.dumps(model))
    url = infer_url(f"http://{LOOPBACK}:{port}", model_name)
    body = v2_json_body(sample_image())
    env = peer_env(bin_dir, PYTHONPATH=str(PEERS_CODE))
    contender = Contender(
        MLSERVER, [str(bin_dir / "mlserver"), "start", str(folder)], env, url, body
    )
    return Launch(contender, {V2_JSON: PeerRequest(url, body)})


def bentoml_launch(bin_dir: Path, onnx: Path, model_name: str) -> Launch:
    port = free_port()
    argv = [str(bin_dir / "bentoml"), "serve", "bento_service:MnistOnnx"]
    argv += ["--working-dir", str(PEERS_CODE), "--host", LOOPBACK, "--port", str(port)]
    env = peer_env(
        bin_dir,
        BENTOML_HOME=str(PEERS_WORK / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="true",
        PEER_MODEL=str(onnx),
        PEER_WORKERS=str(BENTOML_WORKERS),
        PEER_MAX_BATCH_SIZE=str(BENTOML_MAX_BATCH_SIZE),
        PEER_MAX_LATENCY_MS=str(BENTOML_MAX_LATENCY_MS),
    )
    url = f"http://{LOOPBACK}:{port}/predict"
    body = json.dumps({"image": [list(sample_image())]}).encode()  # a batch of one
    return Launch(Contender(BENTOML, argv, env, url, body), {PREDICT_JSON: PeerRequest(url, body)})


def litserve_launch(bin_dir: Path, onnx: Path, model_name: str) -> Launch:
    port = free_port()
    batching = [str(LITSERVE_MAX_BATCH_SIZE), str(LITSERVE_BATCH_TIMEOUT_S)]
    argv = [str(bin_dir / "python"), str(PEERS_CODE / "litserve_app.py"), str(onnx), str(port)]
    url = f"http://{LOOPBACK}:{port}/predict"
    body = predict_body(sample_image())
    contender = Contender(LITSERVE, [*argv, *batching], peer_env(bin_dir), url, body)
    return Launch(contender, {PREDICT_JSON: PeerRequest(url, body)})


def bare_launch(bin_dir: Path, onnx: Path, model_name: str) -> Launch:
    port = free_port()
    argv = [str(bin_dir / "python"), str(PEERS_CODE / "bare_app.py"), str(onnx), str(port)]
    url = f"http://{LOOPBACK}:{port}/predict"
    body = predict_body(sample_image())
    contender = Contender(BARE_APP, argv, peer_env(bin_dir), url, body)
    return Launch(contender, {PREDICT_JSON: PeerRequest(url, body)})


def peers() -> tuple[Peer, ...]:
    """The four peers, onnxruntime pinned to the project's own version in each."""
    runtime = pinned("onnxruntime")
    batch = (
        f"max_batch_size={MLSERVER_MAX_BATCH_SIZE}, max_batch_time={MLSERVER_MAX_BATCH_TIME_S:g} s"
    )
    return (
        Peer(
            MLSERVER,
            "mlserver",
            "mlserver",
            ("mlserver==1.7.1", "uvloop<0.22", "httptools", *runtime),
            "a custom MLModel runtime over onnxruntime, adaptive batching "
            f"({batch}), parallel_workers=0 (inference in the server process), "
            "uvloop and httptools, access log and gzip off; Open Inference Protocol JSON "
            "(MLServer has no binary tensor extension)",
            V2_JSON,
            mlserver_launch,
        ),
        Peer(
            BENTOML,
            "bentoml",
            "bentoml",
            ("bentoml>=1.4,<1.5", *runtime),
            f"a service with a batchable API (max_batch_size="
            f"{BENTOML_MAX_BATCH_SIZE}, max_latency_ms={BENTOML_MAX_LATENCY_MS}), "
            f"{BENTOML_WORKERS} workers, access log off; body "
            '`{"image": [[784 floats]]}` (a batchable API takes a batch)',
            PREDICT_JSON,
            bentoml_launch,
        ),
        Peer(
            LITSERVE,
            "litserve",
            "litserve",
            ("litserve>=0.2,<0.3", *runtime),
            f"a LitAPI over onnxruntime with batching (max_batch_size="
            f"{LITSERVE_MAX_BATCH_SIZE}, batch_timeout={LITSERVE_BATCH_TIMEOUT_S:g} s), "
            "one API server and one inference worker on the CPU; mnistops' body",
            PREDICT_JSON,
            litserve_launch,
        ),
        Peer(
            BARE_APP,
            "bare",
            "fastapi",
            (*pinned("fastapi", "uvicorn", "uvloop", "httptools", "orjson"), *runtime),
            "with orjson and onnxruntime, all at the project's versions, under uvicorn "
            "(uvloop, httptools, one process, no access log); the pixels checked as "
            "/predict checks them; no batching, no monitoring, no limits; mnistops' body",
            PREDICT_JSON,
            bare_launch,
        ),
    )


MNISTOPS_CONFIGURATION = (
    "its defaults: batching (up to 64 images, no lingering) and "
    "monitoring (metrics, drift, prediction log) on, uvicorn with uvloop and httptools"
)


# --- the suite --------------------------------------------------------------------------


@dataclass
class Rounds:
    """What the rounds measured of one server so far."""

    loads: list[dict[str, dict[int, Load]]] = field(default_factory=list)
    startups: list[Startup] = field(default_factory=list)
    failure: str | None = None


def bench_peers(seconds: float, repeats: int) -> PeersResult:
    """mnistops and each peer that installs, in ``repeats`` interleaved rounds."""
    from mnistops import __version__ as mnistops_version
    from mnistops.bundle import load_bundle

    model_dir = export_champion()
    bundle = load_bundle(model_dir)
    launchers: dict[str, Callable[[], Launch]] = {
        MNISTOPS: lambda: mnistops_launch(model_dir, bundle.name)
    }
    configurations = {MNISTOPS: f"mnistops {mnistops_version}, {MNISTOPS_CONFIGURATION}"}
    json_requests = {MNISTOPS: PREDICT_JSON}
    rounds = {MNISTOPS: Rounds()}
    for peer in peers():
        json_requests[peer.name], rounds[peer.name] = peer.json_request, Rounds()
        configurations[peer.name] = f"{peer.package} (not installed), {peer.configuration}"
        try:
            bin_dir = ensure_peer_env(peer)
            version = installed_version(bin_dir, peer.package)
        except PeerError as exc:
            log(f"  {peer.name}: {exc}")
            rounds[peer.name].failure = str(exc)
            continue
        configurations[peer.name] = f"{peer.package} {version}, {peer.configuration}"
        launchers[peer.name] = _launcher(peer, bin_dir, bundle.onnx_path, bundle.name)
    for round_ in range(repeats):
        for name, make in launchers.items():
            if rounds[name].failure is None or rounds[name].loads:
                log(f"  peers, round {round_ + 1}/{repeats}: {name}")
                _measure_round(make(), seconds, rounds[name])
    return PeersResult(
        repeats,
        {
            name: peer_server(configurations[name], json_requests[name], measured)
            for name, measured in rounds.items()
        },
    )


def _launcher(peer: Peer, bin_dir: Path, onnx: Path, model_name: str) -> Callable[[], Launch]:
    return lambda: peer.launch(bin_dir, onnx, model_name)


def _measure_round(launch: Launch, seconds: float, measured: Rounds) -> None:
    """Start the server, load each of its requests, stop it; a failure is recorded."""
    name = launch.contender.name
    try:
        with _started(launch.contender) as server:
            loads = {}
            for kind, request in launch.requests.items():
                status = http_status(request.url, request.body, headers=request.headers)
                if status != 200:
                    measured.failure = f"{kind}: answered {status or 'nothing'}, not 200"
                    log(f"  {name} {measured.failure}")
                    continue
                loads[kind] = measure(
                    f"{name} {kind}",
                    request.url,
                    request.body,
                    seconds,
                    request.headers,
                    request.binary,
                )
            rss = tree_rss_mb(server.process.pid)
    except PeerError as exc:
        log(f"  {name}: {exc}")
        measured.failure = str(exc)
        return
    measured.loads.append(loads)
    measured.startups.append(Startup(server.ready_seconds, rss))


@contextlib.contextmanager
def _started(contender: Contender) -> Iterator[ServerProcess]:
    """:func:`bench.serving.running`, its failure to start a :class:`PeerError` with the
    last line of the server's log."""
    log_path = WORK / f"{slug(contender.name)}.log"
    ready = False
    try:
        with running(contender) as server:
            ready = True
            yield server
    except (ServerExitedError, TimeoutError) as exc:
        if ready:  # raised by what ran against the server, not by its start
            raise
        what = "exited before it was ready" if isinstance(exc, ServerExitedError) else ""
        what = what or "was not ready in time"
        with contextlib.suppress(OSError):
            what += f": {error_line(log_path.read_text(errors='replace'))}"
        raise PeerError(what) from exc


def peer_server(configuration: str, json_request: str, measured: Rounds) -> PeerServer:
    """The medians of its rounds, over the requests measured in every round."""
    if not measured.loads:
        return PeerServer(configuration, json_request, failure=measured.failure)
    kinds = [k for k in measured.loads[0] if all(k in loads for loads in measured.loads)]
    loads = medians({kind: [round_[kind] for round_ in measured.loads] for kind in kinds})
    startup = Startup(
        float(statistics.median(s.ready_s for s in measured.startups)),
        float(statistics.median(s.rss_mb for s in measured.startups)),
    )
    return PeerServer(configuration, json_request, loads, startup, measured.failure)
