"""The HTTP edge shared by every route: JSON responses, the one error-handler map,
request ids, admin auth and the page."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mnistops.auth import check_bearer
from mnistops.errors import MnistopsError
from mnistops.ids import new_request_id
from mnistops.pages import html_page
from mnistops.serve import schemas
from mnistops.serve.runtime import RuntimeDep

__all__ = ["new_request_id"]  # the routes' import of it
STATIC = Path(__file__).with_name("static")
REQUEST_ID_HEADER = "X-Request-ID"
JSON = "application/json"
API_LISTED = "the routes and their bodies are listed at /docs"
CLIENT_CLOSED = 499
"""nginx's status for a request whose client hung up before it was answered: neither the
service's failure (5xx, which pages someone) nor a refusal the client will read."""
VALIDATION_PROBLEMS_SHOWN = 5
"""A 422 lists at most this many problems of a request body."""

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 404, 413, 415, 422)
}
"""The documented refusals of a route that takes input (OpenAPI ``responses``)."""


def json_response(content: Any, status: int = 200, request_id: str | None = None) -> Response:
    """``content`` as JSON (orjson), with the request id header when there is one."""
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return Response(orjson.dumps(content), status, headers=headers, media_type=JSON)


def refusal(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    """The body of every refusal: ``{"error": "what was wrong and what is accepted"}``."""
    response = json_response({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


async def _refused(request: Request, exc: MnistopsError) -> Response:
    return refusal(str(exc), exc.http_status)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in exc.errors()[:VALIDATION_PROBLEMS_SHOWN]
    )
    return refusal(f"invalid request: {problems}", 422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = str(exc.detail)
    if exc.status_code in (404, 405) and message == HTTPStatus(exc.status_code).phrase:
        # Starlette's own refusal of a path or method no route takes: say where to look
        message = f"no route takes {request.method} {request.url.path}; {API_LISTED}"
    return refusal(message, exc.status_code, exc.headers)


async def _client_closed(request: Request, exc: ClientDisconnect) -> Response:
    return refusal("the client closed the connection before its body was read", CLIENT_CLOSED)


Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]
EXCEPTION_HANDLERS: dict[int | type[Exception], Handler] = {
    MnistopsError: _refused,  # every refusal of ours: its http_status
    RequestValidationError: _invalid,  # a pydantic-declared body (POST /feedback): 422
    StarletteHTTPException: _http_error,  # unknown route, wrong method, admin auth
    ClientDisconnect: _client_closed,  # an upload aborted: counted 499, not 500
}
"""The one map from exception to response, handed to ``FastAPI(exception_handlers=)``."""


async def check_admin(
    runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Bearer-token guard for /admin routes; the routes do not exist without a token.

    Raises:
        HTTPException: 404 without a configured token, 401 without a bearer token,
            403 with a wrong one.
    """
    token = runtime.settings.admin_token
    if not token:
        raise HTTPException(404, "admin routes are disabled: set MNISTOPS_ADMIN_TOKEN")
    check_bearer(authorization, token, "admin")


@functools.cache
def _page_html() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


def page() -> HTMLResponse:
    """The draw-a-digit page (read from the package once), with its security headers."""
    return html_page(_page_html())
