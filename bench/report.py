"""The markdown of the benchmark results (bench/results.md, bench/stress.md), verdicts included."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from bench.load import Load
from bench.results import (
    BATCHING_OFF,
    MLSERVER,
    MNISTOPS,
    BatchResult,
    DriftResult,
    EstimateResult,
    PeersResult,
    Results,
    ServingResult,
    StressResult,
    TrainingResult,
    WorkerRun,
    WorkersResult,
)
from bench.targets import (
    PEER_CONCURRENCY,
    PEER_TARGET_SERVERS,
    best_peer,
    figures,
    gain,
    monitoring_cost,
    target,
    v2_json_vs_mlserver,
)

K = TypeVar("K")


def report(results: Results, date: str | None = None) -> str:
    """The markdown of ``results``: bench/results.md, or bench/stress.md for the soak alone."""
    found = figures(results)
    lines = _header(results.stress_only, date or time.strftime("%Y-%m-%d"))
    if results.training:
        lines += _training(results.training, found)
    if results.serving:
        lines += _serving(results.serving, found)
    if results.servers:
        lines += _asgi_servers(results.servers)
    if results.batch:
        lines += _batch(results.batch, found)
    if results.scoring:
        lines += results.scoring.markdown()
    if results.peers:
        lines += _peers(results.peers, found)
    if results.workers:
        lines += _workers(results.workers)
    if results.estimate:
        lines += _estimate(results.estimate, found)
    if results.drift:
        lines += _drift(results.drift, found)
    if results.stress:
        lines += _stress(results.stress)
    return "\n".join(lines + _reproduce(results.stress_only))


def target_line(name: str, value: float, detail: str = "") -> str:
    """A bullet: what is measured, the figure, and whether it meets its target."""
    held = target(name)
    return f"- {held.measures}{detail}: **{held.unit.value(value)}** ({held.verdict(value)})"


def unmeasured_line(name: str, reason: str) -> str:
    """A target's bullet when its figure could not be measured, and why."""
    held = target(name)
    return f"- {held.measures}: not measured, {reason} ({held.unmeasured()})"


def load_table(
    first: str, rows: Mapping[str, Mapping[K, Load]], columns: Mapping[str, K]
) -> list[str]:
    """A markdown table: one row per name, req/s and p99 for each column (title: key)."""
    lines = [
        f"| {first} | " + " | ".join(f"{t} req/s | {t} p99 ms" for t in columns) + " |",
        "|---|" + "---:|---:|" * len(columns),
    ]
    for name, loads in rows.items():
        cells = " | ".join(f"{loads[k].rps:,.0f} | {loads[k].p99_ms:.2f}" for k in columns.values())
        lines.append(f"| {name} | {cells} |")
    return lines


