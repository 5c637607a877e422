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
def content_security_policy(html: str, *, ui_bundle: bool = False) -> str:
    """The policy of a page: its own inline blocks by hash, everything else from here.

    ``ui_bundle`` is for a page built by a script bundle served from here (the API docs:
    Swagger UI, ReDoc): scripts from this origin run too, and so do the styles those scripts
    add at run time and the workers they start from blobs (ReDoc's search).
    """
    scripts = _hashes(html, "script")
    script_src = f"'self' {scripts}".rstrip() if ui_bundle else scripts or NONE
    # a hash beside 'unsafe-inline' would switch 'unsafe-inline' off: one or the other
    styles = "'unsafe-inline'" if ui_bundle else _hashes(html, "style")
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {script_src}",
            f"style-src 'self' {styles}".rstrip(),
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "worker-src 'self' blob:" if ui_bundle else "worker-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


def html_page(html: str, *, ui_bundle: bool = False) -> HTMLResponse:
    """``html`` with the security headers and its Content-Security-Policy."""
    policy = content_security_policy(html, ui_bundle=ui_bundle)
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Content-Security-Policy": policy})
