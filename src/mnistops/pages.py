"""The service's HTML pages (draw-a-digit, live monitoring) with the headers a browser needs
to keep them safe: a Content-Security-Policy that lets only the page's own inline script
and style run (by their SHA-256 hashes) and only this origin be asked, no framing by
another site, no MIME sniffing and no referrer sent away."""

from __future__ import annotations

import base64
import functools
import hashlib
import re

from fastapi.responses import HTMLResponse

_INLINE = {
    "script": re.compile(r"<script>(.*?)</script>", re.S),
    "style": re.compile(r"<style>(.*?)</style>", re.S),
}
NONE = "'none'"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _hashes(html: str, tag: str) -> str:
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE[tag].findall(html)
    )


@functools.cache
def content_security_policy(html: str) -> str:
    """The policy of a page: its own inline blocks by hash, everything else from here."""
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {_hashes(html, 'script') or NONE}",
            f"style-src 'self' {_hashes(html, 'style')}".rstrip(),
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


def html_page(html: str) -> HTMLResponse:
    """``html`` with the security headers and its Content-Security-Policy."""
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(html)}
    return HTMLResponse(html, headers=headers)
