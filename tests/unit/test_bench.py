"""The benchmark's report, targets and wrk parsing, on made-up figures: no servers, no wrk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench.load import RESULT_PREFIX, Load, median_load, parse_output, started
from bench.report import expected_rps, report
from bench.results import (
    PREDICT_JSON,
    V2_BINARY,
    BatchResult,
    DriftResult,
    DriftRow,
    EstimateResult,
    EstimateRow,
    PeerServer,
    PeersResult,
    Results,
    ServingResult,
    Startup,
    StressResult,
    TrainingResult,
    TrainRun,
    WorkerRun,
    WorkersResult,
)
from bench.targets import TARGETS, Target, figures, target, verdicts

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"
WRK_STDOUT = f"""Running 1s test @ http://127.0.0.1:1234/predict
  1 threads and 2 connections
  2455 requests in 1.10s, 1.30MB read
  Non-2xx or 3xx responses: 5
Requests/sec:   2232.19
{RESULT_PREFIX}{{"requests": 2455, "duration_us": 1100000, "p50_us": 489, "p99_us": 6916, \
"non_2xx": 5, "socket_errors": 2}}
"""


def _loads(rps: float, p99: float = 2.0) -> dict[int, Load]:
    return {c: Load(rps * (1 + c / 100), 1.0, p99, 1000, 0) for c in (1, 8, 32)}


def _results() -> Results:
    """Figures like those of bench/results.md: some targets met, some not."""
    variants = {
        "batching off": _loads(2100),
        "monitoring off": _loads(2200),
        "defaults": _loads(2000),
    }
    serving = ServingResult(
        loads={
            "mnistops": _loads(3000),
            "no-op route": _loads(6000),
            "lab Flask app": _loads(20),
            "mlflow models serve": _loads(40),
        },
        startup={name: Startup(0.7, 300) for name in ("mnistops", "lab Flask app")},
        ready_starts=5,
        paced_target_rps=1500,
        paced=Load(1511, 1.0, 5.22, 15_000, 0),
        variants=variants,
    )
    peers = PeersResult(
        2,
        {
            "mnistops": PeerServer(
                "defaults",
                PREDICT_JSON,
                {PREDICT_JSON: _loads(3000, p99=4.0), V2_BINARY: _loads(3300)},
            ),
            **{
                name: PeerServer(name, PREDICT_JSON, {PREDICT_JSON: _loads(rps)})
                for name, rps in (
                    ("MLServer", 1000),
                    ("BentoML", 500),
                    ("LitServe", 400),
                    ("bare FastAPI app", 3200),
                )
            },
        },
    )
    return Results(
        training=TrainingResult(
            3,
            TrainRun(12.0, 0.9793, 20.0),
            TrainRun(7.8, 0.9787, 25.0),
            {"fast": TrainRun(121.0, 0.9947, 160.0), "cnn": TrainRun(891.0, 0.995, 920.0)},
        ),
        serving=serving,
        servers={"uvicorn": {"predict c=1": Load(2000, 1, 2, 10, 0)}},
        batch=BatchResult(10_000, 4096, 2, 813_056, 197_745, 160.8, 192.7, 0.72),
        peers=peers,
        workers=WorkersResult(2, 2, {1: _worker_run(3000, 0.5), 2: _worker_run(3600, 0.55)}),
        estimate=EstimateResult(
            500,
            10,
            1.3,
            0.02,
            0.01,
            [EstimateRow("clean", 0.95, 0.94, 0.01), EstimateRow("inverted", 0.2, 0.9, 0.7)],
        ),
        drift=DriftResult(
            1_000_000,
            5.4,
            (50, 200, 1000),
            0.1,
            20_000_000,
            4,
            100,
            [DriftRow("inverted", 3, 4, 0, 100), DriftRow("rotated 15°", 170, 270, 2, None)],
        ),
    )


def _worker_run(rps: float, cpu_ms: float) -> WorkerRun:
    return WorkerRun({c: Load(rps, 1.0, 2.0, 1000, 0) for c in (8, 32)}, cpu_ms, 0.05)


def _headings(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("#")]


def test_report_has_the_sections_of_the_committed_results() -> None:
    committed = (BENCH / "results.md").read_text()
    assert _headings(report(_results())) == _headings(committed)


def test_stress_report_has_the_sections_of_the_committed_stress_results() -> None:
    stress = StressResult(4, 64, "Running 4s test", 130, 140, 200, 10, 0, True)
    rendered = report(Results(stress=stress))
    assert _headings(rendered) == _headings((BENCH / "stress.md").read_text())
    assert "4 s at c=64" in rendered and "Reproduce with `make stress`" in rendered


def test_every_target_is_rendered_once_with_its_verdict() -> None:
    rendered = report(_results(), date="2026-01-01")
    for held in TARGETS:
        line = next(x for x in rendered.splitlines() if x.startswith(f"- {held.measures}"))
        assert re.search(r"\(target [≤≥] .+: (met|\*\*not met\*\*)\)$", line), line
        assert rendered.count(f"- {held.measures}") == 1


def test_verdicts_follow_the_figures() -> None:
    found = verdicts(_results())
    assert found == {
        "fit_time_ratio": True,  # 7.8 / 12.0 = 0.65
        "accuracy_lost": True,  # 0.06 points
        "fast_accuracy": True,  # 99.47 %
        "fast_fit": False,  # 121 s
        "vs_lab_flask": True,  # 150x
        "vs_mlflow_serve": False,  # 75x
        "vs_noop_route": False,  # 50 %
        "paced_p99": False,  # 5.22 ms
        "exec_to_ready": True,  # 0.7 s
        "monitoring_cost": False,  # 1 - 2000 / 2200 = 9 %
        "gemm_share": True,  # 83 %
        "vs_best_peer": True,  # 3000 / MLServer's 1000 at c=8
        "vs_bare_app": True,  # 3000 / 3200 = 0.94 at c=1
        "v2_binary_gain": False,  # 3300 / 3000 = 1.1
        "peers_predict_p99": True,  # 4 ms
        "estimate_error": False,  # (1 + 70) / 2 = 35.5 points
        "drift_ert": True,  # 20 M / 4 alarms = 5 M, over 1 M stated
        "drift_delay": True,  # inverted: 4 of 100
    }


def test_report_writes_each_verdict_from_the_targets_table() -> None:
    rendered = report(_results())
    assert "- fit time ratio mnistops / lab: **0.65** (target ≤ 0.70: met)" in rendered
    assert "**50%** (target ≥ 70 %: **not met**)" in rendered
    assert "**5.22 ms** (target ≤ 5 ms: **not met**)" in rendered
    assert "**0.70 s** (target ≤ 1 s: met)" in rendered


def test_a_figure_on_the_threshold_meets_its_target() -> None:
    unit = target("paced_p99").unit
    assert Target("at most", "≤", 5, unit, "x").met(5.0)
    assert Target("at least", "≥", 5, unit, "x").met(5.0)
    assert not Target("at least", "≥", 5, unit, "x").met(4.99)


def test_only_the_suites_that_ran_have_figures() -> None:
    assert figures(Results()) == {}
    assert set(figures(Results(batch=_results().batch))) == {"gemm_share"}


def test_wrk_output_is_read_from_the_done_hook_json() -> None:
    run = parse_output(WRK_STDOUT)
    assert run.load == Load(rps=2455 / 1.1, p50_ms=0.489, p99_ms=6.916, requests=2455, bad=7)
    assert RESULT_PREFIX not in run.output and "Requests/sec" in run.output


def test_wrk_output_without_the_json_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no line starting"):
        parse_output("Running 1s test @ http://127.0.0.1:1/\n")


def test_median_load_sums_requests_and_failures() -> None:
    loads = [Load(10, 1, 3, 100, 1), Load(30, 2, 5, 300, 0), Load(20, 3, 4, 200, 2)]
    assert median_load(loads) == Load(20, 2, 4, 600, 3)


def test_a_body_over_several_lines_is_refused() -> None:
    body = started("http://127.0.0.1:1/", [b"{\n}"], connections=1, seconds=1)
    with pytest.raises(ValueError, match="each on one line"), body:
        pass


def test_the_scaling_estimate_is_bounded_by_the_cores_or_by_the_one_monitor() -> None:
    cheap_monitor = WorkerRun({}, server_cpu_ms=0.5, monitor_cpu_ms=0.02)
    assert expected_rps(cheap_monitor, 8) == (16_000, "the cores")
    busy_monitor = WorkerRun({}, server_cpu_ms=0.5, monitor_cpu_ms=0.1)
    assert expected_rps(busy_monitor, 8) == (10_000, "the one monitor process")


def test_the_workers_section_gives_the_ratio_and_the_estimates() -> None:
    rendered = report(_results())
    assert "--workers 2 against --workers 1: 1.20× at c=8, 1.20× at c=32" in rendered
    assert "expected on 16 cores with --workers 16" in rendered


def test_the_estimate_section_gives_each_scenario_and_the_mean_error() -> None:
    rendered = report(_results())
    assert "| inverted | 0.200 | 0.900 | 70.0 |" in rendered
    assert "**35.50 points** (target ≤ 3 points: **not met**)" in rendered


def test_drift_targets_read_the_run_time_and_the_slowest_targeted_shift() -> None:
    results = _results()
    assert results.drift is not None
    found = figures(results)
    assert found["drift_ert"] == pytest.approx(5.0)  # 4 alarms in 20 M at 1 M stated
    assert found["drift_delay"] == pytest.approx(0.04)  # the untargeted row is left out
    missed = DriftRow("Fashion-MNIST", 10, 20, 1, 100)
    results.drift.rows.append(missed)
    assert figures(results)["drift_delay"] == float("inf")  # a miss never meets a target
    assert verdicts(results)["drift_delay"] is False


def test_quality_sets_are_pictures_the_image_route_reads() -> None:
    import numpy as np
    from bench.quality import DIGIT_SETS, NOT_DIGIT_SETS

    from mnistops.imaging import normalise_image

    digit = np.zeros((28, 28))
    digit[6:22, 12:16] = 1.0
    rng = np.random.default_rng(0)
    for name, make in DIGIT_SETS.items():
        picture = make(digit, rng)
        assert picture.ndim == 2 and picture.min() >= 0 and picture.max() <= 1, name
        read = normalise_image(picture).reshape(28, 28)
        assert read.sum() > 10, name  # the stroke survives the route
    assert np.median(DIGIT_SETS["photo of grey paper, JPEG"](digit, rng)) > 0.5
    for name, make_other in NOT_DIGIT_SETS.items():
        assert make_other(rng).ndim == 2, name
