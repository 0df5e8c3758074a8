"""sandfork: run untrusted Python in sandfork's locked-down sandboxes.

Four clients with one set of calls — ``run()``, ``stream()``, ``session()`` — and one set of
results:

- :class:`Client` / :class:`AsyncClient`: the daemon's Unix socket (``sandforkd``), as the
  calling process's own tenant;
- :class:`HTTPClient` / :class:`AsyncHTTPClient`: the HTTP API (``sandfork-http``), as the tenant
  whose API key they hold.

Standard library only. Errors are exceptions (:class:`SandforkError` and its subclasses) that
carry the server's ``kind`` and, when it gave one, ``retry_after`` in seconds.
"""

__version__ = "0.1.0"

from ._http import AsyncHTTPClient, HTTPClient  # noqa: E402
from ._session import AsyncSession, Session  # noqa: E402
from ._socket import AsyncClient, Client, default_socket  # noqa: E402
from .errors import ProtocolError, Rejected, SandforkError, Unavailable  # noqa: E402
from .types import File, FileEntry, Limits, Output, Result, SessionInfo, Timings, Usage  # noqa: E402

__all__ = [
    "AsyncClient",
    "AsyncHTTPClient",
    "AsyncSession",
    "Client",
    "File",
    "FileEntry",
    "HTTPClient",
    "Limits",
    "Output",
    "ProtocolError",
    "Rejected",
    "Result",
    "SandforkError",
    "Session",
    "SessionInfo",
    "Timings",
    "Unavailable",
    "Usage",
    "default_socket",
]
