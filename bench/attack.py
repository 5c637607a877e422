"""The service under attack: saturating mixed load and a soak, overload, hot swaps under load,
SIGTERM under load and the prediction log's PostgreSQL stopped under load, each measured on a
real server with wrk; the figures go to docs/reliability.md.

Run it with ``make stress`` (about 20 minutes), or alone::

    python -m bench.attack [--only NAME] [--saturate-seconds 60] [--soak-seconds 600]

Every scenario's short form runs in ``make test`` (the tests named in the document).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench import load
from bench.servers import LOOPBACK, free_port, tree_rss_mb
from bench.serving import Contender, mnistops_server, running
from bench.workspace import (
    WORK,
    base_env,
    export_champion,
    log,
    mnist_npz,
    mnistops,
    sample_image,
)

DOC = Path(__file__).parents[1] / "docs" / "reliability.md"
ADMIN_TOKEN = "attack-token"
SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
GRACE_S = 10.0
"""The service's default ``grace_period_s``: a drain must end within it."""
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class Figures:
    """What one scenario measured, as lines of the document."""

    title: str
    command: str
    lines: list[str] = field(default_factory=list)
    met: bool = True
    outputs: list[str] = field(default_factory=list)


def _socket_errors(output: str) -> dict[str, int]:
    found = SOCKET_ERRORS.search(output)
    names = ("connect", "read", "write", "timeout")
    return (
        dict(zip(names, map(int, found.groups()), strict=True))
        if found
        else dict.fromkeys(names, 0)
    )


def _non_2xx(output: str) -> int:
    found = NON_2XX.search(output)
    return int(found.group(1)) if found else 0


def _png() -> bytes:
    pixels = (np.array(sample_image(), dtype=np.float32).reshape(28, 28) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _v2_json() -> bytes:
    tensor = {"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": list(sample_image())}
    return json.dumps({"inputs": [tensor]}).encode()


def _v2_binary() -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 784],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 784 * 4},
                }
            ]
        }
    ).encode()
    body = header + np.array(sample_image(), dtype="<f4").tobytes()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return body, headers


