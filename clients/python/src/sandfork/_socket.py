"""Clients of the daemon's Unix socket: :class:`Client` (blocking) and :class:`AsyncClient`.

Each call opens its own connection (a connect and a hello: tens of microseconds), so one client
can be shared between threads, and ``Session.interrupt()`` from another thread reaches a cell
that is running. Leaving a call early (an exception, a broken-off stream) closes its
connection, which makes the daemon stop that run.
"""

from __future__ import annotations

import asyncio
import os
import socket as _socket_mod
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import __version__, _exchange, _wire
from ._exchange import Exchange
from ._session import AsyncSession, Session
from .errors import ProtocolError, Unavailable
from .types import FileEntry, Files, Limits, Output, Result, SessionInfo, file_items, limit_fields

PathLike = Union[str, "os.PathLike[str]"]
LimitsArg = Union[Limits, Mapping[str, int], None]
Text = Union[str, bytes]
CLIENT_NAME = f"sandfork-python/{__version__}"
#: Any id will do: every call has its own connection.
ID = 1


def default_socket() -> str:
    """The socket the CLI uses without ``--socket``: ``$SANDFORK_SOCKET``, else the root
    daemon's ``/run/sandfork/sandfork.sock`` for root, else ``$XDG_RUNTIME_DIR/sandfork.sock``
    (a rootless daemon's), else ``/tmp/sandfork-UID.sock``."""
    env = os.environ.get("SANDFORK_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/sandfork/sandfork.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "sandfork.sock")
    return os.path.join("/tmp", f"sandfork-{os.getuid()}.sock")


def _reply(payload: bytes) -> None:
    kind, _, content = _wire.decode_response(payload)
    if kind == "error":
        err_kind, message = content
        raise _exchange.error(err_kind, message)
    if kind != "hello":
        raise ProtocolError("malformed", f"the daemon answered the hello with {kind}")


def _with_pools(status: Dict[str, Any], pools: List[Dict[str, Any]]) -> Dict[str, Any]:
    for profile in status["profiles"]:
        pool = next((p for p in pools if p["profile"] == profile["name"]), None)
        profile["sessions_live"] = pool["live"] if pool else 0
        profile["sessions_max"] = pool["max"] if pool else 0
    return status


class Client:
    """A blocking client of ``sandforkd``'s socket, acting as the caller's own tenant (the
    daemon knows it by the process's uid).

    >>> client = Client()                       # the CLI's default socket
    >>> client.run("print(6 * 7)").stdout
    '42\\n'

    ``timeout`` (seconds) bounds each wait for the daemon; None (the default) waits as long as
    the run's own limits let it run.
    """

    def __init__(
        self, socket: Optional[PathLike] = None, *, profile: Optional[str] = None, timeout: Optional[float] = None
    ) -> None:
        self.socket = os.fspath(socket) if socket is not None else default_socket()
        self.profile = profile
        self.timeout = timeout

    # --- one conversation ---

    def _connect(self) -> _socket_mod.socket:
        sock = _socket_mod.socket(_socket_mod.AF_UNIX, _socket_mod.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket)
            sock.sendall(_wire.frame(_wire.hello(CLIENT_NAME)))
            _reply(self._read(sock))
        except OSError as err:
            sock.close()
            raise Unavailable("daemon_unavailable", f"cannot reach the daemon at {self.socket}: {err}") from err
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _read(sock: _socket_mod.socket) -> bytes:
        def exactly(n: int) -> bytes:
            chunks = bytearray()
            while len(chunks) < n:
                chunk = sock.recv(min(n - len(chunks), 1 << 20))
                if not chunk:
                    raise Unavailable("daemon_unavailable", "the daemon closed the connection")
                chunks += chunk
            return bytes(chunks)

        return exactly(_wire.frame_length(exactly(4)))

    def _exchange(self, exchange: Exchange) -> Iterator[Output]:
        """Sends the request, yields its output events; ``exchange.value`` is then set."""
        with self._connect() as sock:
            try:
                sock.sendall(_wire.frame(exchange.payload))
                while not exchange.done:
                    yield from exchange.feed(*_wire.decode_response(self._read(sock)))
            except OSError as err:
                raise Unavailable("daemon_unavailable", f"the daemon's connection failed: {err}") from err

    def _finish(self, exchange: Exchange) -> Any:
        for _ in self._exchange(exchange):
            pass
        return exchange.value

    # --- runs ---

    def run(
        self,
        code: Text,
        *,
        stdin: Optional[Text] = None,
        args: Sequence[str] = (),
        files: Optional[Files] = None,
        mode: str = "script",
        profile: Optional[str] = None,
        limits: LimitsArg = None,
        request_id: Optional[str] = None,
    ) -> Result:
        """Runs ``code`` once in a fresh sandbox and returns how it ended.

        ``args`` become ``sys.argv[1:]``; ``files`` are written into the working directory
        first; ``mode="function"`` calls the code's ``main()`` and returns its value in
        ``Result.result``. A refusal by policy raises :class:`~sandfork.Rejected`.
        """
        exchange = _exchange.run_request(
            ID, False, code=code, stdin=stdin, args=args, files=file_items(files), mode=mode,
            profile=profile or self.profile, limits=limit_fields(limits), request_id=request_id,
        )
        value = self._finish(exchange)
        assert isinstance(value, Result)
        return value

    def stream(
        self,
        code: Text,
        *,
        stdin: Optional[Text] = None,
        args: Sequence[str] = (),
        files: Optional[Files] = None,
        mode: str = "script",
        profile: Optional[str] = None,
        limits: LimitsArg = None,
        request_id: Optional[str] = None,
    ) -> Iterator[Union[Output, Result]]:
        """As :meth:`run`, yielding :class:`Output` events as the program writes, then the
        :class:`Result` (whose ``stdout``/``stderr`` then hold nothing: it was all streamed).
        Breaking off the iteration stops the run."""
        exchange = _exchange.run_request(
            ID, True, code=code, stdin=stdin, args=args, files=file_items(files), mode=mode,
            profile=profile or self.profile, limits=limit_fields(limits), request_id=request_id,
        )
        yield from self._exchange(exchange)
        assert isinstance(exchange.value, Result)
        yield exchange.value

    # --- sessions ---

    def session(
        self, *, profile: Optional[str] = None, limits: LimitsArg = None, idle_timeout_s: Optional[int] = None
    ) -> Session:
        """Opens a session (use it with ``with``). ``limits``: ``timeout_ms`` and
        ``output_bytes`` per cell, ``memory_mb`` for the whole session."""
        exchange = _exchange.open_request(ID, profile or self.profile, limit_fields(limits), idle_timeout_s)
        _, info = self._finish(exchange)
        return Session(self, _exchange.session_info(info))

    def sessions(self) -> List[SessionInfo]:
        """The caller's live sessions."""
        _, infos = self._finish(_exchange.session_op_request(ID, _wire.OP_LIST, None))
        return [_exchange.session_info(i) for i in infos]

    def status(self) -> Dict[str, Any]:
        """The daemon's readiness, slots, profiles and sessions (as ``GET /readyz`` has them)."""
        status, pools = self._finish(_exchange.status_request(ID))
        return _with_pools(status, pools)

    def _cell(
        self, session: str, code: Text, stdin: Optional[Text], files: Optional[Files], stream: bool
    ) -> Iterator[Union[Output, Result]]:
        exchange = _exchange.cell_request(ID, session, code, stdin, file_items(files), stream)
        yield from self._exchange(exchange)
        assert isinstance(exchange.value, Result)
        yield exchange.value

    def _interrupt(self, session: str) -> None:
        self._finish(_exchange.session_op_request(ID, _wire.OP_INTERRUPT, session))

    def _close(self, session: str) -> None:
        self._finish(_exchange.session_op_request(ID, _wire.OP_CLOSE, session))

    def _list_files(self, session: str) -> List[FileEntry]:
        return _exchange.listing(self._finish(_exchange.session_op_request(ID, _wire.OP_LIST_FILES, session)))

    def _read_file(self, session: str, path: str) -> bytes:
        _, file = self._finish(_exchange.session_op_request(ID, _wire.OP_READ_FILE, session, path))
        content: bytes = file.content
        return content


class AsyncClient:
    """:class:`Client` for asyncio: the same methods, as coroutines (``stream`` is an async
    iterator, ``session()`` returns an :class:`~sandfork.AsyncSession`)."""

    def __init__(
        self, socket: Optional[PathLike] = None, *, profile: Optional[str] = None, timeout: Optional[float] = None
    ) -> None:
        self.socket = os.fspath(socket) if socket is not None else default_socket()
        self.profile = profile
        self.timeout = timeout

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            header = await asyncio.wait_for(reader.readexactly(4), self.timeout)
            return await asyncio.wait_for(reader.readexactly(_wire.frame_length(header)), self.timeout)
        except asyncio.IncompleteReadError as err:
            raise Unavailable("daemon_unavailable", "the daemon closed the connection") from err

    async def _exchange(self, exchange: Exchange) -> AsyncIterator[Output]:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket), self.timeout)
        except OSError as err:
            raise Unavailable("daemon_unavailable", f"cannot reach the daemon at {self.socket}: {err}") from err
        try:
            writer.write(_wire.frame(_wire.hello(CLIENT_NAME)))
            _reply(await self._read(reader))
            writer.write(_wire.frame(exchange.payload))
            await writer.drain()
            while not exchange.done:
                for event in exchange.feed(*_wire.decode_response(await self._read(reader))):
                    yield event
        except OSError as err:
            raise Unavailable("daemon_unavailable", f"the daemon's connection failed: {err}") from err
        finally:
            writer.close()

    async def _finish(self, exchange: Exchange) -> Any:
        async for _ in self._exchange(exchange):
            pass
        return exchange.value

    async def run(
        self,
        code: Text,
        *,
        stdin: Optional[Text] = None,
        args: Sequence[str] = (),
        files: Optional[Files] = None,
        mode: str = "script",
        profile: Optional[str] = None,
        limits: LimitsArg = None,
        request_id: Optional[str] = None,
    ) -> Result:
        """See :meth:`Client.run`."""
        exchange = _exchange.run_request(
            ID, False, code=code, stdin=stdin, args=args, files=file_items(files), mode=mode,
            profile=profile or self.profile, limits=limit_fields(limits), request_id=request_id,
        )
        value = await self._finish(exchange)
        assert isinstance(value, Result)
        return value

    async def stream(
        self,
        code: Text,
        *,
        stdin: Optional[Text] = None,
        args: Sequence[str] = (),
        files: Optional[Files] = None,
        mode: str = "script",
        profile: Optional[str] = None,
        limits: LimitsArg = None,
        request_id: Optional[str] = None,
    ) -> AsyncIterator[Union[Output, Result]]:
        """See :meth:`Client.stream`."""
        exchange = _exchange.run_request(
            ID, True, code=code, stdin=stdin, args=args, files=file_items(files), mode=mode,
            profile=profile or self.profile, limits=limit_fields(limits), request_id=request_id,
        )
        async for event in self._exchange(exchange):
            yield event
        assert isinstance(exchange.value, Result)
        yield exchange.value

    async def session(
        self, *, profile: Optional[str] = None, limits: LimitsArg = None, idle_timeout_s: Optional[int] = None
    ) -> AsyncSession:
        """See :meth:`Client.session`."""
        exchange = _exchange.open_request(ID, profile or self.profile, limit_fields(limits), idle_timeout_s)
        _, info = await self._finish(exchange)
        return AsyncSession(self, _exchange.session_info(info))

    async def sessions(self) -> List[SessionInfo]:
        _, infos = await self._finish(_exchange.session_op_request(ID, _wire.OP_LIST, None))
        return [_exchange.session_info(i) for i in infos]

    async def status(self) -> Dict[str, Any]:
        """See :meth:`Client.status`."""
        status, pools = await self._finish(_exchange.status_request(ID))
        return _with_pools(status, pools)

    async def _cell(
        self, session: str, code: Text, stdin: Optional[Text], files: Optional[Files], stream: bool
    ) -> AsyncIterator[Union[Output, Result]]:
        exchange = _exchange.cell_request(ID, session, code, stdin, file_items(files), stream)
        async for event in self._exchange(exchange):
            yield event
        assert isinstance(exchange.value, Result)
        yield exchange.value

    async def _interrupt(self, session: str) -> None:
        await self._finish(_exchange.session_op_request(ID, _wire.OP_INTERRUPT, session))

    async def _close(self, session: str) -> None:
        await self._finish(_exchange.session_op_request(ID, _wire.OP_CLOSE, session))

    async def _list_files(self, session: str) -> List[FileEntry]:
        return _exchange.listing(await self._finish(_exchange.session_op_request(ID, _wire.OP_LIST_FILES, session)))

    async def _read_file(self, session: str, path: str) -> bytes:
        _, file = await self._finish(_exchange.session_op_request(ID, _wire.OP_READ_FILE, session, path))
        content: bytes = file.content
        return content
