"""Clients of the HTTP API (``sandfork-http``): :class:`HTTPClient` (blocking, the standard
library's ``http.client``) and :class:`AsyncHTTPClient`.

Every request carries the tenant's API key as a Bearer token and has its own connection (the
shim answers ``Connection: keep-alive``, but a connection per call keeps a client safe to share
between threads, and lets ``Session.interrupt()`` reach a cell that is running).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import json
import socket
import threading
import urllib.parse
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from . import __version__, _exchange
from ._session import AsyncSession, Session
from .errors import ProtocolError, SandforkError, Unavailable
from .types import (
    File,
    FileEntry,
    Files,
    Limits,
    Output,
    Result,
    SessionInfo,
    Timings,
    Usage,
    file_items,
    limit_fields,
)

LimitsArg = Union[Limits, Mapping[str, int], None]
Text = Union[str, bytes]
USER_AGENT = f"sandfork-python/{__version__}"


def _text(value: Optional[Text], what: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} must be UTF-8 over HTTP (JSON strings are)") from err


def _files_json(files: Optional[Files]) -> List[Dict[str, str]]:
    return [
        {"path": path, "content_b64": base64.b64encode(content).decode("ascii")}
        for path, content in file_items(files)
    ]


def _result(body: Dict[str, Any]) -> Result:
    """A result JSON object (``/v1/execute``, a cell) as a :class:`Result`."""
    try:
        usage, timings = body["usage"], body["timings"]
        return Result(
            status=body["status"],
            exit_code=body.get("exit_code"),
            signal=body.get("signal"),
            stdout=body.get("stdout", ""),
            stderr=body.get("stderr", ""),
            stdout_truncated=body.get("stdout_truncated", False),
            stderr_truncated=body.get("stderr_truncated", False),
            usage=Usage(usage["wall_ms"], usage["cpu_ms"], usage["max_rss_kb"]),
            timings=Timings(timings["queue_ms"], timings["spawn_ms"], timings["run_ms"], timings["total_ms"]),
            message=body.get("message"),
            request_id=body.get("request_id", ""),
            warm=body.get("warm", False),
            result_json=json.dumps(body["result"]) if "result" in body else None,
            files=[File(f["path"], base64.b64decode(f["content_b64"])) for f in body.get("files", [])],
            files_truncated=body.get("files_truncated", False),
            value=body.get("value"),
            session_ended=body.get("session_ended", False),
            stdout_streamed=body.get("stdout_streamed", 0),
            stderr_streamed=body.get("stderr_streamed", 0),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError("malformed", f"unexpected result JSON: {err}") from err


def _session_info(body: Dict[str, Any]) -> SessionInfo:
    return SessionInfo(
        body["session_id"], body["profile"], body["idle_timeout_s"], body.get("cells", 0), body.get("busy", False)
    )


def _error(status: int, headers: http.client.HTTPMessage, body: bytes) -> SandforkError:
    retry = headers.get("Retry-After")
    retry_after = float(retry) if retry and retry.isdigit() else None
    try:
        error = json.loads(body)["error"]
        kind, message = error["kind"], error["message"]
    except (ValueError, KeyError, TypeError):
        kind, message = "http_error", f"HTTP {status}: {body[:200]!r}"
    return _exchange.error(kind, message, retry_after)


class HTTPClient:
    """A blocking client of ``sandfork-http``, acting as the tenant whose API key it holds.

    >>> client = HTTPClient("http://127.0.0.1:8080", api_key=open("target/serve/example.key").read().strip())
    >>> client.run("print(6 * 7)").stdout
    '42\\n'

    ``url`` may carry a path prefix (a proxy's ``https://host/sandbox``); ``timeout`` (seconds)
    bounds each wait on the socket.
    """

    def __init__(self, url: str, api_key: str, *, profile: Optional[str] = None, timeout: Optional[float] = 120.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.api_key = api_key
        self.profile = profile
        self.timeout = timeout

    # --- one request ---

    def _open(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        accept: str = "application/json",
        holder: Optional["Holder"] = None,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        if holder is not None:
            holder.hold(conn)
        headers = {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT, "Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            response = conn.getresponse()
        except OSError as err:
            conn.close()
            raise Unavailable("daemon_unavailable", f"cannot reach {self.url}: {err}") from err
        if response.status >= 400:
            try:
                raise _error(response.status, response.headers, response.read())
            finally:
                conn.close()
        return conn, response

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Tuple[int, bytes]:
        conn, response = self._open(method, path, body)
        try:
            return response.status, response.read()
        except OSError as err:
            raise Unavailable("daemon_unavailable", f"{self.url}: {err}") from err
        finally:
            conn.close()

    def _json(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        _, data = self._call(method, path, body)
        try:
            return json.loads(data)
        except ValueError as err:
            raise ProtocolError("malformed", f"{path} answered what is not JSON") from err

    def _events(
        self, path: str, body: Dict[str, Any], holder: Optional["Holder"] = None
    ) -> Iterator[Union[Output, Result]]:
        """A server-sent-event answer as events; closing the connection early stops the run."""
        conn, response = self._open("POST", path, body, accept="text/event-stream", holder=holder)
        try:
            event, data = "message", ""
            while True:
                line = response.readline()
                if not line:
                    raise Unavailable("daemon_unavailable", "the stream ended without a result")
                line = line.rstrip(b"\r\n")
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data += line[5:].lstrip(b" ").decode("utf-8")
                elif not line and data:
                    value = json.loads(data)
                    if event in ("stdout", "stderr"):
                        yield Output(event, value["text"])
                    elif event == "result":
                        yield _result(value)
                        return
                    elif event == "error":
                        raise _exchange.error(value["error"]["kind"], value["error"]["message"])
                    event, data = "message", ""
        except OSError as err:
            raise Unavailable("daemon_unavailable", f"{self.url}: {err}") from err
        finally:
            conn.close()

    @staticmethod
    def _run_body(
        code: Text, stdin: Optional[Text], args: Sequence[str], files: Optional[Files], mode: str,
        profile: Optional[str], limits: LimitsArg, stream: bool,
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {"code": _text(code, "code"), "mode": mode}
        if stdin is not None:
            body["stdin"] = _text(stdin, "stdin")
        if args:
            body["args"] = list(args)
        if files:
            body["files"] = _files_json(files)
        if profile:
            body["profile"] = profile
        if limits:
            body["limits"] = limit_fields(limits)
        if stream:
            body["stream"] = True
        return body

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
    ) -> Result:
        """Runs ``code`` once in a fresh sandbox (``POST /v1/execute``); see
        :meth:`sandfork.Client.run`. A refusal raises :class:`~sandfork.Rejected`."""
        body = self._run_body(code, stdin, args, files, mode, profile or self.profile, limits, False)
        return _result(self._json("POST", "/v1/execute", body))

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
    ) -> Iterator[Union[Output, Result]]:
        """As :meth:`run`, yielding :class:`Output` events as the program writes (server-sent
        events), then the :class:`Result`. Breaking off the iteration stops the run."""
        body = self._run_body(code, stdin, args, files, mode, profile or self.profile, limits, True)
        return self._events("/v1/execute", body)

    # --- sessions ---

    def session(
        self, *, profile: Optional[str] = None, limits: LimitsArg = None, idle_timeout_s: Optional[int] = None
    ) -> Session:
        """Opens a session (``POST /v1/sessions``); use it with ``with``."""
        body: Dict[str, Any] = {}
        if profile or self.profile:
            body["profile"] = profile or self.profile
        if limits:
            body["limits"] = limit_fields(limits)
        if idle_timeout_s is not None:
            body["idle_timeout_s"] = idle_timeout_s
        return Session(self, _session_info(self._json("POST", "/v1/sessions", body)))

    def sessions(self) -> List[SessionInfo]:
        """The caller's live sessions."""
        return [_session_info(s) for s in self._json("GET", "/v1/sessions")["sessions"]]

    def status(self) -> Dict[str, Any]:
        """``GET /readyz``: readiness, slots, profiles and sessions."""
        ready: Dict[str, Any] = self._json("GET", "/readyz")
        return ready

    def _session_path(self, session: str, tail: str = "") -> str:
        return f"/v1/sessions/{urllib.parse.quote(session, safe='')}{tail}"

    def _cell(
        self,
        session: str,
        code: Text,
        stdin: Optional[Text],
        files: Optional[Files],
        stream: bool,
        holder: Optional["Holder"] = None,
    ) -> Iterator[Union[Output, Result]]:
        body: Dict[str, Any] = {"code": _text(code, "code")}
        if stdin is not None:
            body["stdin"] = _text(stdin, "stdin")
        if files:
            body["files"] = _files_json(files)
        path = self._session_path(session, "/execute")
        if stream:
            body["stream"] = True
            yield from self._events(path, body, holder)
        else:
            yield _result(self._json("POST", path, body))

    def _interrupt(self, session: str) -> None:
        self._call("POST", self._session_path(session, "/interrupt"))

    def _close(self, session: str) -> None:
        self._call("DELETE", self._session_path(session))

    def _list_files(self, session: str) -> List[FileEntry]:
        listing = self._json("GET", self._session_path(session, "/files"))
        return [FileEntry(f["path"], f["size"]) for f in listing["files"]]

    def _read_file(self, session: str, path: str) -> bytes:
        quoted = urllib.parse.quote(path, safe="/")
        return self._call("GET", self._session_path(session, f"/files/{quoted}"))[1]


class Holder:
    """The connection a blocking stream uses, so that another thread can cut it (which stops
    the run, and wakes the thread waiting on it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Optional[http.client.HTTPConnection] = None
        self._cut = False

    def hold(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conn = conn
            if self._cut:
                self._shut()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            self._shut()

    def _shut(self) -> None:
        sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class AsyncHTTPClient:
    """:class:`HTTPClient` for asyncio: the same calls as coroutines, each made by the blocking
    client in a worker thread, so the event loop never blocks; ``stream`` is an async iterator,
    and leaving it early cuts its connection, which stops the run."""

    def __init__(
        self, url: str, api_key: str, *, profile: Optional[str] = None, timeout: Optional[float] = 120.0
    ) -> None:
        self._sync = HTTPClient(url, api_key, profile=profile, timeout=timeout)

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
    ) -> Result:
        """See :meth:`HTTPClient.run`."""
        run = functools.partial(
            self._sync.run, code, stdin=stdin, args=args, files=files, mode=mode, profile=profile, limits=limits
        )
        return await asyncio.get_running_loop().run_in_executor(None, run)

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
    ) -> AsyncIterator[Union[Output, Result]]:
        """See :meth:`HTTPClient.stream`."""
        sync = self._sync
        body = sync._run_body(code, stdin, args, files, mode, profile or sync.profile, limits, True)
        return _in_thread(lambda holder: sync._events("/v1/execute", body, holder))

    async def session(
        self, *, profile: Optional[str] = None, limits: LimitsArg = None, idle_timeout_s: Optional[int] = None
    ) -> AsyncSession:
        """See :meth:`HTTPClient.session`."""
        opened = await _call(functools.partial(self._sync.session, profile=profile, limits=limits, idle_timeout_s=idle_timeout_s))
        return AsyncSession(self, opened.info)

    async def sessions(self) -> List[SessionInfo]:
        return await _call(self._sync.sessions)

    async def status(self) -> Dict[str, Any]:
        return await _call(self._sync.status)

    def _cell(
        self, session: str, code: Text, stdin: Optional[Text], files: Optional[Files], stream: bool
    ) -> AsyncIterator[Union[Output, Result]]:
        sync = self._sync
        return _in_thread(lambda holder: sync._cell(session, code, stdin, files, stream, holder))

    async def _interrupt(self, session: str) -> None:
        await _call(functools.partial(self._sync._interrupt, session))

    async def _close(self, session: str) -> None:
        await _call(functools.partial(self._sync._close, session))

    async def _list_files(self, session: str) -> List[FileEntry]:
        return await _call(functools.partial(self._sync._list_files, session))

    async def _read_file(self, session: str, path: str) -> bytes:
        return await _call(functools.partial(self._sync._read_file, session, path))


T = TypeVar("T")


async def _call(blocking: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, blocking)


async def _in_thread(
    start: Callable[[Holder], Iterator[Union[Output, Result]]],
) -> AsyncIterator[Union[Output, Result]]:
    """The events of a blocking iterator, produced in a worker thread and handed over one by
    one. Leaving the async iteration early cuts the iterator's connection (stopping its run)."""
    loop = asyncio.get_running_loop()
    queue: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()
    holder = Holder()
    stop = threading.Event()

    def produce() -> None:
        def put(item: Tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        events = start(holder)
        try:
            for event in events:
                if stop.is_set():
                    break
                put(("event", event))
            put(("end", None))
        except BaseException as err:  # handed to the consumer, raised there
            put(("error", err))
        finally:
            events.close()  # type: ignore[attr-defined]

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            what, value = await queue.get()
            if what == "event":
                yield value
            elif what == "error":
                raise value
            else:
                break
    finally:
        if not worker.done():
            stop.set()
            holder.cut()
        await asyncio.shield(worker)
