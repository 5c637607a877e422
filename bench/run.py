"""Side-by-side benchmarks of mnistops against the lab's own code, `mlflow models serve` and
the serving peers (MLServer, BentoML, LitServe).

Everything is measured in one run on this machine and written, with its targets, to
``bench/results.md``:

- training: the lab's TensorFlow script against ``mnistops train --model mlp``
  (fit time and test accuracy, medians over repetitions);
- online serving with ``wrk`` on loopback (one image, JSON body) at concurrency 1, 8
  and 32: this service, the lab's Flask app, ``mlflow models serve`` on the same
  registered model, and this server's no-op route as the ceiling; exec-to-ready time
  and resident memory of each; batching and monitoring on and off; p99 at half of
  the maximum throughput (paced load);
- batch inference through the predictor against numpy's float32 GEMM throughput;
- the serving peers: MLServer, BentoML, LitServe and a bare FastAPI app on the same ONNX
  file, each from a venv of its own, against ``/predict`` and the Open Inference
  Protocol's infer (binary tensor and JSON), in interleaved rounds;
- ``--workers 1`` against ``--workers 2``, with the CPU each request costs, and from it
  the expected throughput on 8 and 16 cores.

``--stress`` instead runs a long soak: mixed good and bad requests at high
concurrency, a hot reload under load, and checks that the service stays up with
bounded memory and no 5xx.

Run it with ``make bench`` (or ``make stress``); it is never part of ``make test``.
The lab's environment (``tensorflow-cpu``, Flask) is built in ``bench/.work/labenv``, the
peers' in ``bench/.work/peers``, from PyPI.

This module only chooses the suites and their order. The suites are ``training.py``,
``serving.py``, ``batch.py``, ``peers/`` and ``stress.py``; what they return is typed in
``results.py``; ``targets.py`` holds the targets and ``report.py`` writes the markdown.
``servers.py`` starts and stops server processes (for the tests too), ``load.py`` runs
wrk, and ``workspace.py`` holds paths, environments and the model under test.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from bench import batch, drift, estimate, peers, scoring, serving, stress, training
from bench.report import report
from bench.results import Results
from bench.targets import PEER_TARGET_SERVERS, verdicts
from bench.workspace import BENCH, WORK, log

RESULTS = BENCH / "results.md"
STRESS = BENCH / "stress.md"
SUITES = (
    "training",
    "serving",
    "servers",
    "batch",
    "scoring",
    "peers",
    "workers",
    "estimate",
    "drift",
)
ASGI_REPEATS = 2
BATCH_REPEATS = 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--reps", type=int, default=3, help="training repetitions")
    parser.add_argument(
        "--recipes",
        nargs="*",
        default=list(training.RECIPES),
        help="recipes timed beside the lab's MLP (default: fast cnn)",
    )
    parser.add_argument(
        "--scoring-images", type=int, default=scoring.IMAGES, help="images of the scoring suite"
    )
    parser.add_argument(
        "--scoring-pngs", type=int, default=scoring.PNG_IMAGES, help="of them as PNG files"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="each wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="alternated A/B rounds")
    parser.add_argument("--stress", action="store_true", help="run the soak instead")
    parser.add_argument("--stress-seconds", type=float, default=300.0)
    parser.add_argument(
        "--out", type=Path, help="default: bench/results.md, or bench/stress.md with --stress"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is needed: apt-get install wrk")
    return args


def run_suites(args: argparse.Namespace) -> Results:
    """The chosen suites, in the order of :data:`SUITES` (or the soak alone)."""
    if args.stress:
        return Results(stress=stress.bench_stress(args.stress_seconds))
    results = Results()
    if "training" in args.only:
        results.training = training.bench_training(args.reps, tuple(args.recipes))
    if "serving" in args.only:
        results.serving = serving.bench_serving(args.seconds, args.repeats)
    if "servers" in args.only:
        results.servers = serving.bench_asgi_servers(args.seconds, ASGI_REPEATS)
    if "batch" in args.only:
        results.batch = batch.bench_batch(BATCH_REPEATS)
    if "scoring" in args.only:
        results.scoring = scoring.bench_scoring(args.scoring_images, args.scoring_pngs)
    if "peers" in args.only:
        results.peers = peers.bench_peers(args.seconds, args.repeats)
    if "workers" in args.only:
        results.workers = serving.bench_workers(args.seconds, args.repeats)
    if "estimate" in args.only:
        results.estimate = estimate.bench_estimate()
    if "drift" in args.only:
        results.drift = drift.bench_drift()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    out = args.out or (STRESS if args.stress else RESULTS)
    results = run_suites(args)
    out.write_text(report(results))
    log(f"wrote {out}")
    held = verdicts(results)
    if held:
        missed = [name for name, met in held.items() if not met]
        log(f"targets met: {len(held) - len(missed)} of {len(held)}; not met: {missed or 'none'}")
    unmeasured = [name for name in PEER_TARGET_SERVERS if results.peers and name not in held]
    if unmeasured:
        log(f"targets not measured: {unmeasured}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
