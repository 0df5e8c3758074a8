"""A bounded, mixed, hostile load against a daemon and shim of its own, then a report.

Run through scripts/soak (which builds the binaries and makes the client venv). Workers send,
over the Unix socket and over HTTP, programs that end with every status (ok, error, timeout,
cpu_limit, memory_limit, output_limit, killed), requests that are rejected, fork and memory
bombs, output floods, streams the client walks away from, raw connections cut mid-request, and
sessions that are closed, interrupted, or abandoned. Afterwards, once the daemon is idle, it
compares the daemon against itself before the load: processes, open fds, mounts, cgroups, RSS.

Exit status: 0 when nothing was lost and nothing leaked, 1 otherwise, 2 on a set-up failure.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import sandfork

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-soak-" + os.urandom(8).hex()
UID_BASE = 200000
SHIM_UID = 65534

CONFIG = """\
socket = "{dir}/sandfork.sock"
runtime_dir = "{dir}/runtime"
slots = 4
queue_per_profile = 64
uid_base = {uid_base}
shutdown_grace_ms = 3000
proxy_uids = [{shim_uid}]

[limits]
timeout_ms = 4000
cpu_seconds = 1

[profiles.default]
max_sessions = 6
warm_children = 2

[sessions]
idle_timeout_s = 3
max_lifetime_s = 60

[[tenants]]
name = "soak"
api_key_sha256 = ["{key_hash}"]
[tenants.policy]
max_sessions = 4
"""

# What each scenario's answer must be: a status, a rejection kind, or a deliberate walk-away.
Outcome = str


def status_of(result: sandfork.Result) -> Outcome:
    return str(result.status)


def ok(client: sandfork.Client) -> Outcome:
    n = random.randrange(1000)
    result = client.run(f"print({n} * 2)")
    if result.status == "ok" and result.stdout != f"{n * 2}\n":
        return f"ok_with_wrong_output:{result.stdout[:40]!r}"
    return status_of(result)


def error(client: sandfork.Client) -> Outcome:
    return status_of(client.run("raise ValueError('soak')"))


def timeout(client: sandfork.Client) -> Outcome:
    return status_of(client.run("import time\ntime.sleep(30)", limits={"timeout_ms": 300}))


def cpu_limit(client: sandfork.Client) -> Outcome:
    return status_of(client.run("while True:\n    pass"))


def memory_bomb(client: sandfork.Client) -> Outcome:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 2**20))"
    return status_of(client.run(code, limits={"memory_mb": 64}))


def output_flood(client: sandfork.Client) -> Outcome:
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    return status_of(client.run(code, limits={"output_bytes": 4096}))


def killed(client: sandfork.Client) -> Outcome:
    return status_of(client.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))


def fork_bomb(client: sandfork.Client) -> Outcome:
    code = "import os\nwhile True:\n    os.fork()"
    result = client.run(code)
    if result.status == "error" and "PermissionError" not in result.stderr:
        return "error_without_PermissionError"
    return status_of(result)


def rejected(client: sandfork.Client) -> Outcome:
    try:
        client.run("print(1)", limits={"memory_mb": 999_999})
    except sandfork.Rejected as e:
        return "rejected:" + e.kind
    return "ran"


def stream_walk_away(client: sandfork.Client) -> Outcome:
    code = "import time\nfor i in range(100):\n    print(i, flush=True)\n    time.sleep(0.05)"
    for event in client.stream(code):
        if isinstance(event, sandfork.Output):
            break  # leaving the loop stops the run
    return "walked_away"


def cut_connection(socket_path: str) -> Outcome:
    """Hello, then the start of a run request's frame, then gone: the daemon must shrug."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(socket_path)
        sock.sendall(struct.pack(">I", 1 << 20) + os.urandom(random.randrange(0, 512)))
    return "cut"


def session_used(client: sandfork.Client) -> Outcome:
    with client.session() as session:
        session.execute("x = 40")
        result = session.execute("x + 2")
        if result.value != "42":
            return f"session_value:{result.value!r}"
        slow = threading.Timer(0.3, session.interrupt)
        slow.start()
        interrupted = session.execute("import time\ntime.sleep(20)")
        slow.cancel()
        if interrupted.status == "ok":
            return "session_not_interrupted"
    return "session_ok"


def session_abandoned(client: sandfork.Client) -> Outcome:
    session = client.session()
    session.execute("y = [0] * 100000")
    return "session_abandoned"  # never closed: its idle timeout (3 s) ends it


