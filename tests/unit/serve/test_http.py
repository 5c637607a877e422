"""The HTTP edge: the error-handler map, request ids, admin auth, the page, /metrics."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from mnistops.bundle import ModelBundle
from mnistops.errors import MnistopsError
from mnistops.serve.http import EXCEPTION_HANDLERS, REQUEST_ID_HEADER
from tests.unit.serve.conftest import started_client, write_bundle

pytestmark = [pytest.mark.unit, pytest.mark.anyio]
TOKEN = "s3cret"


class TeapotError(MnistopsError):
    http_status = 418


class Body(BaseModel):
    label: int


def _edge_app() -> FastAPI:
    """Routes that raise each kind of exception the map knows."""
    app = FastAPI(exception_handlers=EXCEPTION_HANDLERS)

    @app.get("/ours")
    async def ours() -> None:
        raise TeapotError("short and stout: send coffee instead")

    @app.get("/auth")
    async def auth() -> None:
        raise HTTPException(401, "send a token", headers={"WWW-Authenticate": "Bearer"})

    @app.post("/body")
    async def body(value: Body) -> None:
        """Takes a pydantic body."""

    return app


async def test_every_refusal_is_json_with_its_status() -> None:
    transport = httpx.ASGITransport(app=_edge_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ours = await client.get("/ours")
        assert ours.status_code == 418
        assert ours.json() == {"error": "short and stout: send coffee instead"}
        auth = await client.get("/auth")
        assert auth.status_code == 401 and auth.headers["www-authenticate"] == "Bearer"
        assert auth.json() == {"error": "send a token"}
        invalid = await client.post("/body", json={"label": "seven"})
        assert invalid.status_code == 422
        assert invalid.json()["error"].startswith("invalid request: label: ")
        missing = await client.get("/nowhere")
        assert missing.status_code == 404 and "/docs" in missing.json()["error"]
        method = await client.delete("/ours")
        assert method.status_code == 405 and "DELETE /ours" in method.json()["error"]


async def test_each_prediction_gets_its_own_request_id_header(
    client: httpx.AsyncClient,
) -> None:
    ids = set()
    for _ in range(3):
        response = await client.post("/predict", json={"image": [0] * 784})
        request_id = response.headers[REQUEST_ID_HEADER]
        assert request_id == response.json()["request_id"]
        assert len(request_id) == 32 and int(request_id, 16) >= 0
        ids.add(request_id)
    assert len(ids) == 3


async def test_admin_reload_does_not_exist_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/reload")
    assert response.status_code == 404 and "MNISTOPS_ADMIN_TOKEN" in response.json()["error"]


@pytest.mark.parametrize(
    ("authorization", "status"), [(None, 401), ("Basic abc", 401), ("Bearer nope", 403)]
)
async def test_admin_reload_refuses_a_missing_or_wrong_token(
    make_app: Callable[..., FastAPI], authorization: str | None, status: int
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async for client in started_client(make_app(admin_token=TOKEN)):
        response = await client.post("/admin/reload", headers=headers)
        assert response.status_code == status, response.text
        assert "token" in response.json()["error"]


async def test_admin_reload_swaps_in_a_new_version(
    make_app: Callable[..., FastAPI], bundle: ModelBundle, tmp_path: Path
) -> None:
    app = make_app(admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async for client in started_client(app):
        same = (await client.post("/admin/reload", headers=auth)).json()
        assert same["changed"] is False and same["model_version"] == "1"
        shutil.rmtree(bundle.path)
        write_bundle(bundle.path, version="2")
        swapped = (await client.post("/admin/reload", headers=auth)).json()
        assert swapped["changed"] is True and swapped["model_version"] == "2"
        answer = (await client.post("/predict", json={"image": [0] * 784})).json()
        assert answer["model_version"] == "2"


async def test_page_is_served_without_external_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text


async def test_metrics_say_that_monitoring_is_off(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200 and "monitoring is off" in response.text


async def test_openapi_documents_the_bodies(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    predict = paths["/predict"]["post"]["requestBody"]["content"]
    assert set(predict) == {"application/json", "multipart/form-data", "image/png", "image/jpeg"}
    assert "/v2/models/{name}/infer" in paths


async def test_every_reference_in_the_openapi_document_resolves(
    client: httpx.AsyncClient,
) -> None:
    """A ``$ref`` is a JSON pointer from the document's root: one that points nowhere
    breaks ReDoc and every client generated from the document."""
    document = (await client.get("/openapi.json")).json()

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert "#/components/schemas/InferResponse" in found
    for ref in found:
        target: object = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} points nowhere"
            target = target[part]


@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist-classifier/infer", "/invocations"])
async def test_a_client_that_hangs_up_mid_body_is_a_499_not_a_500(
    make_app: Callable[..., FastAPI], path: str
) -> None:
    """An aborted upload was counted as a 500 and fed the error-ratio alert."""
    app = make_app()
    parts: list[dict[str, object]] = [
        {"type": "http.request", "body": b'{"image": [0.1, 0.2', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"5000")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    async for _ in started_client(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [499]


async def test_the_page_carries_its_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    policy = response.headers["content-security-policy"]
    script = response.text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "bundle_name"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
async def test_the_api_docs_load_every_asset_from_the_service(
    client: httpx.AsyncClient, path: str, bundle_name: str
) -> None:
    """No CDN: each script, stylesheet and icon the page names is served here."""
    page = await client.get(path)
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert f"/docs-assets/{bundle_name}" in assets
    for asset in assets:
        served = await client.get(asset)
        assert served.status_code == 200 and served.content, asset
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy and page.headers["x-frame-options"] == "DENY"
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "mnistops"
