"""The tracking server probe: a server down or hung is named at once, any answer passes."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from mnistops.tracking import TrackingUnavailableError, probe

pytestmark = pytest.mark.unit


@pytest.fixture
def answering() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that answers 404 to everything; the paths it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://user:secret@127.0.0.1:{server.server_port}/", asked
    server.shutdown()
    server.server_close()


def test_any_answer_passes_and_credentials_stay_out_of_the_url(
    answering: tuple[str, list[str]],
) -> None:
    uri, asked = answering
    probe(uri)
    assert asked == ["/health"]
    probe(uri)  # once per process
    assert asked == ["/health"]


def test_a_refused_connection_is_named_in_the_os_words() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    with pytest.raises(TrackingUnavailableError, match=r"\(\[Errno 111\] Connection refused\);"):
        probe(f"http://127.0.0.1:{port}")


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(TrackingUnavailableError, match=r"\(timed out\)"):
            probe(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.2)


def test_stores_that_are_not_servers_are_not_probed() -> None:
    probe("sqlite:///nowhere/mlflow.db")
    probe("databricks")