def machine() -> str:
    """CPU model, cores, Python and OS of this machine."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def _header(stress_only: bool, date: str) -> list[str]:
    return [
        "# Stress results" if stress_only else "# Benchmark results",
        "",
        f"Measured by `make {'stress' if stress_only else 'bench'}` on {date}: {machine()}.",
        "Every figure below comes from the same run; ratios compare runs made minutes apart "
        "on the same machine. Load is `wrk -t1` on loopback, sharing the machine's cores "
        "with the server.",
        "",
    ]


def _training(training: TrainingResult, found: dict[str, float]) -> list[str]:
    lab, ours = training.lab, training.ours
    return [
        "## Training: the lab's script against `mnistops train --model mlp`",
        "",
        f"Same recipe (MLP 512, dropout 0.2, Adam, 5 epochs, batch 128, 10 % validation), "
        f"medians of {training.reps} interleaved repetitions (seeds 0..). Fit time is "
        "the sum of the epochs' wall times in both; whole-process time includes imports, "
        "and for mnistops the MLflow logging, ONNX export with its parity check, plots and "
        "registration.",
        "",
        "| | fit time (s) | test accuracy | whole process (s) |",
        "|---|---:|---:|---:|",
        f"| lab script (TensorFlow) | {lab.fit_seconds:.2f} | {lab.test_accuracy:.4f} "
        f"| {lab.wall_seconds:.1f} |",
        f"| mnistops (Keras 3 on JAX) | {ours.fit_seconds:.2f} | "
        f"{ours.test_accuracy:.4f} | {ours.wall_seconds:.1f} |",
        *(
            f"| mnistops `--model {name}` | {run.fit_seconds:.2f} | {run.test_accuracy:.4f} "
            f"| {run.wall_seconds:.1f} |"
            for name, run in training.recipes.items()
        ),
        "",
        target_line("fit_time_ratio", found["fit_time_ratio"]),
        target_line("accuracy_lost", found["accuracy_lost"]),
        *(
            target_line(name, found[name])
            for name in ("fast_accuracy", "fast_fit")
            if name in found
        ),
        "",
    ]


def _serving(serving: ServingResult, found: dict[str, float]) -> list[str]:
    paced = f" (paced at {serving.paced_target_rps:,.0f} req/s, got {serving.paced.rps:,.0f})"
    details = {"paced_p99": paced}
    names = ("vs_lab_flask", "vs_mlflow_serve", "vs_noop_route", "paced_p99", "exec_to_ready")
    return [
        "## Online serving: one image, JSON body",
        "",
        *_serving_tables(serving),
        "",
        "Exec-to-ready is the time from starting the process to its first answered "
        f"prediction (mnistops: median of {serving.ready_starts} starts from a local model "
        "folder).",
        "",
        *(target_line(name, found[name], details.get(name, "")) for name in names),
        "",
        "`mlflow models serve` serves the registered version's default flavour, the same "
        "ONNX file through onnxruntime, from the project's environment. The no-op route "
        "reads the body and answers `{}`; `/predict` also decodes 784 JSON numbers into an "
        "array (about 30 µs, a fifth of the no-op "
        "route's whole cost per request here), runs the model, hands the prediction to "
        "the monitor and answers ten probabilities.",
        "",
        *_variants(serving.variants, found),
    ]


def _serving_tables(serving: ServingResult) -> list[str]:
    lines = ["| server | c | req/s | p50 ms | p99 ms | failed |", "|---|---:|---:|---:|---:|---:|"]
    for name, loads in serving.loads.items():
        lines += [
            f"| {name} | {c} | {load.rps:,.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} "
            f"| {load.bad} |"
            for c, load in loads.items()
        ]
    lines += ["", "| server | exec-to-ready (s) | resident memory after load (MB) |"]
    lines.append("|---|---:|---:|")
    lines += [f"| {n} | {s.ready_s:.2f} | {s.rss_mb:.0f} |" for n, s in serving.startup.items()]
    return lines


def _variants(variants: dict[str, dict[int, Load]], found: dict[str, float]) -> list[str]:
    levels = next(iter(variants.values()))
    return [
        "### Batching and monitoring, on and off",
        "",
        "Medians of alternated runs (each a fresh server).",
        "",
        *load_table("variant", variants, {f"c={c}": c for c in levels}),
        "",
        target_line(
            "monitoring_cost",
            found["monitoring_cost"],
            f" ({_by_concurrency(monitoring_cost(variants))})",
        ),
        "  (the monitor process's CPU: with wrk on the same two cores, every cycle it "
        "uses is taken from the server; at c=1, where the cores are not saturated, it "
        "costs little)",
        f"- batching changes throughput by {_by_concurrency(gain(variants, BATCHING_OFF))}",
        "",
    ]


def _by_concurrency(shares: Mapping[int, float]) -> str:
    return ", ".join(f"{share:+.1%} at c={c}" for c, share in shares.items())


def _asgi_servers(servers: dict[str, dict[str, Load]]) -> list[str]:
    keys = list(next(iter(servers.values())))
    return [
        "### ASGI server",
        "",
        "The same FastAPI app under uvicorn (uvloop, httptools; what `mnistops serve` "
        "runs) and granian (one worker, uvloop), medians of alternated runs.",
        "",
        *load_table("server", servers, {k: k for k in keys}),
        "",
    ]


def _batch(batch: BatchResult, found: dict[str, float]) -> list[str]:
    return [
        "## Batch inference: the predictor against numpy float32 GEMM",
        "",
        f"{batch.images:,} test images in batches of {batch.batch}, "
        f"{batch.threads} onnxruntime threads; the model costs "
        f"{batch.flops_per_image / 1e6:.2f} MFLOP per image. numpy runs only the "
        "model's matrix products on the same batches (best of repeats for both).",
        "",
        f"- predictor: {batch.ours_images_per_s:,.0f} images/s = "
        f"{batch.ours_gflops:.1f} GFLOP/s; numpy GEMM: {batch.gemm_gflops:.1f} GFLOP/s",
        target_line("gemm_share", found["gemm_share"]),
        f"- `mnistops predict x_test.npy --out predictions.csv` whole command: "
        f"{batch.cli_seconds:.2f} s for {batch.images:,} images",
        "",
    ]


def _peers(peers: PeersResult, found: dict[str, float]) -> list[str]:
    return [
        "## Serving peers: the same ONNX file under MLServer, BentoML, LitServe and a bare app",
        "",
        "Each server runs the ONNX file mnistops serves through onnxruntime (one thread per "
        "call), from a venv of its own installed from PyPI, in its best configuration "
        f"measured here. Every server was started afresh in each round ({peers.repeats} "
        "interleaved rounds); the figures are the medians. The request is one image: each "
        "server's JSON form of it, and for mnistops also the Open Inference Protocol's "
        "infer, as a binary tensor (a JSON header, then 3,136 bytes of float32) and in JSON.",
        "",
        "| server | configuration | exec-to-ready (s) | memory after load (MB) |",
        "|---|---|---:|---:|",
        *(_peer_row(name, peers) for name in peers.servers),
        "",
        "| server | request | c | req/s | p50 ms | p99 ms | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {kind} | {c} | {load.rps:,.0f} | {load.p50_ms:.2f} "
            f"| {load.p99_ms:.2f} | {load.bad} |"
            for name, server in peers.servers.items()
            for kind, loads in server.loads.items()
            for c, load in loads.items()
        ),
        "",
        *_peer_targets(peers, found),
        "",
    ]


def _peer_row(name: str, peers: PeersResult) -> str:
    server = peers.servers[name]
    configuration = server.configuration
    if server.failure:
        shown = server.failure.replace("|", "\\|")
        configuration += f". **{'Not measured' if not server.loads else 'Failed'}**: `{shown}`"
    if server.startup is None:
        return f"| {name} | {configuration} | – | – |"
    startup = server.startup
    return f"| {name} | {configuration} | {startup.ready_s:.2f} | {startup.rss_mb:.0f} |"


def _peer_targets(peers: PeersResult, found: dict[str, float]) -> list[str]:
    best = best_peer(peers)
    details = {"vs_best_peer": f" ({best[0]}, {best[1]:,.0f} req/s)" if best else ""}
    lines = []
    for name, needed in PEER_TARGET_SERVERS.items():
        if name in found:
            lines.append(target_line(name, found[name], details.get(name, "")))
            continue
        missing = [server for server in needed if peers.json_loads(server) is None]
        reason = f"{' and '.join(missing)} not measured" if missing else "its request failed"
        lines.append(unmeasured_line(name, reason))
    v2 = v2_json_vs_mlserver(peers)
    if v2:
        ratios = ", ".join(f"{ratio:.2f}× at c={c}" for c, ratio in v2.items())
        lines.append(f"- {MNISTOPS}' v2 JSON infer vs {MLSERVER}'s on the same model: {ratios}")
    ours = peers.servers.get(MNISTOPS)
    if ours and ours.json_loads and PEER_CONCURRENCY in ours.json_loads:
        others = {
            name: loads[PEER_CONCURRENCY].rps
            for name in peers.servers
            if name != MNISTOPS and (loads := peers.json_loads(name))
        }
        ours_rps = ours.json_loads[PEER_CONCURRENCY].rps
        ratios = ", ".join(f"{ours_rps / rps:.2f}× {name}" for name, rps in others.items())
        if ratios:
            lines.append(f"- `/predict` at c={PEER_CONCURRENCY} against each: {ratios}")
    return lines


def _estimate(estimate: EstimateResult, found: dict[str, float]) -> list[str]:
    return [
        "## Accuracy without labels",
        "",
        f"The champion's ONNX file on {estimate.windows} windows of {estimate.window} MNIST "
        "test digits per scenario, shifted; the estimate is ATC (the share of images whose "
        "temperature-scaled confidence is above the threshold fitted on held-out data), "
        "an image whose input statistics fall far outside the held-out range counting as "
        "wrong. "
        f"Temperature {estimate.temperature:.3f}; held-out ECE {estimate.ece_before:.4f} "
        f"before scaling, {estimate.ece_after:.4f} after.",
        "",
        "| scenario | true accuracy | estimated | mean abs error (points) |",
        "|---|---:|---:|---:|",
        *(
            f"| {r.scenario} | {r.true:.3f} | {r.estimated:.3f} | {r.error * 100:.1f} |"
            for r in estimate.rows
        ),
        "",
        target_line("estimate_error", found["estimate_error"]),
        "",
    ]


def _drift(drift: DriftResult, found: dict[str, float]) -> list[str]:
    windows = ", ".join(str(w) for w in drift.windows)
    return [
        "## Drift alarms",
        "",
        f"The detector serving uses, at its default expected run time between false alarms "
        f"({drift.ert:,} predictions): threshold {drift.threshold:.2f} on the largest score "
        f"over every test and window ({windows} predictions; tolerance {drift.tolerance} "
        "standard deviations), calibrated on bootstrap streams of the held-out reference. "
        "Streams drawn from the champion's scores of the 10,000 MNIST test digits (shifted) "
        "or of Fashion-MNIST's test images.",
        "",
        f"- clean MNIST test streams: {drift.clean_alarms} false alarm(s) in "
        f"{drift.clean_predictions:,} predictions: one per {drift.measured_ert:,.0f}",
        target_line("drift_ert", found["drift_ert"]),
        "",
        f"Detection delay, in shifted predictions after {drift.repeats} clean warm-ups "
        "(the longest window full):",
        "",
        "| shift | median | 95th percentile | missed | target (95th) |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r.scenario} | {r.median:.0f} | {r.p95:.0f} | {r.missed} | "
            f"{'' if r.target is None else f'≤ {r.target:,}'} |"
            for r in drift.rows
        ),
        "",
        target_line("drift_delay", found["drift_delay"]),
        "",
    ]


SCALING_CORES = (8, 16)


def expected_rps(run: WorkerRun, cores: int) -> tuple[float, str]:
    """Expected /predict throughput with one worker per core on ``cores`` cores (the load
    coming from elsewhere), from the CPU a request costs; and what bounds it.

    Every process but the monitor scales with the workers, so the cores bound the rate at
    ``cores / CPU per request``; the monitor is one process for all of them, so it bounds
    the rate at ``1 / its CPU per request``.
    """
    by_cores = cores * 1000 / run.server_cpu_ms if run.server_cpu_ms else float("inf")
    by_monitor = 1000 / run.monitor_cpu_ms if run.monitor_cpu_ms else float("inf")
    if by_monitor < by_cores:
        return by_monitor, "the one monitor process"
    return by_cores, "the cores"


def _workers(workers: WorkersResult) -> list[str]:
    counts = sorted(workers.runs)
    levels = list(workers.runs[counts[0]].loads)
    rows = {f"--workers {n}": workers.runs[n].loads for n in counts}
    top = max(counts)
    base, many = workers.runs[counts[0]], workers.runs[top]
    ratios = ", ".join(
        f"{many.loads[c].rps / base.loads[c].rps:.2f}× at c={c}"
        for c in levels
        if base.loads[c].rps
    )
    lines = [
        "## Several workers per host",
        "",
        f"`mnistops serve --workers N` on this machine's {workers.cores} cores, wrk on the "
        f"same cores (it takes one of them); {workers.repeats} alternated rounds, medians. "
        "CPU per request is every process of the server (supervisor, workers, monitor) over "
        f"the c={levels[-1]} run, from /proc.",
        "",
        *load_table("workers", rows, {f"c={c}": c for c in levels}),
        "",
        "| workers | CPU ms per request | of which the monitor |",
        "|---|---:|---:|",
        *(
            f"| {n} | {workers.runs[n].server_cpu_ms:.3f} | {workers.runs[n].monitor_cpu_ms:.3f} |"
            for n in counts
        ),
        "",
        f"- --workers {top} against --workers {counts[0]}: {ratios}",
    ]
    for cores in SCALING_CORES:
        rps, bound = expected_rps(many, cores)
        lines.append(
            f"- expected on {cores} cores with --workers {cores} (load from another host): "
            f"about {rps:,.0f} req/s, bounded by {bound}"
        )
    lines += [
        "  (the estimate assumes what the figures above show: the workers share nothing but "
        "the monitor process, so their CPU per request stays as measured; it leaves out "
        "memory bandwidth and the kernel's spreading of connections)",
        "",
    ]
    return lines


def _stress(stress: StressResult) -> list[str]:
    return [
        "## Stress",
        "",
        f"{stress.seconds:g} s at c={stress.connections} of good and bad bodies, a hot reload "
        f"halfway: {stress.responses_4xx:,.0f} answers 4xx, {stress.responses_5xx:,.0f} 5xx; "
        f"reload {stress.reload_status}; resident memory {stress.rss_start_mb:.0f} → "
        f"{stress.rss_end_mb:.0f} MB; alive afterwards: {stress.alive}.",
        "",
        "```",
        stress.wrk_output.strip(),
        "```",
        "",
    ]


def _reproduce(stress_only: bool) -> list[str]:
    if stress_only:
        return ["Reproduce with `make stress` (5 minutes).", ""]
    return [
        "## How to reproduce",
        "",
        "`make bench` (about 30 minutes; the first run also builds `bench/.work/labenv` with "
        "`tensorflow-cpu`, and the peers' venvs in `bench/.work/peers`). Parts: "
        "`python -m bench.run --only training serving servers batch peers workers estimate drift`.",
        "",
    ]