def _post(url: str, body: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _grpc_loop(port: int, stop: threading.Event, outcomes: Counter[str]) -> None:
    """ModelInfer in a loop through Triton's client until ``stop``; outcomes counted."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    pixels = np.array(sample_image(), dtype=np.float32).reshape(1, 784)
    tensor = triton.InferInput("pixels", [1, 784], "FP32")
    tensor.set_data_from_numpy(pixels)
    while not stop.is_set():
        try:
            client.infer("mnist-classifier", [tensor], client_timeout=10)
            outcomes["ok"] += 1
        except Exception as exc:  # noqa: BLE001 (every failure is counted, by kind)
            outcomes[type(exc).__name__] += 1
    client.close()


# --- scenarios ---------------------------------------------------------------------------
def saturating(model: Path, seconds: float, soak_seconds: float) -> Figures:
    """Mixed JSON, PNG, v2 JSON, v2 binary and gRPC at the most the machine takes, then
    the HTTP streams at half that rate for ``soak_seconds``."""
    figures = Figures(
        f"Saturating load: {seconds:g} s of mixed protocols, then "
        f"{soak_seconds / 60:g} min at half load",
        f"python -m bench.attack --only saturating --saturate-seconds {seconds:g} "
        f"--soak-seconds {soak_seconds:g}",
    )
    grpc_port = free_port()
    server = mnistops_server("attack saturating", model, MNISTOPS_GRPC_PORT=str(grpc_port))
    base = server.url.removesuffix("/predict")
    binary, binary_headers = _v2_binary()
    streams = [
        (server.url, [server.body], 24, load.JSON_HEADERS, False),
        (server.url, [_png()], 12, {"Content-Type": "image/png"}, True),
        (f"{base}/v2/models/mnist-classifier/infer", [_v2_json()], 12, load.JSON_HEADERS, False),
        (f"{base}/v2/models/mnist-classifier/infer", [binary], 8, binary_headers, True),
    ]
    with running(server) as process:

        def mixed(duration: float) -> tuple[list[load.WrkRun], Counter[str]]:
            stop, outcomes = threading.Event(), Counter[str]()
            grpc = threading.Thread(target=_grpc_loop, args=(grpc_port, stop, outcomes))
            grpc.start()
            with contextmanagers(streams, duration) as pending:
                runs = [p.finish() for p in pending]
            stop.set()
            grpc.join(30)
            return runs, outcomes

        mixed(10)  # warm-up
        warm = tree_rss_mb(process.process.pid)
        runs, grpc = mixed(seconds)
        after = tree_rss_mb(process.process.pid)
        requests = sum(r.load.requests for r in runs) + sum(grpc.values())
        errors = sum(r.load.bad for r in runs)
        errors += sum(v for k, v in grpc.items() if k != "ok")
        growth = (after - warm) / warm
        figures.met = errors == 0 and growth <= 0.10
        figures.lines += [
            f"{requests:,} requests ({requests / seconds:,.0f}/s: JSON, PNG, v2 JSON, v2 binary "
            f"and gRPC at once), {errors} errors (target 0)",
            f"gRPC: {dict(grpc)}",
            f"resident memory after warm-up {warm:.0f} MB, after the run {after:.0f} MB "
            f"({growth:+.1%}; target within 10 %)",
        ]
        figures.outputs += [r.output for r in runs]
        if soak_seconds > 0:
            figures.met &= _soak(figures, process.process.pid, streams, runs, soak_seconds)
    return figures


def _soak(
    figures: Figures,
    pid: int,
    streams: list[tuple[str, list[bytes], int, dict[str, str], bool]],
    saturated: list[load.WrkRun],
    seconds: float,
) -> bool:
    """Each HTTP stream paced at half the rate it reached saturated, for ``seconds``;
    resident memory sampled every 30 s. Flat: the last sample within 10 % of the first
    one taken a minute in (after the caches and pools have grown to their working size)."""
    samples: list[tuple[float, float]] = []
    half = [run.load.rps / 2 for run in saturated]
    with contextmanagers(streams, seconds, half) as pending:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append((elapsed, tree_rss_mb(pid)))
            time.sleep(min(30.0, max(0.0, seconds - elapsed)))
        runs = [p.finish() for p in pending]
    samples.append((time.monotonic() - started, tree_rss_mb(pid)))
    base = next((mb for at, mb in samples if at >= 60), samples[0][1])
    last = samples[-1][1]
    requests = sum(r.load.requests for r in runs)
    errors = sum(r.load.bad for r in runs)
    growth = (last - base) / base
    series = ", ".join(f"{mb:.0f}" for _, mb in samples[::2])
    figures.lines += [
        f"then {seconds / 60:g} min at half that rate (HTTP streams paced by wrk): "
        f"{requests:,} requests, {errors} errors (target 0)",
        f"resident memory every minute (MB): {series}; last {last:.0f} MB, "
        f"{growth:+.1%} from the 1-minute mark (target: flat, within 10 %)",
    ]
    figures.outputs += [r.output for r in runs]
    return errors == 0 and growth <= 0.10


@contextmanager
def contextmanagers(
    streams: list[tuple[str, list[bytes], int, dict[str, str], bool]],
    seconds: float,
    rates: list[float] | None = None,
) -> Iterator[list[load.PendingRun]]:
    """Start one wrk per stream, all at once; ``rates`` paces each (requests/s)."""
    paces = rates or [0.0] * len(streams)
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                load.started(
                    url,
                    bodies,
                    connections=c,
                    seconds=seconds,
                    rate=rate,
                    headers=headers,
                    binary=binary,
                )
            )
            for (url, bodies, c, headers, binary), rate in zip(streams, paces, strict=True)
        ]


OVERLOAD_P99_MS = 1000.0
"""Under overload, the slowest 1 % of the requests the service accepts must still be
answered within this; a shed request within half of it."""


def overload(model: Path, seconds: float = 20) -> Figures:
    """c=1024 against a bound of 128 in flight: fast 503s with Retry-After, no timeouts,
    the requests accepted answered in bounded time, then normal service at once."""
    figures = Figures(
        f"Overload: c=1024 for {seconds:g} s", "python -m bench.attack --only overload"
    )
    server = mnistops_server("attack overload", model)
    with running(server):
        seen: Counter[str] = Counter()
        latency: dict[str, list[float]] = {"accepted": [], "shed": []}
        stop = threading.Event()

        def probe() -> None:
            # one keep-alive connection, as a client of the service holds one
            port = urllib.parse.urlsplit(server.url).port
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=15)
            while not stop.is_set():
                started = time.perf_counter()
                connection.request("POST", "/predict", server.body, load.JSON_HEADERS)
                answer = connection.getresponse()
                answer.read()
                took = (time.perf_counter() - started) * 1000
                retry = "with Retry-After" if answer.getheader("retry-after") else "no Retry-After"
                status = answer.status
                seen[f"{status} {retry}" if status == 503 else str(status)] += 1
                latency["accepted" if status == 200 else "shed"].append(took)
                time.sleep(0.02)
            connection.close()

        with load.started(server.url, [server.body], connections=1024, seconds=seconds) as pending:
            prober = threading.Thread(target=probe)
            prober.start()
            run = pending.finish()
            stop.set()
            prober.join(30)
        after = []
        for _ in range(20):
            started = time.perf_counter()
            status, _, _ = _post(server.url, server.body)
            after.append((status, (time.perf_counter() - started) * 1000))
        errors = _socket_errors(run.output)
        accepted_p99, shed_p99 = (_p99(latency[k]) for k in ("accepted", "shed"))
        no_bare_503 = seen["503 no Retry-After"] == 0
        figures.met = (
            errors["timeout"] == 0
            and no_bare_503
            and accepted_p99 <= OVERLOAD_P99_MS
            and shed_p99 <= OVERLOAD_P99_MS / 2
            and all(code == 200 for code, _ in after)
        )
        figures.lines += [
            f"wrk: {run.load.requests:,} answers, {_non_2xx(run.output):,} of them 503 (shed past "
            f"max_in_flight=128); socket errors {errors} (target: 0 timeouts)",
            f"a probe during the flood saw {dict(seen)} (target: every 503 with Retry-After)",
            f"the probe's accepted requests: p99 {accepted_p99:.0f} ms (target "
            f"<= {OVERLOAD_P99_MS:.0f}); its shed ones: p99 {shed_p99:.0f} ms (target "
            f"<= {OVERLOAD_P99_MS / 2:.0f}); wrk, nearly all of whose answers are 503s: "
            f"p50 {run.load.p50_ms:.0f} ms, p99 {run.load.p99_ms:.0f} ms",
            f"the 20 requests right after it: {Counter(code for code, _ in after)}, the first in "
            f"{after[0][1]:.0f} ms, median {statistics.median(t for _, t in after):.1f} ms",
        ]
        figures.outputs.append(run.output)
    return figures


def _p99(samples: list[float]) -> float:
    """The 99th percentile of ``samples`` (0 when there are none)."""
    return float(np.percentile(samples, 99)) if samples else 0.0


def hot_swaps(model: Path, swaps: int = 10, seconds_between: float = 2.0) -> Figures:
    """Two versions swapped in turn under load: no failed request, every answer's version."""
    figures = Figures(f"Hot swap x{swaps} under load", "python -m bench.attack --only hot_swaps")
    folders = WORK / "attack-versions"
    shutil.rmtree(folders, ignore_errors=True)
    versions = {}
    for name in ("a", "b"):
        copy = folders / name
        shutil.copytree(model, copy)
        metadata = json.loads((copy / "metadata.json").read_text())
        metadata["version"] = versions[name] = f"swap-{name}"
        (copy / "metadata.json").write_text(json.dumps(metadata))
    current = folders / "current"
    current.symlink_to(folders / "a")
    server = mnistops_server("attack hot swaps", current, MNISTOPS_ADMIN_TOKEN=ADMIN_TOKEN)
    base = server.url.removesuffix("/predict")
    with running(server):
        answered: Counter[str] = Counter()
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                status, _, body = _post(server.url, server.body)
                version = json.loads(body).get("model_version") if status == 200 else None
                answered[f"{status} {version}"] += 1

        clients = [threading.Thread(target=client) for _ in range(4)]
        reloads: Counter[str] = Counter()
        with load.started(
            server.url, [server.body], connections=32, seconds=swaps * seconds_between + 2
        ) as pending:
            for thread in clients:
                thread.start()
            for i in range(swaps):
                time.sleep(seconds_between)
                target = folders / ("b" if i % 2 == 0 else "a")
                current.unlink()
                current.symlink_to(target)
                request = urllib.request.Request(
                    f"{base}/admin/reload",
                    method="POST",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                with urllib.request.urlopen(request, timeout=60) as response:
                    reloads[json.loads(response.read())["model_version"]] += 1
            run = pending.finish()
            stop.set()
            for thread in clients:
                thread.join(30)
        failed = run.load.bad
        failed += sum(v for k, v in answered.items() if not k.startswith("200 swap-"))
        figures.met = failed == 0 and sum(reloads.values()) == swaps
        figures.lines += [
            f"{swaps} swaps ({dict(reloads)} after each), {run.load.requests:,} requests from "
            f"wrk at c=32 and {sum(answered.values()):,} checked ones: {failed} failed (target 0)",
            f"the checked answers by status and the version that made them: {dict(answered)}",
        ]
        figures.outputs.append(run.output)
    return figures


def sigterm(model: Path, connections: int, seconds: float = 8) -> Figures:
    """SIGTERM a third of the way into a wrk run: every request sent is answered 2xx (none
    is shed: ``max_in_flight`` is raised above the connections, so a 503 here would be the
    drain's), exit 0 within the grace period."""
    figures = Figures(
        f"SIGTERM under load at c={connections}",
        f"python -m bench.attack --only sigterm_{connections}",
    )
    room = str(2 * connections)
    server = mnistops_server(f"attack sigterm c={connections}", model, MNISTOPS_MAX_IN_FLIGHT=room)
    contender = Contender(server.name, server.argv, server.env, server.url, server.body)
    with (
        running(contender) as process,
        load.started(
            server.url, [server.body], connections=connections, seconds=seconds
        ) as pending,
    ):
        time.sleep(seconds / 3)
        signalled = time.monotonic()
        os.killpg(process.process.pid, signal.SIGTERM)
        code = process.process.wait(60)
        exit_s = time.monotonic() - signalled
        pending.process.send_signal(signal.SIGINT)  # wrk stops and reports at once
        run = pending.finish()
    errors = _socket_errors(run.output)
    # a request sent on an open connection and never answered is a read error (reset)
    # or a timeout; writes and connects that fail are new connections refused after the
    # listening socket closed, which a client retries elsewhere
    unanswered = errors["read"] + errors["timeout"]
    refused_answers = _non_2xx(run.output)
    figures.met = unanswered == 0 and refused_answers == 0 and code == 0 and exit_s <= GRACE_S
    refused = errors["connect"] + errors["write"]
    figures.lines += [
        f"exit {code} {exit_s:.1f} s after SIGTERM (grace {GRACE_S:g} s); "
        f"{run.load.requests:,} answers, {refused_answers} of them non-2xx (target 0; "
        f"max_in_flight={room}, so none is shed)",
        f"requests sent and not answered (read errors, timeouts): {unanswered} (target 0); "
        f"new connections refused once the port had closed: {refused:,}",
    ]
    figures.outputs.append(run.output)
    return figures


def _metric(base: str, name: str, *labels: str) -> float:
    """The sum of a counter's samples on the service's /metrics (those with all ``labels``)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.MULTILINE)
    return sum(float(value) for held, value in found if all(lb in held for lb in labels))


PREDICTED = ("mnistops_requests_total", 'route="/predict"', 'status="200"')


def store_outage(model: Path, seconds: float = 75, outage: float = 30) -> Figures:
    """The prediction log's PostgreSQL stopped for ``outage`` seconds under load: every
    prediction answered, each one either written once or counted dropped, writing resumes."""
    import psycopg
    from tests.support.postgres import PostgresServer

    figures = Figures(
        f"Prediction-log store (PostgreSQL) stopped {outage:g} s under load",
        "python -m bench.attack --only store_outage",
    )
    root = WORK / "attack-postgres"
    shutil.rmtree(root, ignore_errors=True)
    postgres = PostgresServer(root, free_port()).init()
    postgres.start()
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=attack"

    def rows() -> tuple[int, int]:
        with psycopg.connect(dsn) as db:
            found = db.execute("SELECT count(*), count(DISTINCT request_id) FROM predictions")
            row = found.fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

    try:
        url = postgres.create_database("attack")
        server = mnistops_server("attack store outage", model, MNISTOPS_PREDICTION_LOG_URL=url)
        base = server.url.removesuffix("/predict")
        with running(server):
            written_before = _metric(base, "mnistops_prediction_log_rows_written_total")
            with load.started(
                server.url, [server.body], connections=16, seconds=seconds
            ) as pending:
                time.sleep(15)
                postgres.stop()
                stopped = time.monotonic()
                time.sleep(outage)
                postgres.start()
                down_s = time.monotonic() - stopped
                postgres.wait_ready()
                resumed_at = _metric(base, "mnistops_prediction_log_rows_written_total")
                run = pending.finish()
            # the server's own count of predictions answered (wrk does not count those in
            # flight when it stops), the readiness probe's included
            predictions = int(_metric(base, *PREDICTED))
            deadline = time.monotonic() + 60
            while True:  # the log catches up with what is still queued
                written = _metric(base, "mnistops_prediction_log_rows_written_total")
                dropped = _metric(base, "mnistops_prediction_log_rows_dropped_total")
                if written + dropped >= predictions or time.monotonic() > deadline:
                    break
                time.sleep(1)
            stored, distinct = rows()
        figures.met = (
            run.load.bad == 0
            and stored + dropped == predictions
            and stored == distinct
            and written > resumed_at
            and written == stored
        )
        figures.lines += [
            f"{run.load.requests:,} requests from wrk at c=16 over {seconds:g} s, the store "
            f"down for {down_s:.0f} s of them: {run.load.bad} failed (target 0)",
            f"rows in the table {stored:,} + counted dropped {dropped:,.0f} = "
            f"{stored + dropped:,.0f}, predictions answered {predictions:,} "
            f"(target: equal); distinct request ids {distinct:,} (target: no row twice)",
            f"rows written before the outage's end {resumed_at - written_before:,.0f}, after "
            f"it {written - resumed_at:,.0f} (target: writing resumes); the written counter "
            f"{written:,.0f} = rows in the table",
        ]
        figures.outputs.append(run.output)
    finally:
        postgres.stop()
    return figures


def tracking_down() -> Figures:
    """``serve``, ``run``, ``train`` and ``retrain --force`` against a tracking server
    that refuses connections and one that takes them and never answers: how long each
    takes to say so, in how many lines, with which exit code."""
    figures = Figures(
        "Tracking server down: refusing, and never answering",
        "python -m bench.attack --only tracking_down",
    )
    data = str(mnist_npz().parent)
    commands = [["serve"], ["run"], ["train", "--epochs", "1"], ["retrain", "--force"]]
    with socket.socket() as silent, tempfile.TemporaryDirectory() as home:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the kernel; nobody reads them
        servers = {
            "refusing": f"http://127.0.0.1:{free_port()}",
            "never answering": f"http://127.0.0.1:{silent.getsockname()[1]}",
        }
        for kind, uri in servers.items():
            for command in commands:
                env = base_env(MLFLOW_TRACKING_URI=uri, MNISTOPS_HOME=home, MNISTOPS_MNIST_DIR=data)
                started = time.monotonic()
                done = subprocess.run(
                    mnistops(*command), env=env, capture_output=True, text=True, timeout=300
                )
                took = time.monotonic() - started
                lines = done.stderr.strip().splitlines()
                trained = list(Path(home).rglob("model.onnx"))
                ok = done.returncode != 0 and len(lines) == 1 and took <= 15 and not trained
                figures.met &= ok
                said = lines[-1] if lines else "(nothing)"
                figures.lines.append(
                    f"{kind}, `mnistops {' '.join(command)}`: exit {done.returncode} after "
                    f"{took:.1f} s (target 15 s), {len(lines)} line(s): {said[:160]}"
                )
    return figures


def killed_training(epochs: int = 6, limit: int = 20000) -> Figures:
    """``mnistops train`` killed (SIGKILL) halfway through its third epoch, run again: it
    resumes from the last finished epoch, and its accuracy matches a run never killed
    within 0.2 points."""
    figures = Figures(
        f"Training killed mid-epoch ({epochs} epochs, {limit:,} images)",
        "python -m bench.attack --only killed_training",
    )
    accuracy = re.compile(r"test_accuracy=([0-9.]+)")
    command = mnistops("train", "--epochs", str(epochs), "--limit", str(limit))
    data = str(mnist_npz().parent)
    with tempfile.TemporaryDirectory() as home:
        env = base_env(
            MNISTOPS_HOME=home,
            MNISTOPS_MNIST_DIR=data,
            MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow.db",
        )
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        killed_at = _kill_mid_epoch(child, Path(home))
        child.wait(60)
        resumed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        whole = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    said_resume = "Resuming run" in resumed.stdout
    found = [accuracy.search(done.stdout) for done in (resumed, whole)]
    if not all(found):
        raise RuntimeError(f"no test_accuracy in:\n{resumed.stdout}\n{whole.stdout}")
    a, b = (float(m.group(1)) for m in found if m)
    figures.met = said_resume and abs(a - b) <= 0.002 and 1 <= killed_at < epochs
    figures.lines += [
        f"killed halfway through epoch {killed_at + 1} of {epochs} (SIGKILL; {killed_at} "
        f"finished); the next run resumed from epoch {killed_at + 1}: {said_resume}",
        f"test accuracy resumed {a:.4f}, never killed {b:.4f}: {abs(a - b) * 100:.2f} points "
        "apart (target within 0.2)",
    ]
    return figures


def _kill_mid_epoch(child: subprocess.Popen[bytes], home: Path, deadline_s: float = 600) -> int:
    """SIGKILL ``child`` halfway through its third epoch (timed by the second, from the
    checkpoint state it writes after each epoch); the epochs it had finished."""
    finished: dict[int, float] = {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and child.poll() is None and 2 not in finished:
        finished.setdefault(_epochs_finished(home), time.monotonic())
        time.sleep(0.01)
    if 1 in finished and 2 in finished:
        time.sleep((finished[2] - finished[1]) / 2)
    child.kill()
    child.wait(60)
    return _epochs_finished(home)


def _epochs_finished(home: Path) -> int:
    """The epochs a training run under ``home`` has checkpointed (0 before the first, or
    while its state file is being written)."""
    state = next(home.rglob("state.json"), None)
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads(state.read_text())["epoch"]) if state is not None else 0
    return 0


# --- the document ----------------------------------------------------------------------------
def render(results: list[Figures]) -> str:
    """The measured part of docs/reliability.md."""
    out = []
    for figures in results:
        verdict = "met" if figures.met else "NOT met"
        out += [f"### {figures.title} ({verdict})", "", f"`{figures.command}`", ""]
        out += [f"- {line}" for line in figures.lines]
        out += [""]
        if figures.outputs:
            out += ["<details><summary>wrk</summary>", "", "```"]
            out += [o.strip() for o in figures.outputs]
            out += ["```", "", "</details>", ""]
    return "\n".join(out)


MEASURED_START = "<!-- measured: bench.attack writes from here -->"
MEASURED_END = "<!-- measured: end -->"


def write(results: list[Figures], path: Path) -> None:
    """Replace the measured part of ``path`` (between its markers) with ``results``."""
    text = path.read_text() if path.exists() else f"{MEASURED_START}\n{MEASURED_END}\n"
    head, rest = text.split(MEASURED_START, 1)
    _, tail = rest.split(MEASURED_END, 1)
    stamp = time.strftime("%Y-%m-%d")
    measured = f"Measured by `make stress` on {stamp}, 2 cores, load from wrk on loopback.\n\n"
    path.write_text(f"{head}{MEASURED_START}\n{measured}{render(results)}\n{MEASURED_END}{tail}")


SCENARIOS = (
    "saturating",
    "overload",
    "hot_swaps",
    "sigterm_64",
    "sigterm_256",
    "store_outage",
    "tracking_down",
    "killed_training",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    parser.add_argument("--saturate-seconds", type=float, default=60.0)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    model = export_champion()
    chosen = args.only or list(SCENARIOS)
    results = []
    for name in chosen:
        log(f"attack: {name}")
        if name == "saturating":
            results.append(saturating(model, args.saturate_seconds, args.soak_seconds))
        elif name == "overload":
            results.append(overload(model))
        elif name == "hot_swaps":
            results.append(hot_swaps(model))
        elif name == "store_outage":
            results.append(store_outage(model))
        elif name == "tracking_down":
            results.append(tracking_down())
        elif name == "killed_training":
            results.append(killed_training())
        else:
            results.append(sigterm(model, int(name.split("_")[1])))
        log("\n".join(results[-1].lines))
    write(results, args.out)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
