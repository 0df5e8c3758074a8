"""One request's conversation with the daemon, independent of how bytes move: what to send, and
what each answer frame means. The blocking and the asyncio clients drive the same exchanges."""

from __future__ import annotations

import codecs
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _wire
from .errors import ProtocolError, Rejected, SandforkError, Unavailable
from .types import File, FileEntry, Output, Result, SessionInfo, Timings, Usage

#: Error kinds that are a refusal by policy (retrying later may help), not a failure.
REFUSALS = frozenset(
    {"too_many_sessions", "no_session_capacity", "session_busy", "invalid_code", "invalid_args"}
    | set(_wire.REJECT_KINDS)
)
#: Error kinds that mean the service is not there to serve.
UNAVAILABLE = frozenset({"shutting_down", "daemon_unavailable"})
#: Error kinds about the conversation itself.
PROTOCOL = frozenset(
    {"malformed", "frame_too_large", "unsupported_version", "hello_required", "duplicate_id", "unknown_id"}
)


def error(kind: str, message: str, retry_after: Optional[float] = None) -> SandforkError:
    """The exception for an error the server named ``kind``."""
    if kind in UNAVAILABLE:
        return Unavailable(kind, message, retry_after)
    if kind in REFUSALS:
        return Rejected(kind, message, retry_after)
    if kind in PROTOCOL:
        return ProtocolError(kind, message, retry_after)
    return SandforkError(kind, message, retry_after)


def rejected(kind: str, retry_after_ms: Optional[int], message: Optional[str]) -> Rejected:
    retry = None if retry_after_ms is None else retry_after_ms / 1000.0
    return Rejected(kind, message or kind, retry)


def result(raw: _wire.RawResult, extra: Optional[_wire.RawExtra] = None) -> Result:
    """A decoded ``RunResult`` as a :class:`Result`; a rejected run raises :class:`Rejected`."""
    if raw.status == "rejected":
        kind = raw.rejection.kind if raw.rejection else "rejected"
        retry = raw.rejection.retry_after_ms if raw.rejection else None
        raise rejected(kind, retry, raw.message)
    return Result(
        status=raw.status,
        exit_code=raw.exit_code,
        signal=raw.signal,
        stdout=raw.stdout.decode("utf-8", "replace"),
        stderr=raw.stderr.decode("utf-8", "replace"),
        stdout_truncated=raw.stdout_truncated,
        stderr_truncated=raw.stderr_truncated,
        usage=Usage(*raw.usage),
        timings=Timings(*raw.timings),
        message=raw.message,
        request_id=raw.request_id,
        warm=raw.warm,
        result_json=raw.result,
        files=[File(f.path, f.content) for f in raw.files],
        files_truncated=raw.files_truncated,
        value=extra.value if extra else None,
        session_ended=extra.session_ended if extra else False,
        stdout_streamed=extra.stdout_streamed if extra else 0,
        stderr_streamed=extra.stderr_streamed if extra else 0,
    )


def session_info(raw: _wire.RawSessionInfo) -> SessionInfo:
    return SessionInfo(raw.session_id, raw.profile, raw.idle_timeout_s, raw.cells, raw.busy)


Event = Union[Output, Result]


class Exchange:
    """The request ``payload`` (with id ``id``) and the reading of its answers: ``feed`` each
    frame; it returns the output events to hand on, and sets ``done`` and ``value`` with the
    final answer (or raises the error the server sent)."""

    def __init__(self, id: int, payload: bytes) -> None:
        self.id = id
        self.payload = payload
        self.done = False
        self.value: Any = None
        self._decoders: Dict[str, "codecs.IncrementalDecoder"] = {}

    def feed(self, kind: str, id: Optional[int], content: Any) -> List[Output]:
        if kind == "error":
            err_kind, message = content
            if id is not None and id != self.id:
                return []
            raise error(err_kind, message)
        if id != self.id:
            return []  # not ours (an echo of something else): ignore
        if kind == "started":
            return []
        if kind == "output":
            stream, data = content
            decoder = self._decoders.setdefault(
                stream, codecs.getincrementaldecoder("utf-8")("replace")
            )
            text = decoder.decode(data)
            return [Output(stream, text)] if text else []
        self.done = True
        events: List[Output] = []
        for stream, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                events.append(Output(stream, tail))
        if kind == "result":
            self.value = result(content)
        elif kind == "done":
            raw, extra = content
            self.value = result(raw, extra)
        elif kind == "session":
            reply, body = content
            if reply == "refused":
                rejection, message = body
                raise rejected(rejection.kind, rejection.retry_after_ms, message)
            self.value = (reply, body)
        elif kind == "status":
            self.value = content
        else:
            raise ProtocolError("malformed", f"unexpected {kind} answer")
        return events


def run_request(
    id: int,
    stream: bool,
    *,
    code: Union[str, bytes],
    stdin: Union[str, bytes, None],
    args: Sequence[str],
    files: Sequence[Tuple[str, bytes]],
    mode: str,
    profile: Optional[str],
    limits: Dict[str, int],
    request_id: Optional[str],
) -> Exchange:
    if mode not in _wire.MODES:
        raise ValueError(f"mode must be one of {_wire.MODES}, not {mode!r}")
    spec = _wire.run_spec(
        profile=profile,
        code=_bytes(code),
        stdin=_bytes(stdin),
        argv=list(args),
        limits_bytes=_limits(limits),
        mode=mode,
        input_files=files,
        request_id=request_id,
    )
    variant = _wire.STREAM_RUN if stream else _wire.RUN
    return Exchange(id, _wire.varint(variant) + _wire.varint(id) + spec)


def open_request(
    id: int, profile: Optional[str], limits: Dict[str, int], idle_timeout_s: Optional[int]
) -> Exchange:
    op = (
        _wire.varint(_wire.OP_OPEN)
        + _wire.opt_text(profile)
        + _limits(limits)
        + _wire.opt_u64(idle_timeout_s)
    )
    return Exchange(id, _wire.session_request(id, None, op))


def cell_request(
    id: int,
    session: str,
    code: Union[str, bytes],
    stdin: Union[str, bytes, None],
    files: Sequence[Tuple[str, bytes]],
    stream: bool,
) -> Exchange:
    op = (
        _wire.varint(_wire.OP_EXECUTE)
        + _wire.text(session)
        + _wire.cell(_bytes(code), _bytes(stdin), files, stream)
    )
    return Exchange(id, _wire.session_request(id, None, op))


def session_op_request(id: int, op: int, session: Optional[str], path: Optional[str] = None) -> Exchange:
    body = _wire.varint(op)
    if session is not None:
        body += _wire.text(session)
    if path is not None:
        body += _wire.text(path)
    return Exchange(id, _wire.session_request(id, None, body))


def status_request(id: int) -> Exchange:
    return Exchange(id, _wire.varint(_wire.STATUS) + _wire.varint(id))


def listing(value: Any) -> List[FileEntry]:
    _, (entries, _truncated) = value
    return [FileEntry(path, size) for path, size in entries]


def _bytes(value: Union[str, bytes, None]) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _limits(limits: Dict[str, int]) -> bytes:
    return _wire.limits(limits.get("timeout_ms"), limits.get("memory_mb"), limits.get("output_bytes"))
