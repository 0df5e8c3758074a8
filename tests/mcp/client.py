"""Drives sandfork's MCP server with the official MCP Python SDK, as an agent would.

usage: client.py stdio SANDFORK_BINARY SOCKET           the whole flow over stdio
       client.py http URL API_KEY                     the whole flow over streamable HTTP
       client.py stdio-nodaemon SANDFORK_BINARY SOCKET one call to a server with no daemon
       client.py hostile URL API_KEY                  malformed calls, then a good one
       client.py steal URL KEY_A KEY_B                tenant B goes after tenant A's session

Prints one JSON object: what each step returned (the Rust test, tests/mcp.rs, checks it).
"""

import asyncio
import json
import sys

from mcp import ClientSession, McpError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def flow(session):
    report = {}
    init = await session.initialize()
    report["server"] = init.serverInfo.name
    tools = await session.list_tools()
    report["tools"] = sorted(tool.name for tool in tools.tools)
    report["schemas"] = {
        tool.name: sorted((tool.inputSchema.get("properties") or {}).keys())
        for tool in tools.tools
    }
    report["described"] = all(
        tool.description
        and all(p.get("description") for p in (tool.inputSchema.get("properties") or {}).values())
        for tool in tools.tools
    )

    run = await session.call_tool(
        "run_python",
        {"code": "print(open('in.txt').read() * 2)", "files": [{"path": "in.txt", "content": "ab"}]},
    )
    report["run"] = {
        "text": text_of(run),
        "error": run.isError,
        "status": (run.structuredContent or {}).get("status"),
    }
    failing = await session.call_tool("run_python", {"code": "1/0"})
    report["run_error"] = {"error": failing.isError, "text": text_of(failing)}
    limited = await session.call_tool(
        "run_python", {"code": "print(1)", "timeout_ms": 10**9}
    )
    report["run_limit"] = {"error": limited.isError, "text": text_of(limited)}

    opened = await session.call_tool("session_open", {})
    session_id = (opened.structuredContent or {}).get("session_id")
    report["open"] = {"error": opened.isError, "session_id": session_id}
    first = await session.call_tool("session_execute", {"session_id": session_id, "code": "x = 20"})
    second = await session.call_tool(
        "session_execute", {"session_id": session_id, "code": "print('twice'); x * 2 + 2"}
    )
    report["cells"] = [
        {"error": first.isError, "value": (first.structuredContent or {}).get("value")},
        {
            "error": second.isError,
            "value": (second.structuredContent or {}).get("value"),
            "text": text_of(second),
        },
    ]
    bad = await session.call_tool("session_execute", {"session_id": session_id, "code": "y"})
    after = await session.call_tool("session_execute", {"session_id": session_id, "code": "x"})
    report["after_error"] = {
        "bad_error": bad.isError,
        "value": (after.structuredContent or {}).get("value"),
    }
    closed = await session.call_tool("session_close", {"session_id": session_id})
    gone = await session.call_tool("session_execute", {"session_id": session_id, "code": "x"})
    report["close"] = {"error": closed.isError, "gone_error": gone.isError, "gone": text_of(gone)}
    profiles = await session.call_tool("list_profiles", {})
    report["profiles"] = [p["name"] for p in (profiles.structuredContent or {}).get("profiles", [])]
    return report


async def no_daemon(session):
    await session.initialize()
    result = await session.call_tool("run_python", {"code": "print(1)"})
    return {"error": result.isError, "text": text_of(result)}


async def hostile(session):
    await session.initialize()
    calls = [
        ("run_python", {"code": 12}),
        ("rm_rf", {"path": "/"}),
        ("session_execute", {"session_id": "../../etc/passwd", "code": "1"}),
        ("run_python", {"code": "print(1)", "timeout_ms": -1}),
        ("session_open", {"idle_timeout_s": 10**30}),
    ]
    cases = []
    for name, arguments in calls:
        try:
            result = await session.call_tool(name, arguments)
            cases.append({"call": name, "refused": bool(result.isError), "text": text_of(result)})
        except McpError as err:
            cases.append({"call": name, "refused": True, "text": str(err)})
    after = await session.call_tool("run_python", {"code": "print('ok', end='')"})
    return {"cases": cases, "after": text_of(after)}


async def steal(url, key_a, key_b):
    """A opens a session and keeps a secret in it; B, with its own key, tries to read it, run in
    it and close it by its id; code of B's tries to reach the shim from inside the sandbox."""

    def connect(key):
        return streamablehttp_client(url, headers={"Authorization": "Bearer " + key})

    async with connect(key_a) as (ra, wa, _), connect(key_b) as (rb, wb, _):
        async with ClientSession(ra, wa) as a, ClientSession(rb, wb) as b:
            await a.initialize()
            await b.initialize()
            opened = await a.call_tool("session_open", {})
            sid = opened.structuredContent["session_id"]
            await a.call_tool("session_execute", {"session_id": sid, "code": "secret = 'a-only'"})
            read = await b.call_tool("session_execute", {"session_id": sid, "code": "secret"})
            close = await b.call_tool("session_close", {"session_id": sid})
            still = await a.call_tool("session_execute", {"session_id": sid, "code": "secret"})
            port = url.split(":")[2].split("/")[0]
            reach = await b.call_tool(
                "run_python",
                {
                    "code": "import socket\ntry:\n    socket.create_connection(('127.0.0.1', %s), timeout=2)\n"
                    "    print('connected')\nexcept OSError as e:\n    print('blocked', e.errno)" % port
                },
            )
            await a.call_tool("session_close", {"session_id": sid})
            return {
                "read": {"error": read.isError, "text": text_of(read)},
                "close": {"error": close.isError, "text": text_of(close)},
                "still": (still.structuredContent or {}).get("value"),
                "reach": text_of(reach),
            }


async def main():
    mode = sys.argv[1]
    if mode == "steal":
        print(json.dumps(await steal(sys.argv[2], sys.argv[3], sys.argv[4])))
        return
    steps = {"stdio": flow, "http": flow, "stdio-nodaemon": no_daemon, "hostile": hostile}[mode]
    if mode.startswith("stdio"):
        params = StdioServerParameters(command=sys.argv[2], args=["mcp", "--socket", sys.argv[3]])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                report = await steps(session)
    else:
        headers = {"Authorization": "Bearer " + sys.argv[3]}
        async with streamablehttp_client(sys.argv[2], headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                report = await steps(session)
    print(json.dumps(report))


asyncio.run(main())
