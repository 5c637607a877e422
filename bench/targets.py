"""The targets the benchmarks are held to: one TARGETS table, the figures that meet them or not."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from bench.load import Load
from bench.results import (
    BARE_APP,
    DEFAULTS,
    LAB_FLASK,
    MLFLOW_SERVE,
    MLSERVER,
    MNISTOPS,
    MONITORING_OFF,
    NOOP_ROUTE,
    PEER_FRAMEWORKS,
    PREDICT_JSON,
    V2_BINARY,
    V2_JSON,
    PeersResult,
    Results,
    ServingResult,
)

RIVAL_CONCURRENCY = 8
"""The concurrency at which mnistops is compared with the lab's app and MLflow's server."""
PEER_CONCURRENCY = 8
"""The concurrency at which mnistops is compared with the peer frameworks."""
BARE_CONCURRENCY = 1
"""The concurrency at which mnistops is compared with the bare app: its overhead alone."""


@dataclass(frozen=True)
class Unit:
    """How a figure and a threshold in this unit are written."""

    value: Callable[[float], str]
    threshold: Callable[[float], str]


RATIO = Unit(lambda v: f"{v:.2f}", lambda t: f"{t:.2f}")
TIMES = Unit(lambda v: f"{v:,.0f}×", lambda t: f"{t:g}×")
PERCENT = Unit(lambda v: f"{v:.0%}", lambda t: f"{t * 100:g} %")  # figures are fractions
ACCURACY = Unit(lambda v: f"{v:.2%}", lambda t: f"{t:.1%}")
POINTS = Unit(lambda v: f"{v:.2f} points", lambda t: f"{t:g} points")
MS = Unit(lambda v: f"{v:.2f} ms", lambda t: f"{t:g} ms")
SECONDS = Unit(lambda v: f"{v:.2f} s", lambda t: f"{t:g} s")
FACTOR = Unit(lambda v: f"{v:.2f}×", lambda t: f"{t:g}×")

_COMPARE = {"≤": operator.le, "≥": operator.ge}


@dataclass(frozen=True)
class Target:
    name: str
    comparison: Literal["≤", "≥"]
    """``≤`` (at most) or ``≥`` (at least)."""
    threshold: float
    unit: Unit
    measures: str
    """What the figure is, in the report's words."""

    def met(self, value: float) -> bool:
        return bool(_COMPARE[self.comparison](value, self.threshold))

    def verdict(self, value: float) -> str:
        """``target ≤ 5 ms: met``."""
        return self._stated("met" if self.met(value) else "**not met**")

    def unmeasured(self) -> str:
        """``target ≤ 5 ms: not measured``."""
        return self._stated("not measured")

    def _stated(self, outcome: str) -> str:
        return f"target {self.comparison} {self.unit.threshold(self.threshold)}: {outcome}"


TARGETS: tuple[Target, ...] = (
    Target("fit_time_ratio", "≤", 0.70, RATIO, "fit time ratio mnistops / lab"),
    Target("accuracy_lost", "≤", 0.3, POINTS, "test accuracy lost against the lab"),
    Target("fast_accuracy", "≥", 0.994, ACCURACY, "the fast recipe's test accuracy (median)"),
    Target("fast_fit", "≤", 120, SECONDS, "the fast recipe's fit time"),
    Target("vs_lab_flask", "≥", 100, TIMES, f"vs the lab's Flask app at c={RIVAL_CONCURRENCY}"),
    Target(
        "vs_mlflow_serve", "≥", 100, TIMES, f"vs `mlflow models serve` at c={RIVAL_CONCURRENCY}"
    ),
    Target("vs_noop_route", "≥", 0.70, PERCENT, "vs the no-op route (best of each)"),
    Target("paced_p99", "≤", 5, MS, "p99 at half the maximum throughput"),
    Target("exec_to_ready", "≤", 1, SECONDS, "exec-to-ready from a local model folder"),
    Target(
        "monitoring_cost",
        "≤",
        0.05,
        PERCENT,
        "throughput lost to monitoring (metrics, drift, prediction log), at worst",
    ),
    Target("gemm_share", "≥", 0.60, PERCENT, "share of numpy's GEMM throughput"),
    Target(
        "vs_best_peer",
        "≥",
        2.5,
        FACTOR,
        f"`/predict` vs the best peer framework's JSON request at c={PEER_CONCURRENCY}",
    ),
    Target(
        "vs_bare_app",
        "≥",
        0.85,
        FACTOR,
        f"`/predict` vs the bare FastAPI app at c={BARE_CONCURRENCY}",
    ),
    Target(
        "v2_binary_gain",
        "≥",
        1.2,
        FACTOR,
        f"v2 infer with a binary tensor vs JSON `/predict` at c={PEER_CONCURRENCY}",
    ),
    Target("peers_predict_p99", "≤", 5, MS, f"`/predict` p99 at c={PEER_CONCURRENCY}"),
    Target(
        "estimate_error",
        "≤",
        3,
        POINTS,
        "accuracy estimated without labels vs true, mean |error| over the shift scenarios",
    ),
    Target(
        "drift_ert",
        "≥",
        1.0,
        FACTOR,
        "run time between false drift alarms on clean MNIST test streams, over the configured",
    ),
    Target(
        "drift_delay",
        "≤",
        1.0,
        FACTOR,
        "slowest targeted shift: 95th percentile of its detection delay over its target",
    ),
)
PEER_TARGET_SERVERS: dict[str, tuple[str, ...]] = {
    "vs_best_peer": (MNISTOPS, *PEER_FRAMEWORKS),
    "vs_bare_app": (MNISTOPS, BARE_APP),
    "v2_binary_gain": (MNISTOPS,),
    "peers_predict_p99": (MNISTOPS,),
}
"""The peers suite's targets, and the servers each needs measured."""
_BY_NAME = {target.name: target for target in TARGETS}


