"""``mnistops serve --workers 2`` as a real process tree: both workers answer on the one
port, /metrics counts every request once, drift and feedback span the workers, the log is
flushed by one writer, reload and the SIGTERM drain reach every worker, a killed worker
comes back, a worker that cannot load ends the start in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from bench.servers import free_port
from prometheus_client.mmap_dict import MmapedDict

from mnistops.bundle import ONNX_FILE, ModelBundle
from mnistops.config import Settings
from mnistops.data import Mnist
from tests.integration.test_serve_lifecycle import TOKEN, Load, two_version_home
from tests.support.server import run_server

pytestmark = pytest.mark.integration
__all__ = ["two_version_home"]  # a fixture, used below
WORKERS = 2


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _names(pids: list[int]) -> Counter[str]:
    """How many of ``pids`` run each kind of mnistops process (from their command lines)."""
    kinds: Counter[str] = Counter()
    for pid in pids:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        kinds["spawned" if b"multiprocessing" in command else "other"] += 1
    return kinds


def _fresh(url: str) -> httpx.Client:
    """A client that opens a new connection for every request: the kernel deals each
    connection to one of the workers, so a run of requests reaches all of them."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=url, timeout=30, limits=limits)


def _sample(text: str, pattern: str) -> list[float]:
    return [float(v) for v in re.findall(pattern, text, re.MULTILINE)]


