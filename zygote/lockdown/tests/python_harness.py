"""Drive libsandfork_lockdown.so the way the Python zygote does, then run a stdlib workload.

Usage: python -I python_harness.py LIB_PATH SPEC_JSON

SPEC_JSON (written by tests/python_child.rs):
  {"init": {...init config without the interpreter's paths...},
   "child": {...child params without keep_fds...},
   "bench_runs": 50,
   "lockdown": true}

The harness adds the interpreter's own prefix and library directories to read_exec_paths, calls
sandfork_lockdown_init once, forks `bench_runs` children that only time sandfork_child_lockdown,
then forks one child that locks itself down and runs every workload item in turn. It prints one
JSON object on stdout. Each workload item reports {"name", "ok", "detail" | "error"}; items that
must be refused expect PermissionError. Runs on CPython 3.9 to 3.13 (no newer syntax).
"""

import ctypes
import importlib.util
import json
import os
import sys
import sysconfig
import time


def interpreter_paths():
    """The interpreter's prefix and the directories its extension modules link from."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        paths += ["/usr/lib/" + multiarch, "/lib/" + multiarch]
    paths += ["/lib64", "/usr/lib64"]
    seen = []
    for path in paths:
        if path and path not in seen:
            seen.append(path)
    return seen


def load(lib_path):
    lib = ctypes.CDLL(lib_path)
    lib.sandfork_lockdown_init.argtypes = [ctypes.c_char_p]
    lib.sandfork_lockdown_init.restype = ctypes.c_int32
    lib.sandfork_child_lockdown.argtypes = [ctypes.c_char_p]
    lib.sandfork_child_lockdown.restype = ctypes.c_int32
    lib.sandfork_lockdown_error.argtypes = []
    lib.sandfork_lockdown_error.restype = ctypes.c_char_p
    lib.sandfork_lockdown_report.argtypes = []
    lib.sandfork_lockdown_report.restype = ctypes.c_char_p
    return lib


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def wait_status(pid):
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


# ---------------------------------------------------------------- workload items


def item_json():
    import json as j

    return j.loads(j.dumps({"a": [1, 2, 3], "b": "\u00e9"}))


def item_re():
    import re

    return re.findall(r"(\w+)@(\w+)\.com", "a@b.com, c@d.com")


def item_math():
    import math

    return math.fsum([0.1] * 10), math.sqrt(2), math.factorial(20)


def item_decimal():
    import decimal

    return str(decimal.Decimal("1.1") + decimal.Decimal("2.2"))


def item_datetime():
    import datetime

    now = datetime.datetime.now()
    utc = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(), utc.strftime("%Y-%m-%d"), time.localtime().tm_zone


def item_hashlib():
    import hashlib

    return (
        hashlib.sha256(b"x").hexdigest()[:16],
        hashlib.md5(b"x").hexdigest()[:16],
        hashlib.blake2b(b"x").hexdigest()[:16],
        hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 10).hex()[:16],
    )


def item_random():
    import random

    random.seed()
    return random.random(), random.randint(1, 6), random.SystemRandom().random()


def item_secrets():
    import secrets

    return secrets.token_hex(8)


def item_urandom():
    return len(os.urandom(32))


def item_uuid():
    import uuid

    return str(uuid.uuid4())


def item_threading():
    import threading

    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(i * i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(results)


def item_thread_pool():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda x: x + 1, range(5)))


def item_tempfile_cwd():
    import tempfile

    with tempfile.NamedTemporaryFile(dir=".") as handle:
        handle.write(b"data")
        handle.flush()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        with open(os.path.join(tmp, "f"), "w") as handle:
            handle.write("x")
        os.mkdir(os.path.join(tmp, "sub"))
    fd, name = tempfile.mkstemp(dir=".")
    os.close(fd)
    os.unlink(name)
    return "ok"


def item_tempfile_default_dir():
    import tempfile

    with tempfile.TemporaryFile() as handle:
        handle.write(b"x")
    return tempfile.gettempdir()


def item_files():
    with open("data.txt", "w") as handle:
        handle.write("hello\n" * 1000)
    with open("data.txt") as handle:
        lines = handle.readlines()
    with open("data.txt", "ab") as handle:
        handle.write(b"more")
    os.rename("data.txt", "renamed.txt")
    st = os.stat("renamed.txt")
    os.chmod("renamed.txt", 0o600)
    os.mkdir("dir")
    listing = sorted(os.listdir("."))
    os.rmdir("dir")
    os.unlink("renamed.txt")
    return len(lines), st.st_size, listing, os.getcwd()


def item_shutil():
    import shutil

    os.mkdir("tree")
    with open("tree/a.txt", "w") as handle:
        handle.write("a")
    shutil.copy2("tree/a.txt", "tree/b.txt")
    shutil.copytree("tree", "tree2")
    shutil.move("tree2", "tree3")
    shutil.rmtree("tree")
    shutil.rmtree("tree3")
    return shutil.disk_usage(".").total


def item_mmap():
    import mmap

    anon = mmap.mmap(-1, 1 << 20)
    anon[:5] = b"hello"
    with open("mapped.bin", "wb") as handle:
        handle.write(b"\0" * 4096)
    with open("mapped.bin", "r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 4096)
        mapped[:3] = b"abc"
        mapped.close()
    os.unlink("mapped.bin")
    return bytes(anon[:5])


def item_asyncio():
    import asyncio

    async def square(x):
        await asyncio.sleep(0.001)
        return x * x

    async def main():
        return await asyncio.gather(*(square(i) for i in range(5)))

    return asyncio.run(main())


def item_ctypes_callback():
    callback = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)
    values = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    compare_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    compare = compare_type(lambda a, b: a[0] - b[0])
    libc = ctypes.CDLL(None)
    libc.qsort(values, len(values), ctypes.sizeof(ctypes.c_int), compare)
    return callback(), list(values)


def item_compression():
    import bz2
    import lzma
    import zlib

    data = b"sandfork " * 1000
    assert zlib.decompress(zlib.compress(data)) == data
    assert bz2.decompress(bz2.compress(data)) == data
    assert lzma.decompress(lzma.compress(data)) == data
    return len(zlib.compress(data))


def item_sqlite_memory():
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("create table t (x integer)")
    conn.executemany("insert into t values (?)", [(i,) for i in range(100)])
    total = conn.execute("select sum(x) from t").fetchone()[0]
    conn.close()
    return total


def item_sqlite_file():
    import sqlite3

    conn = sqlite3.connect("db.sqlite")
    conn.execute("create table t (x integer)")
    conn.execute("insert into t values (42)")
    conn.commit()
    value = conn.execute("select x from t").fetchone()[0]
    conn.close()
    os.unlink("db.sqlite")
    return value


def item_allocate_50mb():
    block = bytearray(50 * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    return sum(block[::4096])


def item_traceback():
    import io
    import traceback

    try:
        {}["missing"]
    except KeyError:
        text = traceback.format_exc()
        traceback.print_exc(file=io.StringIO())
        sys.stderr.write("(expected traceback follows)\n" + text)
        sys.stderr.flush()
    return text.splitlines()[-1]


def item_print():
    print("hello from the locked-down child")
    sys.stdout.flush()
    return "printed"


def item_signals():
    import signal

    got = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    os.kill(os.getpid(), signal.SIGUSR1)
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    signal.signal(signal.SIGALRM, lambda signum, frame: got.append(signum))
    time.sleep(0.05)
    return got


def item_time():
    start = time.monotonic()
    time.sleep(0.002)
    return time.monotonic() - start > 0, time.process_time() >= 0, time.time() > 0


def item_resource():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 128), hard))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return soft, hard, usage.ru_maxrss > 0


def item_cpu_count():
    return os.cpu_count(), len(os.sched_getaffinity(0))


def item_identity():
    return os.getuid(), os.getgid(), os.getpid() > 0, os.getppid() >= 0, os.uname().sysname


def item_socketpair():
    import socket

    left, right = socket.socketpair()
    left.sendall(b"ping")
    data = right.recv(4)
    left.close()
    right.close()
    return data


def item_numpy():
    import numpy

    return float(numpy.arange(10).sum()), float(numpy.linalg.inv(numpy.eye(3))[0, 0])


def item_pandas():
    import pandas

    frame = pandas.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    return int(frame["a"].sum()), frame.to_csv(index=False)


# Items that must be refused: each must raise PermissionError, not crash the child.


def item_subprocess():
    import subprocess

    return subprocess.run(["/bin/true"]).returncode


def item_fork():
    return os.fork()


def item_exec():
    os.execv("/bin/true", ["/bin/true"])


def item_socket_inet():
    import socket

    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def item_write_outside():
    with open("/tmp/sandfork-harness-must-not-exist", "w") as handle:
        handle.write("x")


def item_read_etc():
    with open("/etc/passwd") as handle:
        return handle.read(10)


def item_nice():
    return os.nice(1)


# The result line is marked because workload items print to the same stdout.
RESULT_MARKER = "SANDFORK_HARNESS_RESULT "
OK = None
ITEMS = [
    ("json", item_json, OK),
    ("re", item_re, OK),
    ("math", item_math, OK),
    ("decimal", item_decimal, OK),
    ("datetime", item_datetime, OK),
    ("hashlib", item_hashlib, OK),
    ("random", item_random, OK),
    ("secrets", item_secrets, OK),
    ("os_urandom", item_urandom, OK),
    ("uuid", item_uuid, OK),
    ("threading", item_threading, OK),
    ("thread_pool", item_thread_pool, OK),
    ("tempfile_cwd", item_tempfile_cwd, OK),
    ("tempfile_default_dir", item_tempfile_default_dir, OK),
    ("files", item_files, OK),
    ("shutil", item_shutil, OK),
    ("mmap", item_mmap, OK),
    ("asyncio", item_asyncio, OK),
    ("ctypes_callback", item_ctypes_callback, OK),
    ("compression", item_compression, OK),
    ("sqlite_memory", item_sqlite_memory, OK),
    ("sqlite_file", item_sqlite_file, OK),
    ("allocate_50mb", item_allocate_50mb, OK),
    ("traceback", item_traceback, OK),
    ("print", item_print, OK),
    ("signals", item_signals, OK),
    ("time", item_time, OK),
    ("resource", item_resource, OK),
    ("cpu_count", item_cpu_count, OK),
    ("identity", item_identity, OK),
    ("socketpair", item_socketpair, OK),
    ("numpy", item_numpy, OK),
    ("pandas", item_pandas, OK),
    ("subprocess", item_subprocess, PermissionError),
    ("fork", item_fork, PermissionError),
    ("exec", item_exec, PermissionError),
    ("socket_inet", item_socket_inet, PermissionError),
    ("write_outside", item_write_outside, PermissionError),
    ("read_etc", item_read_etc, PermissionError),
    ("nice", item_nice, PermissionError),
]
OPTIONAL_MODULES = {"numpy": "numpy", "pandas": "pandas"}


def run_items(fd, skipped):
    for name, func, expect in ITEMS:
        if name in skipped:
            continue
        write_all(fd, (json.dumps({"start": name}) + "\n").encode())
        try:
            detail = func()
            result = {"name": name, "ok": expect is None, "detail": repr(detail)[:300]}
        except BaseException as error:  # noqa: BLE001 - the harness reports everything
            ok = expect is not None and isinstance(error, expect)
            result = {"name": name, "ok": ok, "error": "%s: %s" % (type(error).__name__, error)}
        write_all(fd, (json.dumps(result) + "\n").encode())


# ---------------------------------------------------------------- zygote side


def child_params(spec, write_fd):
    params = dict(spec["child"])
    params["keep_fds"] = [0, 1, 2, write_fd]
    return json.dumps(params).encode()


def bench(lib, spec, runs):
    """Fork `runs` children; each times sandfork_child_lockdown and exits."""
    lockdown_ns, roundtrip_ns, failures = [], [], []
    for _ in range(runs):
        read_fd, write_fd = os.pipe()
        params = child_params(spec, write_fd)
        started = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            try:
                t0 = time.perf_counter_ns()
                rc = lib.sandfork_child_lockdown(params)
                t1 = time.perf_counter_ns()
                message = {"rc": rc, "ns": t1 - t0}
                if rc != 0:
                    message["error"] = lib.sandfork_lockdown_error().decode()
                write_all(write_fd, json.dumps(message).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        data = read_all(read_fd)
        os.close(read_fd)
        status = wait_status(pid)
        roundtrip_ns.append(time.perf_counter_ns() - started)
        try:
            message = json.loads(data.decode())
        except ValueError:
            failures.append({"status": status, "raw": data.decode(errors="replace")})
            continue
        if message["rc"] != 0:
            failures.append(message)
        else:
            lockdown_ns.append(message["ns"])
    return {"lockdown_ns": lockdown_ns, "fork_lockdown_exit_ns": roundtrip_ns, "failures": failures}


def workload(lib, spec, skipped):
    read_fd, write_fd = os.pipe()
    params = child_params(spec, write_fd)
    pid = os.fork()
    if pid == 0:
        try:
            if spec.get("lockdown", True):
                rc = lib.sandfork_child_lockdown(params)
                if rc != 0:
                    error = lib.sandfork_lockdown_error().decode()
                    write_all(write_fd, (json.dumps({"lockdown_rc": rc, "error": error}) + "\n").encode())
                    os._exit(3)
            else:
                os.chdir(spec["child"]["work_dir"])
            write_all(write_fd, (json.dumps({"lockdown_rc": 0}) + "\n").encode())
            run_items(write_fd, skipped)
        finally:
            os._exit(0)
    os.close(write_fd)
    data = read_all(read_fd)
    os.close(read_fd)
    status = wait_status(pid)
    lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    results = [line for line in lines if "name" in line]
    started = [line["start"] for line in lines if "start" in line]
    lockdown = [line for line in lines if "lockdown_rc" in line]
    return {
        "status": status,
        "lockdown": lockdown[0] if lockdown else None,
        "results": results,
        "last_started": started[-1] if started else None,
    }


def main():
    lib_path, spec = sys.argv[1], json.loads(sys.argv[2])
    out = {"python": sys.version.split()[0], "executable": sys.executable, "prefix": sys.prefix}
    skipped = {}
    for name, module in OPTIONAL_MODULES.items():
        if importlib.util.find_spec(module) is None:
            skipped[name] = "%s is not installed for %s" % (module, sys.executable)
    out["skipped"] = skipped
    out["items"] = [name for name, _, _ in ITEMS]

    lib = load(lib_path) if spec.get("lockdown", True) else None
    if lib is None:
        # Unconfined inventory runs (strace) must not really fork or exec.
        for name, _, expect in ITEMS:
            if expect is not None:
                skipped[name] = "refused items only run under lockdown"
    if lib is not None:
        config = dict(spec["init"])
        config["read_exec_paths"] = interpreter_paths() + list(config.get("read_exec_paths", []))
        rc = lib.sandfork_lockdown_init(json.dumps(config).encode())
        out["init_rc"] = rc
        if rc != 0:
            out["init_error"] = lib.sandfork_lockdown_error().decode()
            print(RESULT_MARKER + json.dumps(out))
            return
        out["report"] = json.loads(lib.sandfork_lockdown_report().decode())
        out["bench"] = bench(lib, spec, int(spec.get("bench_runs", 0)))
    sys.stdout.flush()
    out["workload"] = workload(lib, spec, skipped)
    print(RESULT_MARKER + json.dumps(out))


if __name__ == "__main__":
    main()
