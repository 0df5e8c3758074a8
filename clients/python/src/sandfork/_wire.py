"""The daemon's wire format (docs/PROTOCOL.md): frames of a u32 little-endian length and a
bincode 2 payload (``standard()``: varint integers, little-endian).

Only this module knows the bytes. It encodes the requests this package sends and decodes every
response of protocol version 2; a response that does not decode raises
:class:`~sandfork.ProtocolError` (lengths are checked against the bytes left before anything is
allocated for them).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from .errors import ProtocolError

PROTOCOL_VERSION = 2
#: The largest frame this client reads: the protocol's ceiling on any server's cap.
MAX_FRAME_LEN = 64 * 1024 * 1024

STATUSES = (
    "ok",
    "error",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "output_limit",
    "killed",
    "rejected",
    "internal_error",
)
ERROR_KINDS = (
    "malformed",
    "frame_too_large",
    "unsupported_version",
    "hello_required",
    "invalid_request",
    "duplicate_id",
    "unknown_id",
    "shutting_down",
    "internal",
    "permission_denied",
    "session_not_found",
    "session_ended",
    "session_busy",
    "too_many_sessions",
    "no_session_capacity",
    "file_not_found",
)
REJECT_KINDS = (
    "unknown_profile",
    "profile_not_allowed",
    "invalid_limits",
    "limit_above_ceiling",
    "too_large",
    "invalid_files",
    "rate_limited",
    "busy",
    "queue_timeout",
)
STREAMS = ("stdout", "stderr")
MODES = ("script", "function")

# Request variants.
HELLO, RUN, CANCEL, PING, METRICS, STREAM_RUN, SESSION, STATUS = range(8)
# SessionOp variants.
OP_OPEN, OP_EXECUTE, OP_INTERRUPT, OP_CLOSE, OP_LIST, OP_LIST_FILES, OP_READ_FILE = range(7)


# --- encoding -----------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """An unsigned integer (u32, u64, a length, a variant index), shortest form."""
    if n < 0 or n >= 1 << 64:
        raise ValueError(f"{n} is not a u64")
    if n <= 250:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def blob(data: bytes) -> bytes:
    """A string (already UTF-8) or bytes: length, then the bytes."""
    return varint(len(data)) + data


def text(value: str) -> bytes:
    return blob(value.encode("utf-8"))


def option(encoded: Optional[bytes]) -> bytes:
    return b"\x00" if encoded is None else b"\x01" + encoded


def opt_text(value: Optional[str]) -> bytes:
    return option(None if value is None else text(value))


def opt_u64(value: Optional[int]) -> bytes:
    return option(None if value is None else varint(value))


def boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def seq(items: Sequence[bytes]) -> bytes:
    return varint(len(items)) + b"".join(items)


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def hello(client: str) -> bytes:
    return varint(HELLO) + varint(PROTOCOL_VERSION) + text(client)


def limits(timeout_ms: Optional[int], memory_mb: Optional[int], output_bytes: Optional[int]) -> bytes:
    return opt_u64(timeout_ms) + opt_u64(memory_mb) + opt_u64(output_bytes)


def files(items: Sequence[Tuple[str, bytes]]) -> bytes:
    return seq([text(path) + blob(content) for path, content in items])


def caller(request_id: Optional[str]) -> bytes:
    """A ``Caller``: no tenant (the peer's own), the request id, no client address."""
    return opt_text(None) + opt_text(request_id) + opt_text(None)


def run_spec(
    *,
    profile: Optional[str],
    code: bytes,
    stdin: bytes,
    argv: Sequence[str],
    limits_bytes: bytes,
    mode: str,
    input_files: Sequence[Tuple[str, bytes]],
    request_id: Optional[str],
) -> bytes:
    return (
        opt_text(profile)
        + blob(code)
        + blob(stdin)
        + seq([text(a) for a in argv])
        + limits_bytes
        + varint(MODES.index(mode))
        + files(input_files)
        + opt_text(None)  # tenant: the peer's own
        + opt_text(request_id)
        + opt_text(None)  # client_addr: only proxies pass one
    )


def session_request(id: int, request_id: Optional[str], op: bytes) -> bytes:
    return varint(SESSION) + varint(id) + caller(request_id) + op


def cell(code: bytes, stdin: bytes, input_files: Sequence[Tuple[str, bytes]], stream: bool) -> bytes:
    return blob(code) + blob(stdin) + files(input_files) + boolean(stream)


# --- decoding -----------------------------------------------------------------------------------

T = TypeVar("T")


class Reader:
    """Reads one payload; every failure is a :class:`ProtocolError`."""

    def __init__(self, payload: bytes) -> None:
        self.buf = memoryview(payload)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            raise ProtocolError("malformed", "the payload ends early")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, bits: int = 64) -> int:
        first = self.u8()
        if first <= 250:
            return first
        width = {0xFB: 2, 0xFC: 4, 0xFD: 8}.get(first)
        if width is None or width * 8 > bits:
            raise ProtocolError("malformed", f"invalid varint marker {first:#x}")
        return int.from_bytes(self.take(width), "little")

    def u32(self) -> int:
        return self.varint(32)

    def i32(self) -> int:
        n = self.varint(32)
        return n >> 1 if n & 1 == 0 else -((n + 1) >> 1)

    def f64(self) -> float:
        value: float = struct.unpack("<d", self.take(8))[0]
        return value

    def boolean(self) -> bool:
        tag = self.u8()
        if tag > 1:
            raise ProtocolError("malformed", f"invalid bool {tag}")
        return tag == 1

    def blob(self) -> bytes:
        return self.take(self.varint())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError("malformed", "a string is not UTF-8") from err

    def option(self, read: Callable[[], T]) -> Optional[T]:
        tag = self.u8()
        if tag > 1:
            raise ProtocolError("malformed", f"invalid option tag {tag}")
        return read() if tag == 1 else None

    def seq(self, read: Callable[[], T]) -> List[T]:
        count = self.varint()
        if count > len(self.buf) - self.pos:  # every element takes at least one byte
            raise ProtocolError("malformed", "a sequence claims more than the payload holds")
        return [read() for _ in range(count)]

    def enum(self, names: Sequence[str]) -> str:
        index = self.varint()
        if index >= len(names):
            raise ProtocolError("malformed", f"unknown variant {index}")
        return names[index]

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError("malformed", "bytes left over after the message")


