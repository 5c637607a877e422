"""Schemathesis over the published OpenAPI schema: no generated request gets a 5xx."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from bench.servers import free_port
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from mnistops.bundle import ModelBundle
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.integration
CASES = int(os.environ.get("MNISTOPS_FUZZ_CASES", "600"))
"""Generated requests in all (``make stress``: 1,000 per operation's share, at least)."""
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


@pytest.fixture(scope="module")
def live(
    trained_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with run_server(str(trained_bundle.path), free_port(), tmp_path_factory.mktemp("fuzz")) as srv:
        yield srv


def test_generated_requests_never_get_a_server_error(live: RunningServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations: list[Operation] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 10
    per_operation = CASES // len(operations) + 1
    seen = 0
    counter = [0]
    failures: list[str] = []
    rounds = 0
    while seen < CASES and rounds < 5:  # operations without parameters run out of examples
        rounds += 1
        for operation in operations:
            _fuzz(operation, live.url, per_operation, failures, counter)
        seen = counter[0]
    assert seen >= 500, seen
    assert not failures, failures[:5]
    assert live.process.poll() is None


def _fuzz(
    operation: Operation, url: str, examples: int, failures: list[str], counter: list[int]
) -> None:
    """Send up to ``examples`` generated requests for one operation; note any 5xx."""

    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy())
    def run(case: schemathesis.Case[Operation]) -> None:
        counter[0] += 1
        response = case.call(base_url=url, timeout=30)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}"
            )

    run()
