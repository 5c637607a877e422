"""Bearer tokens for the routes that take one (admin, and feedback when configured)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException

BEARER = "bearer "


def check_bearer(authorization: str | None, token: str, what: str) -> None:
    """Refuse a request whose ``Authorization`` header is not ``Bearer <token>``
    (compared in constant time).

    Raises:
        HTTPException: 401 without a bearer token, 403 with a wrong one.
    """
    if not authorization or not authorization.lower().startswith(BEARER):
        raise HTTPException(
            401,
            f"send the {what} token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    sent = authorization[len(BEARER) :].strip()
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise HTTPException(403, f"wrong {what} token")
