"""The wire codec against the documented bytes, and a hostile server: whatever a server sends,
the client answers with a clear exception, never a hang, a crash or a huge allocation."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
from typing import Iterator, List

import pytest

import sandfork
from sandfork import _wire
from sandfork.errors import ProtocolError, Rejected, Unavailable


def test_hello_matches_the_documented_bytes() -> None:
    # docs/PROTOCOL.md, section 3: Request::Hello, version 1, "example/0.1".
    hello = _wire.varint(0) + _wire.varint(1) + _wire.text("example/0.1")
    assert _wire.frame(hello).hex() == "0e00000000010b6578616d706c652f302e31"


@pytest.mark.parametrize("n", [0, 250, 251, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_varints_round_trip(n: int) -> None:
    encoded = _wire.varint(n)
    reader = _wire.Reader(encoded)
    assert reader.varint() == n
    reader.end()


def test_zigzag_i32() -> None:
    for encoded, value in [(0, 0), (1, -1), (2, 1), (3, -2), (2**32 - 1, -(2**31))]:
        assert _wire.Reader(_wire.varint(encoded)).i32() == value


def serve(frames: List[bytes]) -> Iterator[str]:
    """A fake daemon: answers the hello properly, reads one request, sends `frames` raw."""
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            read_frame(conn)
            reply = _wire.varint(0) + _wire.varint(2) + _wire.text("fake") + _wire.varint(1 << 20)
            conn.sendall(_wire.frame(reply))
            read_frame(conn)
            for raw in frames:
                conn.sendall(raw)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield path
    thread.join(5)
    listener.close()


def read_frame(conn: socket.socket) -> bytes:
    header = conn.recv(4, socket.MSG_WAITALL)
    (length,) = struct.unpack("<I", header)
    return conn.recv(length, socket.MSG_WAITALL) if length else b""


def run_against(frames: List[bytes]) -> sandfork.Result:
    for path in serve(frames):
        return sandfork.Client(path, timeout=5).run("print(1)")
    raise AssertionError("unreachable")


def rejected_result(kind: int, retry_ms: int) -> bytes:
    body = (
        _wire.varint(7)  # status: rejected
        + b"\x00\x00"  # exit_code, signal: None
        + _wire.blob(b"") * 2
        + b"\x00\x00"
        + struct.pack("<dd", 0, 0) + _wire.varint(0)  # usage: wall_ms, cpu_ms, max_rss_kb
        + struct.pack("<dddd", 0, 0, 0, 0)
        + _wire.opt_text("over the rate")
        + _wire.text("r-1")
        + b"\x00"  # result
        + _wire.varint(0)  # files
        + b"\x00"  # files_truncated
        + b"\x01" + _wire.varint(kind) + b"\x01" + _wire.varint(retry_ms)
        + b"\x00"  # warm
    )
    return _wire.varint(1) + _wire.varint(1) + body


def test_a_rejection_carries_kind_and_retry_after() -> None:
    with pytest.raises(Rejected) as err:
        run_against([_wire.frame(rejected_result(6, 1500))])
    assert err.value.kind == "rate_limited"
    assert err.value.retry_after == 1.5
    assert err.value.message == "over the rate"


@pytest.mark.parametrize(
    "raw, kind",
    [
        (_wire.frame(b"\x63"), "malformed"),  # unknown response variant
        (_wire.frame(rejected_result(99, 1)), "malformed"),  # unknown reject kind
        (_wire.frame(rejected_result(6, 1) + b"\x00"), "malformed"),  # bytes left over
        (_wire.frame(rejected_result(6, 1)[:-5]), "malformed"),  # ends early
        (_wire.frame(_wire.varint(1) + _wire.varint(1) + _wire.varint(0) + b"\x02"), "malformed"),  # bad option tag
        (_wire.frame(_wire.varint(6) + _wire.varint(1) + _wire.varint(0) + b"\xfc\xff\xff\xff\x7f"), "malformed"),  # 2 GiB claim
        (struct.pack("<I", 2**31), "frame_too_large"),
    ],
)
def test_a_hostile_server_gets_a_protocol_error(raw: bytes, kind: str) -> None:
    with pytest.raises(ProtocolError) as err:
        run_against([raw])
    assert err.value.kind == kind


def test_a_server_that_hangs_up_mid_frame_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        run_against([struct.pack("<I", 100) + b"\x01\x01"])


def test_an_error_frame_for_another_id_is_ignored_and_ours_raised() -> None:
    other = _wire.varint(2) + b"\x01" + _wire.varint(7) + _wire.varint(6) + _wire.text("not yours")
    ours = _wire.varint(2) + b"\x01" + _wire.varint(1) + _wire.varint(7) + _wire.text("draining")
    with pytest.raises(Unavailable) as err:
        run_against([_wire.frame(other), _wire.frame(ours)])
    assert err.value.kind == "shutting_down"
