"""Request ids: issued by the service for every prediction, the prediction log's key and
what feedback names. A client's own id (the Open Inference Protocol's ``id``) is echoed
back to it, but never used as a key: so feedback can only name a prediction this service
made, and never someone else's that happens to share a client's id."""

from __future__ import annotations

import os
import re
import time

ISSUED = re.compile(r"[0-9a-f]{32}(?:-[0-9]{1,4})?")
"""An id this service issues: :func:`new_request_id`, with ``-<index>`` for each image of a
batch."""
_STAMP_DIGITS = 12


def new_request_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits (like UUIDv7).

    Ids that grow with time keep the prediction log's index on them appending at its
    end instead of rewriting random pages (about twice as cheap per row in SQLite).
    """
    return f"{time.time_ns() // 1_000_000:0{_STAMP_DIGITS}x}{os.urandom(10).hex()}"


def issued_at(request_id: str) -> float | None:
    """When an id of this service was issued (seconds since the epoch); None if
    ``request_id`` is not one."""
    if not ISSUED.fullmatch(request_id):
        return None
    return int(request_id[:_STAMP_DIGITS], 16) / 1000