def target(name: str) -> Target:
    """The entry of :data:`TARGETS` called ``name``."""
    return _BY_NAME[name]


def figures(results: Results) -> dict[str, float]:
    """The measured value of every target that ``results`` measure, by target name."""
    found: dict[str, float] = {}
    if results.training:
        lab, ours = results.training.lab, results.training.ours
        found["fit_time_ratio"] = ours.fit_seconds / lab.fit_seconds
        found["accuracy_lost"] = (lab.test_accuracy - ours.test_accuracy) * 100
        fast = results.training.recipes.get("fast")
        if fast is not None:
            found["fast_accuracy"] = fast.test_accuracy
            found["fast_fit"] = fast.fit_seconds
    if results.serving:
        found |= _serving_figures(results.serving)
    if results.batch:
        found["gemm_share"] = results.batch.ours_gflops / results.batch.gemm_gflops
    if results.peers:
        found |= peers_figures(results.peers)
    if results.estimate and results.estimate.rows:
        rows = results.estimate.rows
        found["estimate_error"] = 100 * sum(r.error for r in rows) / len(rows)
    if results.drift:
        found["drift_ert"] = results.drift.measured_ert / results.drift.ert
        found["drift_delay"] = max(
            (r.p95 if not r.missed else float("inf")) / r.target
            for r in results.drift.rows
            if r.target is not None
        )
    return found


def verdicts(results: Results) -> dict[str, bool]:
    """Whether each target that ``results`` measure is met, by target name."""
    return {name: target(name).met(value) for name, value in figures(results).items()}


def _serving_figures(serving: ServingResult) -> dict[str, float]:
    def best(name: str) -> float:
        return max(load.rps for load in serving.loads[name].values())

    def rival(name: str) -> float:
        return serving.loads[name][RIVAL_CONCURRENCY].rps

    return {
        "vs_lab_flask": rival(MNISTOPS) / rival(LAB_FLASK),
        "vs_mlflow_serve": rival(MNISTOPS) / rival(MLFLOW_SERVE),
        "vs_noop_route": best(MNISTOPS) / best(NOOP_ROUTE),
        "paced_p99": serving.paced.p99_ms,
        "exec_to_ready": serving.startup[MNISTOPS].ready_s,
        "monitoring_cost": max(monitoring_cost(serving.variants).values()),
    }


def gain(variants: Mapping[str, Mapping[int, Load]], base: str) -> dict[int, float]:
    """The defaults' throughput gain over variant ``base``, by concurrency (-0.1: 10 % less)."""
    on, off = variants[DEFAULTS], variants[base]
    return {c: on[c].rps / off[c].rps - 1 for c in on}


def monitoring_cost(variants: Mapping[str, Mapping[int, Load]]) -> dict[int, float]:
    """The throughput that monitoring costs, by concurrency (0.1: 10 % less with it on)."""
    return {c: -change for c, change in gain(variants, MONITORING_OFF).items()}


def best_peer(peers: PeersResult, concurrency: int = PEER_CONCURRENCY) -> tuple[str, float] | None:
    """The peer framework with the most requests/s at ``concurrency``, and that rate.

    None unless every framework was measured: the best of some is not the best peer.
    """
    rates = {}
    for name in PEER_FRAMEWORKS:
        loads = peers.json_loads(name)
        if loads is None or concurrency not in loads:
            return None
        rates[name] = loads[concurrency].rps
    name = max(rates, key=rates.__getitem__)
    return name, rates[name]


def peers_figures(peers: PeersResult) -> dict[str, float]:
    """The peers suite's figures that were measured (mnistops' requests and its peers')."""
    ours = peers.servers.get(MNISTOPS)
    predict = None if ours is None else ours.loads.get(PREDICT_JSON)
    if ours is None or predict is None:
        return {}
    found = {"peers_predict_p99": predict[PEER_CONCURRENCY].p99_ms}
    best = best_peer(peers)
    if best is not None:
        found["vs_best_peer"] = predict[PEER_CONCURRENCY].rps / best[1]
    bare = peers.json_loads(BARE_APP)
    if bare is not None:
        found["vs_bare_app"] = predict[BARE_CONCURRENCY].rps / bare[BARE_CONCURRENCY].rps
    binary = ours.loads.get(V2_BINARY)
    if binary is not None:
        found["v2_binary_gain"] = binary[PEER_CONCURRENCY].rps / predict[PEER_CONCURRENCY].rps
    return found


def v2_json_vs_mlserver(peers: PeersResult) -> dict[int, float] | None:
    """mnistops' v2 JSON infer over MLServer's on the same model, by concurrency."""
    ours = peers.servers.get(MNISTOPS)
    theirs = peers.json_loads(MLSERVER)
    v2 = None if ours is None else ours.loads.get(V2_JSON)
    if v2 is None or theirs is None:
        return None
    return {c: v2[c].rps / theirs[c].rps for c in v2 if c in theirs}
