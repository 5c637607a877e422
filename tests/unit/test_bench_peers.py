"""The peers suite's pure logic: request bodies, PyPI-only installs, the best peer, the
targets and the report, on made-up figures: no servers, no wrk, no pip."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench import peers as suite
from bench.load import Load, started
from bench.report import report
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
    Results,
    Startup,
)
from bench.targets import (
    PEER_TARGET_SERVERS,
    best_peer,
    figures,
    target,
    v2_json_vs_mlserver,
    verdicts,
)

from mnistops.serve.tensors import HEADER_LENGTH, tensor_pixels

pytestmark = pytest.mark.unit

# pixel values whose float32 bytes hold a line feed (0x0a): a binary body is not a line
PIXELS = [round(i / 783, 4) for i in range(784)]
PIXELS[0] = float(np.frombuffer(b"\x0a\x0a\x0a\x3f", "<f4")[0])


def _loads(rps: dict[int, float], p99: float = 2.0) -> dict[int, Load]:
    return {c: Load(rate, 1.0, p99, 1000, 0) for c, rate in rps.items()}


def _flat(rps: float, p99: float = 2.0) -> dict[int, Load]:
    return _loads({1: rps, 8: rps, 32: rps}, p99)


def _peers(**overrides: PeerServer) -> PeersResult:
    """mnistops at 3000 req/s at c=8 (1500 at c=1), its peers slower, the bare app faster."""
    servers = {
        MNISTOPS: PeerServer(
            "defaults",
            PREDICT_JSON,
            {
                PREDICT_JSON: _loads({1: 1500, 8: 3000, 32: 3100}, p99=4.5),
                V2_BINARY: _loads({1: 1600, 8: 3900, 32: 4000}),
                V2_JSON: _loads({1: 1400, 8: 2000, 32: 2100}),
            },
            Startup(1.1, 300),
        ),
        MLSERVER: PeerServer("mlserver", V2_JSON, {V2_JSON: _flat(1000)}, Startup(1.5, 170)),
        BENTOML: PeerServer("bentoml", PREDICT_JSON, {PREDICT_JSON: _flat(500)}),
        LITSERVE: PeerServer("litserve", PREDICT_JSON, {PREDICT_JSON: _flat(600)}),
        BARE_APP: PeerServer("bare", PREDICT_JSON, {PREDICT_JSON: _flat(2000)}),
    }
    return PeersResult(2, servers | overrides)


def _failed(name: str, failure: str) -> PeerServer:
    return PeerServer(f"{name} configuration", PREDICT_JSON, failure=failure)


def test_the_binary_v2_body_is_a_json_header_then_float32_bytes() -> None:
    request = suite.v2_binary_request("http://127.0.0.1:1/v2/models/m/infer", PIXELS)
    length = int(request.headers[HEADER_LENGTH])
    header = json.loads(request.body[:length])
    assert header == {
        "inputs": [
            {
                "name": "pixels",
                "shape": [1, 784],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 3136},
            }
        ]
    }
    data = request.body[length:]
    np.testing.assert_array_equal(np.frombuffer(data, "<f4"), np.asarray(PIXELS, np.float32))
    assert request.binary and b"\n" in request.body  # so wrk must get it hex-encoded


def test_mnistops_reads_both_v2_bodies_as_the_same_image() -> None:
    binary = suite.v2_binary_request("http://127.0.0.1:1/", PIXELS)
    length = int(binary.headers[HEADER_LENGTH])
    from_binary = tensor_pixels(
        json.loads(binary.body[:length]), max_images=1, binary=binary.body[length:]
    )
    from_json = tensor_pixels(json.loads(suite.v2_json_body(PIXELS)), max_images=1)
    np.testing.assert_array_equal(from_binary, np.asarray([PIXELS], np.float32))
    np.testing.assert_array_equal(from_json, from_binary)


def test_wrk_refuses_a_multi_line_json_body_and_a_header_with_a_line_break() -> None:
    url = "http://127.0.0.1:1/"
    lines = started(url, [b"{\n}"], connections=1, seconds=1)
    with pytest.raises(ValueError, match="each on one line"), lines:
        pass
    broken = {"Inference-Header-Content-Length": "1\r\nX-Other: 2"}
    header = started(url, [b"{}"], connections=1, seconds=1, headers=broken)
    with pytest.raises(ValueError, match="line break"), header:
        pass


def test_pip_runs_from_pypi_alone() -> None:
    environ = {
        "PIP_FIND_LINKS": "/wheels",
        "PIP_INDEX_URL": "file:///index",
        "PIP_EXTRA_INDEX_URL": "file:///more",
        "PIP_CERT": "ca.pem",
        "PATH": "/bin",
    }
    assert suite.pypi_env(environ) == {
        "PIP_CERT": "ca.pem",
        "PATH": "/bin",
        "PIP_CONFIG_FILE": os.devnull,
    }


def test_the_error_line_is_pips_error_or_the_last_line() -> None:
    pip = "Collecting x\nERROR: No matching distribution found for x==9\nERROR: more\n"
    assert suite.error_line(pip) == "ERROR: No matching distribution found for x==9"
    traceback = "Traceback (most recent call last):\n  File ...\nImportError: no onnxruntime\n\n"
    assert suite.error_line(traceback) == "ImportError: no onnxruntime"
    assert suite.error_line(" \n") == "no output"


def _peer(requirements: tuple[str, ...] = ("mlserver==1.7.1", "uvloop<0.22")) -> suite.Peer:
    return suite.Peer(
        MLSERVER, "mlserver", "mlserver", requirements, "config", V2_JSON, suite.mlserver_launch
    )


def test_a_venv_whose_marker_holds_its_requirements_is_not_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "PEERS_WORK", tmp_path)
    (tmp_path / "mlserver").mkdir()
    (tmp_path / "mlserver" / suite.MARKER).write_text("mlserver==1.7.1\nuvloop<0.22\n")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip ran")

    monkeypatch.setattr(subprocess, "run", never)
    assert suite.ensure_peer_env(_peer()) == tmp_path / "mlserver" / "bin"


def test_other_requirements_rebuild_the_venv_from_pypi_and_mark_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "PEERS_WORK", tmp_path)
    venv = tmp_path / "mlserver"
    venv.mkdir()
    (venv / suite.MARKER).write_text("mlserver==1.6.0\n")
    (venv / "stale").write_text("")
    calls: list[tuple[list[str], dict[str, str]]] = []

    def run(argv: list[str], *, env: dict[str, str], **kwargs: Any) -> Any:
        calls.append((argv, env))
        if argv[1:3] == ["-m", "venv"]:
            Path(argv[3]).mkdir()
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels")
    assert suite.ensure_peer_env(_peer()) == venv / "bin"
    assert not (venv / "stale").exists()
    assert [argv[1:3] for argv, _ in calls] == [["-m", "venv"], ["-m", "pip"], ["-m", "pip"]]
    assert calls[-1][0][-2:] == ["mlserver==1.7.1", "uvloop<0.22"]
    assert all("PIP_FIND_LINKS" not in env and env["PIP_CONFIG_FILE"] for _, env in calls)
    assert (venv / suite.MARKER).read_text() == "mlserver==1.7.1\nuvloop<0.22\n"


def test_a_failed_install_says_pips_error_and_leaves_no_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "PEERS_WORK", tmp_path)

    def run(argv: list[str], **kwargs: Any) -> Any:
        if argv[1:3] == ["-m", "venv"]:
            Path(argv[3]).mkdir()
        failed = "install" in argv and "mlserver==9" in argv
        stderr = "ERROR: No matching distribution found for mlserver==9" if failed else ""
        return subprocess.CompletedProcess(argv, 1 if failed else 0, "", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(suite.PeerError, match="install failed: ERROR: No matching distribution"):
        suite.ensure_peer_env(_peer(("mlserver==9",)))
    assert not (tmp_path / "mlserver" / suite.MARKER).exists()


def test_a_server_is_the_median_of_its_rounds_over_the_requests_of_every_round() -> None:
    rounds = suite.Rounds(
        loads=[
            {PREDICT_JSON: _flat(100), V2_BINARY: _flat(900)},
            {PREDICT_JSON: _flat(300)},
            {PREDICT_JSON: _flat(200), V2_BINARY: _flat(800)},
        ],
        startups=[Startup(1.0, 100), Startup(3.0, 300), Startup(2.0, 200)],
        failure="v2 infer, binary tensor: answered 500, not 200",
    )
    server = suite.peer_server("config", PREDICT_JSON, rounds)
    assert list(server.loads) == [PREDICT_JSON]
    assert server.loads[PREDICT_JSON][8] == Load(200, 1.0, 2.0, 3000, 0)
    assert server.startup == Startup(2.0, 200)
    assert server.failure == rounds.failure
    unstarted = suite.peer_server("config", PREDICT_JSON, suite.Rounds(failure="exited"))
    assert unstarted.json_loads is None and unstarted.failure == "exited"


def test_the_best_peer_is_the_fastest_framework_not_the_bare_app() -> None:
    assert best_peer(_peers()) == (MLSERVER, 1000)
    assert best_peer(_peers(), concurrency=1) == (MLSERVER, 1000)
    faster = PeerServer("b", PREDICT_JSON, {PREDICT_JSON: _loads({1: 10, 8: 1200, 32: 10})})
    assert best_peer(_peers(**{BENTOML: faster})) == (BENTOML, 1200)


def test_there_is_no_best_peer_while_a_framework_is_unmeasured() -> None:
    assert best_peer(_peers(**{LITSERVE: _failed(LITSERVE, "exited")})) is None


def test_the_peer_targets_are_ratios_within_the_run() -> None:
    found = figures(Results(peers=_peers()))
    assert found == {
        "peers_predict_p99": 4.5,
        "vs_best_peer": 3.0,  # 3000 / MLServer's 1000 at c=8
        "vs_bare_app": 0.75,  # 1500 / 2000 at c=1
        "v2_binary_gain": 1.3,  # 3900 / 3000 at c=8
    }
    assert verdicts(Results(peers=_peers())) == {
        "peers_predict_p99": True,
        "vs_best_peer": True,
        "vs_bare_app": False,
        "v2_binary_gain": True,
    }
    assert v2_json_vs_mlserver(_peers()) == {1: 1.4, 8: 2.0, 32: 2.1}


def test_an_unmeasured_peer_takes_only_its_own_targets_away() -> None:
    result = _peers(**{BARE_APP: _failed(BARE_APP, "install failed: ERROR: no wheel")})
    assert set(figures(Results(peers=result))) == set(PEER_TARGET_SERVERS) - {"vs_bare_app"}
    no_mnistops = _peers(**{MNISTOPS: _failed(MNISTOPS, "exited before it was ready")})
    assert figures(Results(peers=no_mnistops)) == {}


def test_the_report_names_each_configuration_and_every_peer_target_once() -> None:
    rendered = report(Results(peers=_peers()), date="2026-01-01")
    assert "## Serving peers" in rendered and "## How to reproduce" in rendered
    for name, server in _peers().servers.items():
        assert f"| {name} | {server.configuration} |" in rendered
    for name in PEER_TARGET_SERVERS:
        measures = target(name).measures
        assert rendered.count(f"- {measures}") == 1
    assert "(MLServer, 1,000 req/s): **3.00×** (target ≥ 2.5×: met)" in rendered
    assert "**0.75×** (target ≥ 0.85×: **not met**)" in rendered
    assert "1.40× at c=1, 2.00× at c=8, 2.10× at c=32" in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| mnistops | ")]
    assert len(rows) == 1 + 3 * 3  # its configuration, three requests at three concurrencies


def test_the_report_says_why_a_peer_and_its_targets_were_not_measured() -> None:
    result = _peers(**{LITSERVE: _failed(LITSERVE, "exited before it was ready: ImportError: zmq")})
    rendered = report(Results(peers=result))
    row = next(line for line in rendered.splitlines() if line.startswith(f"| {LITSERVE} |"))
    assert "**Not measured**: `exited before it was ready: ImportError: zmq`" in row
    assert row.endswith("| – | – |")
    line = next(
        x for x in rendered.splitlines() if x.startswith(f"- {target('vs_best_peer').measures}")
    )
    assert line.endswith("not measured, LitServe not measured (target ≥ 2.5×: not measured)")
    assert "**1.00×**" not in rendered and "(target ≥ 0.85×: **not met**)" in rendered


def test_a_failure_with_a_pipe_does_not_break_the_table() -> None:
    result = _peers(**{BENTOML: _failed(BENTOML, "ERROR: a | b")})
    row = next(x for x in report(Results(peers=result)).splitlines() if x.startswith("| BentoML"))
    assert row.count(" | ") == 3 and "a \\| b" in row


def test_the_peers_suite_alone_is_not_the_soak() -> None:
    assert not Results(peers=_peers()).stress_only
