"""The package against a live daemon and shim: every call over both transports, blocking and
asyncio, as the README shows them."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Callable, List, Union

import pytest

import sandfork
from sandfork import Limits, Output, Rejected, Result, SandforkError

from conftest import AnyClient, need

AnyAsync = Union[sandfork.AsyncClient, sandfork.AsyncHTTPClient]


def test_run_returns_a_typed_result(client: AnyClient) -> None:
    result = client.run("import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)")
    assert isinstance(result, Result)
    assert result.ok and result.status == "ok" and result.exit_code == 0
    assert result.stdout == "42\n" and result.stderr == "warn\n"
    assert result.request_id and isinstance(result.warm, bool)
    assert result.usage.wall_ms > 0 and result.timings.total_ms > 0


def test_stdin_args_files_and_function_mode(client: AnyClient) -> None:
    code = (
        "import sys\n"
        "def main():\n"
        "    open('out/b.txt', 'w').write('back')\n"
        "    return {'argv': sys.argv[1:], 'stdin': sys.stdin.read(), 'data': open('data/a.txt').read()}\n"
        "import os; os.makedirs('out')\n"
    )
    result = client.run(
        code, stdin="in", args=["x", "y z"], files={"data/a.txt": "hé"}, mode="function"
    )
    assert result.ok, result
    assert result.result == {"argv": ["x", "y z"], "stdin": "in", "data": "hé"}
    returned = result.file("out/b.txt")
    assert returned is not None and returned.content == b"back"


def test_uploaded_modules_import(client: AnyClient) -> None:
    result = client.run("import helper\nprint(helper.twice(21))", files={"helper.py": "def twice(x): return 2 * x\n"})
    assert result.stdout == "42\n", result


def test_a_failing_program_is_a_result_not_an_exception(client: AnyClient) -> None:
    result = client.run("1/0")
    assert result.status == "error" and result.exit_code == 1
    assert "ZeroDivisionError" in result.stderr


def test_limits_apply(client: AnyClient) -> None:
    result = client.run("import time; time.sleep(5)", limits=Limits(timeout_ms=300))
    assert result.status == "timeout", result
    result = client.run("print('x' * 5000)", limits={"output_bytes": 1000})
    assert result.status == "output_limit" and result.stdout_truncated


def test_refusals_raise_rejected_with_their_kind(client: AnyClient) -> None:
    with pytest.raises(Rejected) as err:
        client.run("print(1)", limits=Limits(timeout_ms=10**9))
    assert err.value.kind == "limit_above_ceiling"
    assert err.value.retry_after is None
    with pytest.raises(Rejected) as err:
        client.run("print(1)", profile="no-such-profile")
    assert err.value.kind == "unknown_profile"
    with pytest.raises(ValueError):
        client.run("print(1)", limits={"timeout": 5})


def test_rate_limited_carries_retry_after() -> None:
    narrow = sandfork.HTTPClient(need("SANDFORK_URL"), need("SANDFORK_NARROW_API_KEY"), timeout=60)
    refused: List[Rejected] = []
    for _ in range(3):
        try:
            narrow.run("print(1)")
        except Rejected as err:
            refused.append(err)
    assert refused, "the tenant's burst of 1 let three runs through"
    assert refused[0].kind == "rate_limited"
    assert refused[0].retry_after is not None and refused[0].retry_after >= 1


def test_stream_yields_output_as_it_is_written(client: AnyClient) -> None:
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\nprint('é', end='')"
    started = time.monotonic()
    arrivals: List[float] = []
    events: List[Union[Output, Result]] = []
    for event in client.stream(code):
        arrivals.append(time.monotonic() - started)
        events.append(event)
    final = events[-1]
    assert isinstance(final, Result) and final.ok
    outputs = [e for e in events[:-1] if isinstance(e, Output)]
    assert "".join(o.text for o in outputs if o.stream == "stdout") == "0\n1\n2\né"
    assert final.stdout == "" and final.stdout_streamed == len("0\n1\n2\né".encode())
    assert arrivals[-1] - arrivals[0] >= 0.5, f"not streamed: {arrivals}"


def test_leaving_a_stream_early_stops_its_run(client: AnyClient, wait_idle: Callable[[float], bool]) -> None:
    assert wait_idle(10)
    for event in client.stream("import time\nprint('go', flush=True)\ntime.sleep(30)"):
        assert isinstance(event, Output)
        break
    assert wait_idle(5), "the run went on after its stream was left"


def test_session_keeps_state_and_files(client: AnyClient) -> None:
    with client.session() as session:
        assert session.id.startswith("s_")
        assert any(s.session_id == session.id for s in client.sessions())
        first = session.execute("x = 20\n_ = open('note.txt', 'w').write('hi')")
        assert first.ok and first.value is None
        second = session.execute("print('twice'); x * 2 + 2")
        assert second.stdout == "twice\n" and second.value == "42"
        assert [(f.path, f.size) for f in session.files()] == [("note.txt", 2)]
        assert session.read_file("note.txt") == b"hi"
        failing = session.execute("y")
        assert failing.status == "error" and "NameError" in failing.stderr
        assert session.execute("x").value == "20", "a failing cell broke the session"
        streamed = list(session.stream("print('s'); x"))
        assert isinstance(streamed[-1], Result) and streamed[-1].value == "20"
        assert [e.text for e in streamed[:-1] if isinstance(e, Output)] == ["s\n"]
    assert session.closed
    with pytest.raises(SandforkError) as err:
        session.execute("x")
    assert err.value.kind == "session_ended"
    session.close()  # closing twice is harmless


def test_interrupt_stops_a_cell_and_keeps_the_session(client: AnyClient) -> None:
    with client.session() as session:
        session.execute("x = 1")
        timer = threading.Timer(0.5, session.interrupt)
        timer.start()
        result = session.execute("import time\nwhile True: time.sleep(0.05)")
        timer.join()
        assert result.status == "error" and "KeyboardInterrupt" in result.stderr, result
        assert session.execute("x + 1").value == "2"


def test_another_tenant_cannot_use_a_session(http_client: sandfork.HTTPClient, other_tenant: sandfork.HTTPClient) -> None:
    with http_client.session() as session:
        session.execute("secret = 1")
        with pytest.raises(SandforkError) as err:
            sandfork.Session(other_tenant, session.info).execute("secret")
        assert err.value.kind == "session_not_found"
        assert session.id not in [s.session_id for s in other_tenant.sessions()]


def test_status(client: AnyClient) -> None:
    status = client.status()
    assert status["ready"] is True
    assert any(p["name"] == "default" and "sessions_max" in p for p in status["profiles"])


def test_an_unreachable_daemon_is_unavailable(tmp_path: Any) -> None:
    with pytest.raises(sandfork.Unavailable) as err:
        sandfork.Client(os.path.join(str(tmp_path), "none.sock")).run("print(1)")
    assert err.value.kind == "daemon_unavailable"
    with pytest.raises(sandfork.Unavailable):
        sandfork.HTTPClient("http://127.0.0.1:9", "key", timeout=5).run("print(1)")


def test_a_wrong_key_is_unauthorized() -> None:
    with pytest.raises(SandforkError) as err:
        sandfork.HTTPClient(need("SANDFORK_URL"), "sf_not_a_key", timeout=10).run("print(1)")
    assert err.value.kind == "unauthorized"


# --- asyncio ---


def test_async_run_stream_and_session(async_client: AnyAsync) -> None:
    async def flow() -> None:
        results = await asyncio.gather(*(async_client.run(f"print({i})") for i in range(4)))
        assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
        events = [e async for e in async_client.stream("print('a', flush=True); print('b')")]
        assert "".join(e.text for e in events if isinstance(e, Output)) == "a\nb\n"
        assert isinstance(events[-1], Result) and events[-1].ok
        async with await async_client.session() as session:
            await session.execute("x = 40")
            assert (await session.execute("x + 2")).value == "42"
            cell = [e async for e in session.stream("print('in'); x")]
            assert isinstance(cell[-1], Result) and cell[-1].value == "40"
        with pytest.raises(Rejected) as err:
            await async_client.run("print(1)", profile="no-such-profile")
        assert err.value.kind == "unknown_profile"

    asyncio.run(asyncio.wait_for(flow(), 60))


def test_async_stream_left_early_stops_its_run(async_client: AnyAsync, wait_idle: Callable[[float], bool]) -> None:
    assert wait_idle(10)

    async def leave() -> None:
        async for event in async_client.stream("import time\nprint('go', flush=True)\ntime.sleep(30)"):
            assert isinstance(event, Output)
            break

    asyncio.run(asyncio.wait_for(leave(), 20))
    assert wait_idle(5), "the run went on after its stream was left"
