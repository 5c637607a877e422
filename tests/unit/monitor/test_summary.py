"""What the live monitoring page is fed, read from /metrics' exposition text."""

from __future__ import annotations

import pytest

from mnistops.monitor.metrics import summarise

pytestmark = pytest.mark.unit

EXPOSITION = """\
# TYPE mnistops_requests counter
mnistops_requests_total{method="POST",route="/predict",status="200"} 90.0
mnistops_requests_total{method="POST",route="/predict",status="400"} 6.0
mnistops_requests_total{method="POST",route="/v2/models/{name}/infer",status="503"} 4.0
mnistops_requests_total{method="GET",route="/monitoring/summary",status="200"} 50.0
mnistops_requests_total{method="GET",route="/metrics",status="200"} 7.0
mnistops_requests_total{method="GET",route="/",status="200"} 2.0
# TYPE mnistops_request_duration_seconds histogram
mnistops_request_duration_seconds_bucket{le="0.001",route="/predict"} 60.0
mnistops_request_duration_seconds_bucket{le="+Inf",route="/predict"} 96.0
mnistops_request_duration_seconds_bucket{le="0.001",route="/monitoring/summary"} 50.0
mnistops_request_duration_seconds_bucket{le="+Inf",route="/monitoring/summary"} 50.0
mnistops_request_duration_seconds_count{route="/predict"} 96.0
mnistops_request_duration_seconds_sum{route="/predict"} 0.2
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 12.5
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 3.0e+08
# TYPE mnistops_predictions counter
mnistops_predictions_total{digit="3",model="m",version="2"} 30.0
mnistops_predictions_total{digit="7",model="m",version="2"} 60.0
mnistops_predictions_total{digit="7",model="m",version="1"} 500.0
# TYPE mnistops_low_confidence_predictions counter
mnistops_low_confidence_predictions_total{model="m",version="2"} 9.0
# TYPE mnistops_prediction_confidence histogram
mnistops_prediction_confidence_bucket{le="0.5",model="m",version="2"} 9.0
mnistops_prediction_confidence_bucket{le="+Inf",model="m",version="2"} 90.0
mnistops_prediction_confidence_bucket{le="+Inf",model="m",version="1"} 500.0
# TYPE mnistops_feedback counter
mnistops_feedback_total{correct="true"} 8.0
mnistops_feedback_total{correct="false"} 2.0
# TYPE mnistops_live_accuracy gauge
mnistops_live_accuracy 0.8
"""


def test_the_summary_counts_the_served_version_and_leaves_out_the_pages_own_polls() -> None:
    summary = summarise(EXPOSITION, "m", "2")
    assert summary["requests"] == 100  # /predict and v2; not /monitoring, /metrics, /
    assert summary["client_errors"] == 6 and summary["server_errors"] == 4
    assert summary["latency_buckets"] == [(0.001, 60.0), (float("inf"), 96.0)]
    assert summary["cpu_seconds"] == 12.5 and summary["memory_bytes"] == 3e8
    assert summary["predicted_digits"][3] == 30 and summary["predicted_digits"][7] == 60
    assert summary["low_confidence"] == 9
    assert summary["confidence_buckets"] == [(0.5, 9.0), (float("inf"), 90.0)]
    assert summary["feedback"] == 10 and summary["live_accuracy"] == 0.8


def test_without_feedback_there_is_no_live_accuracy() -> None:
    text = EXPOSITION.replace('{correct="true"} 8.0', '{correct="true"} 0.0').replace(
        '{correct="false"} 2.0', '{correct="false"} 0.0'
    )
    assert summarise(text, "m", "2")["live_accuracy"] is None