@dataclass
class RawFile:
    path: str
    content: bytes


@dataclass
class RawRejection:
    kind: str
    retry_after_ms: Optional[int]


@dataclass
class RawResult:
    """A ``RunResult`` as decoded (``sandfork.Result`` is built from it)."""

    status: str
    exit_code: Optional[int]
    signal: Optional[int]
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    usage: Tuple[float, float, int]
    timings: Tuple[float, float, float, float]
    message: Optional[str]
    request_id: str
    result: Optional[str]
    files: List[RawFile]
    files_truncated: bool
    rejection: Optional[RawRejection]
    warm: bool


@dataclass
class RawExtra:
    stdout_streamed: int
    stderr_streamed: int
    value: Optional[str]
    session_ended: bool


@dataclass
class RawSessionInfo:
    session_id: str
    profile: str
    created_at_ms: int
    expires_at_ms: int
    idle_timeout_s: int
    cells: int
    busy: bool


def _file(r: Reader) -> RawFile:
    return RawFile(r.text(), r.blob())


def _rejection(r: Reader) -> RawRejection:
    return RawRejection(r.enum(REJECT_KINDS), r.option(r.varint))


def _result(r: Reader) -> RawResult:
    return RawResult(
        status=r.enum(STATUSES),
        exit_code=r.option(r.i32),
        signal=r.option(r.i32),
        stdout=r.blob(),
        stderr=r.blob(),
        stdout_truncated=r.boolean(),
        stderr_truncated=r.boolean(),
        usage=(r.f64(), r.f64(), r.varint()),
        timings=(r.f64(), r.f64(), r.f64(), r.f64()),
        message=r.option(r.text),
        request_id=r.text(),
        result=r.option(r.text),
        files=r.seq(lambda: _file(r)),
        files_truncated=r.boolean(),
        rejection=r.option(lambda: _rejection(r)),
        warm=r.boolean(),
    )


def _session_info(r: Reader) -> RawSessionInfo:
    return RawSessionInfo(
        r.text(), r.text(), r.varint(), r.varint(), r.varint(), r.varint(), r.boolean()
    )


def _server_status(r: Reader) -> Dict[str, Any]:
    ready = r.boolean()
    profiles = r.seq(
        lambda: {
            "name": r.text(),
            "zygotes_ready": r.u32(),
            "zygotes_wanted": r.u32(),
            "warm_children": r.u32(),
            "queued": r.u32(),
        }
    )
    return {"ready": ready, "profiles": profiles, "slots_total": r.u32(), "slots_busy": r.u32()}


def _session_reply(r: Reader) -> Tuple[str, Any]:
    kind = r.enum(("opened", "interrupted", "closed", "list", "files", "file", "refused"))
    content: Any = None
    if kind == "opened":
        content = _session_info(r)
    elif kind == "list":
        content = r.seq(lambda: _session_info(r))
    elif kind == "files":
        entries = r.seq(lambda: (r.text(), r.varint()))
        content = (entries, r.boolean())
    elif kind == "file":
        content = _file(r)
    elif kind == "refused":
        content = (_rejection(r), r.text())
    return kind, content


RESPONSES = ("hello", "result", "error", "pong", "metrics", "started", "output", "done", "session", "status")


def decode_response(payload: bytes) -> Tuple[str, Optional[int], Any]:
    """One response: (variant name, its id or None, its content)."""
    r = Reader(payload)
    kind = r.enum(RESPONSES)
    id: Optional[int] = None
    content: Any
    if kind == "hello":
        content = (r.u32(), r.text(), r.u32())
    elif kind == "error":
        id = r.option(r.varint)
        content = (r.enum(ERROR_KINDS), r.text())
    else:
        id = r.varint()
        if kind == "result":
            content = _result(r)
        elif kind == "pong":
            content = _server_status(r)
        elif kind == "metrics":
            content = r.text()
        elif kind == "started":
            content = None
        elif kind == "output":
            content = (r.enum(STREAMS), r.blob())
        elif kind == "done":
            content = (_result(r), RawExtra(r.varint(), r.varint(), r.option(r.text), r.boolean()))
        elif kind == "session":
            content = _session_reply(r)
        else:  # status
            content = (
                _server_status(r),
                r.seq(lambda: {"profile": r.text(), "live": r.u32(), "max": r.u32()}),
            )
    r.end()
    return kind, id, content


def frame_length(header: bytes) -> int:
    (length,) = struct.unpack("<I", header)
    if length > MAX_FRAME_LEN:
        raise ProtocolError("frame_too_large", f"the server announced a frame of {length} bytes")
    return int(length)