# (name, weight, what it may answer, transport: "socket" or "http")
Scenario = Tuple[str, int, Callable[..., Outcome], Tuple[Outcome, ...]]
SCENARIOS: List[Scenario] = [
    ("ok", 30, ok, ("ok",)),
    ("error", 6, error, ("error",)),
    ("timeout", 4, timeout, ("timeout",)),
    ("cpu_limit", 3, cpu_limit, ("cpu_limit",)),
    ("memory_bomb", 4, memory_bomb, ("memory_limit",)),
    ("output_flood", 4, output_flood, ("output_limit",)),
    ("killed", 4, killed, ("killed",)),
    ("fork_bomb", 4, fork_bomb, ("error",)),
    ("rejected", 4, rejected, ("rejected:limit_above_ceiling",)),
    ("stream_walk_away", 4, stream_walk_away, ("walked_away",)),
    ("cut_connection", 4, cut_connection, ("cut",)),
    ("session_used", 3, session_used, ("session_ok",)),
    ("session_abandoned", 2, session_abandoned, ("session_abandoned",)),
]
# Answers that are fine for any scenario: admission said "not now", with a retry hint.
BACKPRESSURE = ("rejected:busy", "rejected:rate_limited", "rejected:too_many_sessions",
                "rejected:no_session_capacity", "rejected:queue_timeout")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: Dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.lost: List[str] = []
        self.unexpected: List[str] = []
        self.requests = 0

    def record(self, name: str, transport: str, outcome: Outcome, expected: Tuple[Outcome, ...]) -> None:
        with self.lock:
            self.requests += 1
            self.outcomes[f"{name}/{transport}"][outcome] += 1
            if outcome not in expected and outcome not in BACKPRESSURE:
                self.unexpected.append(f"{name}/{transport}: {outcome}")

    def lose(self, name: str, transport: str, error: BaseException) -> None:
        with self.lock:
            self.requests += 1
            self.lost.append(f"{name}/{transport}: {type(error).__name__}: {error}")


