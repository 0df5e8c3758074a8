"""What the clients raise. Every error carries the daemon's machine-readable ``kind``."""

from __future__ import annotations

from typing import Optional


class SandforkError(Exception):
    """A request that did not produce a result.

    ``kind`` is the reason as the daemon and the HTTP API name it (``session_not_found``,
    ``rate_limited``, ``daemon_unavailable``, ...), ``message`` the text for people.
    ``retry_after`` is the number of seconds after which the same request may succeed, when the
    server said so (rate limits, a busy tenant or pool); None otherwise.
    """

    def __init__(self, kind: str, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


class Rejected(SandforkError):
    """Policy refused the request before it ran: an unknown profile, a limit above the ceiling,
    the tenant's rate or concurrency, a full queue, too many sessions, invalid files, ..."""


class Unavailable(SandforkError):
    """The daemon (or the HTTP service) cannot be reached, or it is shutting down."""


class ProtocolError(SandforkError):
    """The server said something this client cannot understand (or did not answer as the
    protocol requires). A bug on one side or the other; not worth retrying."""