def _predicted_per_pid(metrics_dir: Path) -> dict[int, float]:
    """/predict answers counted in each worker's own metrics file."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
            _, name, labels, *_ = json.loads(key)
            if name == "mnistops_requests_total" and labels.get("route") == "/predict":
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


@pytest.fixture
def workers_env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # TMPDIR: the supervisor's private folder (metrics files, the monitor's socket) is
    # made there, where the test can look
    return {"MNISTOPS_WORKERS": str(WORKERS), "TMPDIR": str(scratch)}


def _metrics_dir(env: dict[str, str]) -> Path:
    (folder,) = Path(env["TMPDIR"]).glob("mnistops-serve-*")
    return folder / "metrics"


def test_two_workers_share_the_port_and_the_monitor_and_drain_on_sigterm(
    trained_bundle: ModelBundle, mnist: Mnist, tmp_path: Path, workers_env: dict[str, str]
) -> None:
    home = tmp_path / "home"
    sent = 120
    with run_server(str(trained_bundle.path), free_port(), home, workers_env) as srv:
        children = _children(srv.process.pid)
        assert _names(children)["spawned"] >= WORKERS + 1, children  # workers and monitor
        ids, digits = [], []
        with _fresh(srv.url) as client:
            for i in range(sent):
                answer = client.post("/predict", json={"image": mnist.x_test[i].tolist()})
                assert answer.status_code == 200, answer.text
                ids.append((answer.json()["request_id"], int(mnist.y_test[i])))
                digits.append(answer.json()["digit"])
            per_worker = _predicted_per_pid(_metrics_dir(workers_env))
            assert len(per_worker) == WORKERS and min(per_worker.values()) > 0, per_worker
            # feedback straight after each prediction, whichever worker gets it
            for request_id, label in ids[:30]:
                given = client.post("/feedback", json={"request_id": request_id, "label": label})
                assert given.status_code == 200, given.text
            grpc_sent = _grpc_predictions(srv.grpc_port, mnist, digits)  # on every worker
            sent += grpc_sent
            # another worker ships what it predicted within a tick (50 ms): wait for it
            deadline = time.monotonic() + 5
            while (drift := client.get("/monitoring/drift").json())["observed"] < sent:
                assert time.monotonic() < deadline, drift
                time.sleep(0.1)
            text = client.get("/metrics").text
        assert drift["observed"] == sent
        predict_ok = (
            r'^mnistops_requests_total\{method="POST",route="/predict",status="200"\} (\S+)$'
        )
        assert _sample(text, predict_ok) == [sent - grpc_sent]
        grpc_ok = r'^mnistops_requests_total\{method="GRPC",[^}]*status="200"\} (\S+)$'
        assert sum(_sample(text, grpc_ok)) >= grpc_sent
        assert sum(_sample(text, r"^mnistops_predictions_total\{[^}]*\} (\S+)$")) == sent
        feedback = sum(_sample(text, r"^mnistops_feedback_total\{[^}]*\} (\S+)$"))
        assert feedback == 30
        assert _sample(text, r"^mnistops_requests_in_flight (\S+)$") == [1.0]  # the scrape
        assert _sample(text, r"^process_cpu_seconds_total (\S+)$")
        families = re.findall(r"^# TYPE (\S+)", text, re.MULTILINE)
        assert len(families) == len(set(families)), Counter(families).most_common(3)
        assert "pid=" not in text

        with Load(srv.url, mnist, threads=4) as load:
            time.sleep(1.0)
            srv.process.send_signal(signal.SIGTERM)
            code = srv.process.wait(30)
        assert code == 0, srv.log()
        assert not [o for o in load.outcomes if o.isdigit() and o != "200"], load.outcomes
        answered = sent + load.outcomes["200"]
    # none outlives the supervisor for long (multiprocessing's resource tracker leaves a
    # moment after it, once it reads the end of its pipe)
    deadline = time.monotonic() + 5
    while [pid for pid in children if b"zombie" not in _state(pid)]:
        assert time.monotonic() < deadline, [_state(pid)[:40] for pid in children]
        time.sleep(0.1)
    engine = sa.create_engine(Settings(home=home).prediction_log)
    with engine.connect() as db:
        logged = db.execute(sa.text("SELECT count(*) FROM predictions")).scalar()
        labelled = db.execute(sa.text("SELECT count(*) FROM feedback")).scalar()
    engine.dispose()
    assert logged == answered  # every worker's predictions, flushed before exit
    assert labelled == 30
    assert not list(Path(workers_env["TMPDIR"]).glob("mnistops-serve-*"))  # cleaned up


def _grpc_predictions(port: int, mnist: Mnist, digits: list[int]) -> int:
    """The first images again through tritonclient.grpc, a new channel each: the digits
    /predict gave (``digits``) come back; how many calls were made."""
    import numpy as np
    import tritonclient.grpc as triton

    calls = 10
    for i in range(calls):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("pixels", [1, 784], "UINT8")
        tensor.set_data_from_numpy(np.asarray(mnist.x_test[i], np.uint8).reshape(1, 784))
        result = client.infer("mnist-classifier", [tensor])
        assert int(result.as_numpy("label")[0]) == digits[i]
        client.close()
    return calls


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes()
    except FileNotFoundError:
        return b"zombie"


def _versions(url: str, count: int) -> Counter[str]:
    with _fresh(url) as client:
        return Counter(
            client.post("/predict", json={"image": [[0.0] * 28] * 28}).json()["model_version"]
            for _ in range(count)
        )


def test_admin_reload_on_one_worker_reaches_every_worker(
    two_version_home: Settings, workers_env: dict[str, str]
) -> None:
    from mnistops.registry import promote

    env = {**workers_env, "MNISTOPS_ADMIN_TOKEN": TOKEN}
    model = "models:/mnist-classifier@champion"
    with run_server(model, free_port(), two_version_home.home, env) as srv:
        assert _versions(srv.url, 20) == {"1": 20}
        promote(two_version_home, "2")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = srv.client().post("/admin/reload", headers=auth).json()
        assert answer["changed"] is True, answer
        deadline = time.monotonic() + 20
        while (seen := _versions(srv.url, 20)) != {"2": 20} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen == {"2": 20}
        text = srv.client().get("/metrics").text
        assert 'mnistops_model_info{name="mnist-classifier",version="2"} 1.0' in text
        assert 'version="1"} 1.0' not in text.split("mnistops_model_info")[-1].split("#")[0]


def test_a_killed_worker_is_started_again_and_the_service_goes_on(
    trained_bundle: ModelBundle, tmp_path: Path, workers_env: dict[str, str]
) -> None:
    with run_server(str(trained_bundle.path), free_port(), tmp_path, workers_env) as srv:
        before = set(_children(srv.process.pid))
        with _fresh(srv.url) as client:
            for _ in range(10):
                client.get("/v2/health/ready")
            victim = _worker_pids(workers_env, before)[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = set(_children(srv.process.pid))
                if victim not in now and len(now - before) >= 1:
                    break
                time.sleep(0.2)
            assert victim not in now and now - before, (before, now)
            time.sleep(1.0)
            statuses = Counter(
                client.post("/predict", json={"image": [[0.0] * 28] * 28}).status_code
                for _ in range(40)
            )
            text = client.get("/metrics").text
        assert statuses == {200: 40}
        assert _sample(text, r"^mnistops_requests_in_flight (\S+)$") == [1.0]


def _worker_pids(env: dict[str, str], children: set[int]) -> list[int]:
    """The workers among ``children``: those with a metrics file of their own."""
    folder = _metrics_dir(env)
    pids = {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("*.db")}
    return sorted(pids & children)


def test_a_worker_that_cannot_load_the_model_ends_the_start_in_one_line(
    trained_bundle: ModelBundle, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained_bundle.path, broken)
    (broken / ONNX_FILE).write_bytes(b"not an onnx file")
    result = subprocess.run(
        [sys.executable, "-m", "mnistops", "serve", "--model", str(broken), "--workers", "2"],
        env={
            **os.environ,
            "MNISTOPS_HOME": str(tmp_path / "home"),
            "MNISTOPS_PORT": str(free_port()),
            "MNISTOPS_GRPC_PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed to start" in errors[0], result.stderr


def test_a_killed_monitor_is_started_again_and_every_worker_reconnects(
    trained_bundle: ModelBundle, tmp_path: Path, workers_env: dict[str, str]
) -> None:
    from bench.servers import niceness

    with run_server(str(trained_bundle.path), free_port(), tmp_path, workers_env) as srv:
        children = set(_children(srv.process.pid))
        (monitor,) = [pid for pid in children if niceness(pid) > 0]  # it yields to serving
        os.kill(monitor, signal.SIGKILL)
        with _fresh(srv.url) as client:
            deadline = time.monotonic() + 30
            while True:  # predictions go on throughout; the new monitor counts from zero
                answer = client.post("/predict", json={"image": [[0.0] * 28] * 28})
                assert answer.status_code == 200, answer.text
                drift = client.get("/monitoring/drift").json()
                if drift.get("observed", 0) >= 20:
                    break
                assert time.monotonic() < deadline, drift
                time.sleep(0.1)
            assert monitor not in set(_children(srv.process.pid))
            # both workers reach the new one: 40 predictions on fresh connections all counted
            before = drift["observed"]
            for _ in range(40):
                client.post("/predict", json={"image": [[0.0] * 28] * 28})
            deadline = time.monotonic() + 5
            while client.get("/monitoring/drift").json()["observed"] < before + 40:
                assert time.monotonic() < deadline
                time.sleep(0.1)