def worker(stop: float, socket_path: str, url: str, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    clients = {
        "socket": sandfork.Client(socket=socket_path),
        "http": sandfork.HTTPClient(url, KEY),
    }
    weights = [s[1] for s in SCENARIOS]
    while time.monotonic() < stop:
        name, _, action, expected = rng.choices(SCENARIOS, weights)[0]
        transport = "socket" if name == "cut_connection" else rng.choice(["socket", "http"])
        try:
            if name == "cut_connection":
                outcome = action(socket_path)
            else:
                outcome = action(clients[transport])
        except sandfork.Rejected as e:
            outcome = "rejected:" + e.kind
        except Exception as e:  # anything else: the request was lost
            tally.lose(name, transport, e)
            continue
        tally.record(name, transport, outcome, expected)


# ---- what the daemon holds -------------------------------------------------------------------


def children(pid: int) -> List[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                found.append(int(k))
                todo.append(int(k))
    return found


def slot_uid_processes() -> List[int]:
    """Processes running as a slot uid (above uid_base) anywhere on the host."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    if UID_BASE < uid <= UID_BASE + 64:
                        found.append(int(entry))
                    break
        except OSError:
            continue
    return found


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cgroups(instance: str) -> Tuple[int, int]:
    """(cgroup directories of this daemon, those holding a process), on v1 or v2."""
    dirs = busy = 0
    for top, _, _ in os.walk("/sys/fs/cgroup"):
        if instance in Path(top).parts:
            dirs += 1
            try:
                if Path(top, "cgroup.procs").read_text().strip():
                    busy += 1
            except OSError:
                pass
    return dirs, busy


def pooled_connections(url: str) -> int:
    """The shim's idle daemon connections (sandfork_http_daemon_connections_idle): each holds
    one fd in the shim and one in the daemon, kept on purpose, at most 32."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"{url}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("sandfork_http_daemon_connections_idle "):
                return int(float(line.split()[1]))
    raise RuntimeError("the shim's /metrics has no sandfork_http_daemon_connections_idle")


def snapshot(daemon: int, shim: int, instance: str, url: str) -> Dict[str, int]:
    dirs, busy = cgroups(instance)
    # fds net of the shim's pooled connections (read first: the scrape itself takes one from the
    # pool and gives it back).
    pooled = pooled_connections(url)
    return {
        "daemon_descendants": len(children(daemon)),
        "slot_uid_processes": len(slot_uid_processes()),
        "daemon_fds": len(os.listdir(f"/proc/{daemon}/fd")) - pooled,
        "shim_fds": len(os.listdir(f"/proc/{shim}/fd")) - pooled,
        "host_mounts": len(Path("/proc/self/mountinfo").read_text().splitlines()),
        "cgroup_dirs": dirs,
        "cgroups_with_processes": busy,
        "daemon_rss_kb": rss_kb(daemon),
        "shim_rss_kb": rss_kb(shim),
    }


def wait_idle(client: sandfork.Client, limit_s: float) -> bool:
    """Until no slot is busy, no session lives and the warm pool is full again."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = client.status()
        profiles = status.get("profiles", [])
        if (status.get("slots_busy") == 0
                and all(p.get("sessions_live", 0) == 0 and p.get("queued", 0) == 0
                        and p.get("warm_children", 0) >= 2 for p in profiles)):
            return True
        time.sleep(0.5)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the load lasts (default 1)")
    parser.add_argument("--workers", type=int, default=6, help="concurrent callers (default 6)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON here")
    parser.add_argument("--bin", default=str(ROOT / "target/debug"), help="where the binaries are")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("scripts/soak: needs root (a full daemon, its cgroups and slot uids)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sandfork-soak-"))
    work.chmod(0o755)
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    (work / "config.toml").write_text(CONFIG.format(
        dir=work, uid_base=UID_BASE, shim_uid=SHIM_UID, key_hash=key_hash))
    socket_path = str(work / "sandfork.sock")
    env = dict(os.environ, RUST_LOG="info")
    daemon_log = open(work / "daemon.log", "wb")
    daemon = subprocess.Popen([f"{args.bin}/sandforkd", "--config", str(work / "config.toml")],
                              stdin=subprocess.DEVNULL, stdout=daemon_log, stderr=daemon_log, env=env)
    shim = None
    try:
        client = sandfork.Client(socket=socket_path)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.status().get("ready"):
                    break
            except sandfork.SandforkError:
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                print("scripts/soak: the daemon did not become ready:\n"
                      + (work / "daemon.log").read_text(), file=sys.stderr)
                return 2
            time.sleep(0.2)
        shim_log = open(work / "shim.log", "wb")
        shim = subprocess.Popen([f"{args.bin}/sandfork-http", "--config", str(work / "config.toml"),
                                 "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                                stdout=shim_log, stderr=shim_log, env=env, user=SHIM_UID, group=SHIM_UID)
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            for line in (work / "shim.log").read_text(errors="replace").splitlines():
                if "listening" in line and "addr=" in line:
                    url = "http://" + line.split("addr=")[1].split()[0]
            time.sleep(0.1)
        if url is None:
            print("scripts/soak: the shim did not start:\n" + (work / "shim.log").read_text(), file=sys.stderr)
            return 2
        # The daemon's cgroup tree is named after its socket (supervisor::instance_name).
        instance = "sandfork-" + hashlib.sha256(socket_path.encode()).hexdigest()[:12]
        # Warm up both paths, let the pools settle, then take the "first" figures.
        for i in range(10):
            client.run(f"print({i})")
            sandfork.HTTPClient(url, KEY).run(f"print({i})")
        wait_idle(client, 60)
        first = snapshot(daemon.pid, shim.pid, instance, url)
        print(f"==> soak: {args.workers} workers for {args.minutes:g} min against {socket_path} and {url}")
        tally = Tally()
        stop = time.monotonic() + args.minutes * 60
        threads = [threading.Thread(target=worker, args=(stop, socket_path, url, tally, i), daemon=True)
                   for i in range(args.workers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        samples = [first["daemon_rss_kb"]]
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            samples.append(rss_kb(daemon.pid))
        elapsed = time.monotonic() - started
        idle = wait_idle(client, 60)
        last = snapshot(daemon.pid, shim.pid, instance, url)
    finally:
        for proc in (shim, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    panicked = "panicked" in (work / "daemon.log").read_text(errors="replace")
    leaks = {k: (first[k], last[k]) for k in first
             if not k.endswith("rss_kb") and last[k] != first[k]}
    statuses = collections.Counter()
    for outcomes in tally.outcomes.values():
        statuses.update(outcomes)
    # Every scenario came out as it should at least once (all the statuses, every walk-away).
    missing = sorted({e for _, _, _, expected in SCENARIOS for e in expected} - set(statuses))
    report = {
        "minutes": round(elapsed / 60, 2),
        "workers": args.workers,
        "requests": tally.requests,
        "answered": tally.requests - len(tally.lost),
        "lost": len(tally.lost),
        "unexpected": len(tally.unexpected),
        "outcomes": dict(sorted(statuses.items())),
        "first": first,
        "last": last,
        "never_seen": missing,
        "leaked": leaks,
        "idle_after_load": idle,
        "daemon_rss_kb_max": max(samples),
        "daemon_panicked": panicked,
        "daemon_exit": daemon.returncode,
    }
    print(json.dumps(report, indent=2))
    for line in tally.lost[:20]:
        print("LOST " + line)
    for line in tally.unexpected[:20]:
        print("UNEXPECTED " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = (tally.lost or tally.unexpected or missing or leaks or not idle or panicked
              or daemon.returncode != 0)
    print(f"==> soak: {tally.requests} requests in {elapsed / 60:.1f} min, {len(tally.lost)} lost, "
          f"{len(tally.unexpected)} unexpected, leaked: {leaks or 'nothing'}, daemon RSS "
          f"{first['daemon_rss_kb']} -> {last['daemon_rss_kb']} KiB (max {max(samples)}); "
          + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
