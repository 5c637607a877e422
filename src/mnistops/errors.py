"""The one error base: every refusal a person can act on is a MnistopsError."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^/:@]*):[^/@]*@")


class MnistopsError(Exception):
    """Something a user or operator can fix; the message says what is wrong and what to do.

    Attributes:
        exit_code: The command line's exit status for this error.
        http_status: The service's response status for this error.
    """

    exit_code = 1
    http_status = 400


class ServiceUnavailableError(MnistopsError):
    """A running mnistops service, named by a URL the user gave, cannot be asked."""

    http_status = 503

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(
            f"cannot reach the service at {redacted(url)} ({first_line(cause)}); "
            "start it with `mnistops serve`, or pass the right --url"
        )


class ServeError(MnistopsError):
    """The server cannot listen where it was told to."""


class ReloadError(MnistopsError):
    """The version a reload found cannot be served; the one served before goes on."""

    http_status = 409


class AlreadyLabelledError(MnistopsError):
    """Feedback for a prediction that has its true label already."""

    http_status = 409


class MonitorUnavailableError(MnistopsError):
    """The monitor process, or the prediction log behind it, cannot answer now."""

    http_status = 503


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    return (str(exc) or type(exc).__name__).splitlines()[0]


def redacted(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, fit for an error message."""
    return _PASSWORD.sub(r"\1:***@", uri)
