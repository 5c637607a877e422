"""The soak: good and bad bodies at high concurrency for minutes, with a hot reload halfway.

The service must stay up, answer every bad body with a 4xx, never a 5xx, and keep its
memory bounded.
"""

from __future__ import annotations

import json
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from bench import load
from bench.results import StressResult
from bench.servers import http_ok, tree_rss_mb
from bench.serving import mnistops_server, running
from bench.workspace import export_champion, sample_image

CONNECTIONS = 64
ADMIN_TOKEN = "bench-token"
RELOAD_TIMEOUT_S = 30.0
REQUESTS_METRIC = "mnistops_requests_total"


def stress_bodies() -> list[bytes]:
    """Good bodies (one image, eight) and bad ones, each on one line."""
    image = list(sample_image())
    texts = [
        json.dumps({"image": image}),
        json.dumps({"images": [image] * 8}),
        json.dumps({"image": image[:100]}),  # wrong size
        '{"image": [1, 2, "x"]}',  # not numbers
        "{not json",
        json.dumps({"image": [float("1e309")] * 784}).replace("Infinity", "1e999"),
        json.dumps({"images": []}),
    ]
    return [text.encode() for text in texts]


def bench_stress(seconds: float) -> StressResult:
    """wrk at c=64 for ``seconds`` over :func:`stress_bodies`, a reload halfway."""
    contender = mnistops_server(
        "mnistops stress", export_champion(), MNISTOPS_ADMIN_TOKEN=ADMIN_TOKEN
    )
    base = contender.url.removesuffix("/predict")
    with running(contender) as server:
        rss_start = tree_rss_mb(server.process.pid)
        bodies = stress_bodies()
        with load.started(
            contender.url, bodies, connections=CONNECTIONS, seconds=seconds
        ) as pending:
            time.sleep(seconds / 2)
            reload_status = admin_reload(base)
            run = pending.finish()
        statuses = answers_by_status_class(base)
        return StressResult(
            seconds=seconds,
            connections=CONNECTIONS,
            wrk_output=run.output,
            rss_start_mb=rss_start,
            rss_end_mb=tree_rss_mb(server.process.pid),
            reload_status=reload_status,
            responses_4xx=statuses.get("4", 0.0),
            responses_5xx=statuses.get("5", 0.0),
            alive=http_ok(contender.url, contender.body),
        )


def admin_reload(base: str) -> int:
    """POST /admin/reload with the admin token; its status."""
    request = urllib.request.Request(
        f"{base}/admin/reload",
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=RELOAD_TIMEOUT_S) as response:
        return int(response.status)


def answers_by_status_class(base: str) -> dict[str, float]:
    """Requests the server counted, by the first digit of their status (``"4"``: 4xx)."""
    with urllib.request.urlopen(f"{base}/metrics") as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS_METRIC:
                first = sample.labels.get("status", "?")[:1]
                counts[first] = counts.get(first, 0.0) + sample.value
    return counts
