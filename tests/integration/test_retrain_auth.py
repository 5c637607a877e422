"""`mnistops retrain` asking a private service: the bearer token it is given
(MNISTOPS_SERVICE_TOKEN, an ID token on Cloud Run) reaches the service; without it the
refusal is one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from mnistops.errors import ServiceUnavailableError
from mnistops.ops.retrain import drift_verdict

pytestmark = pytest.mark.integration
TOKEN = "id-token-for-the-service"


class PrivateService(BaseHTTPRequestHandler):
    """Answers /monitoring/drift only to ``Authorization: Bearer TOKEN``, as Cloud Run's
    front end does for a service that is not public."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        PrivateService.seen.append(self.headers.get("Authorization"))
        allowed = self.headers.get("Authorization") == f"Bearer {TOKEN}"
        body = json.dumps({"drift": False, "checked": True}).encode() if allowed else b"denied"
        self.send_response(200 if allowed else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def private_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PrivateService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_service_token_is_sent_as_a_bearer_token(private_url: str) -> None:
    assert drift_verdict(private_url, TOKEN) == {"drift": False, "checked": True}
    assert PrivateService.seen[-1] == f"Bearer {TOKEN}"


def test_without_the_token_a_private_service_is_a_clear_refusal(private_url: str) -> None:
    with pytest.raises(ServiceUnavailableError, match="403"):
        drift_verdict(private_url)
    assert PrivateService.seen[-1] is None
