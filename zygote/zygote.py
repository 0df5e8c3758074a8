"""sandfork zygote: a pre-initialized Python that forks one locked-down child per run.

Runs as PID 1 of its own pid namespace, inside the jail that zygote-init built (user, mount, pid,
net, ipc, uts and cgroup namespaces; a read-only root; no /proc; NO_NEW_PRIVS; the zygote seccomp
filter). It is trusted code and never sees user code or data: code and stdin travel from the
supervisor straight to the child as memfds, after the child has locked itself down.

Control channel: fd 3, an AF_UNIX SOCK_SEQPACKET socket to the supervisor. One JSON object per
packet, file descriptors as SCM_RIGHTS. After "ready", the loop that serves it is the lockdown
library's sandfork_serve (zygote/lockdown/src/serve.rs): between forks the zygote runs no Python,
so it copies none of the heap it shares with its children.

Every message here has one definition, in the sandfork-ipc crate (zygote/ipc/src/zygote.rs and
child.rs), decoded strictly on the other side; the supervisor's test suite runs the functions
below against those types (tests/ipc_shapes.rs).

  supervisor -> zygote
    {"op": "spawn", "id", "uid", "gid", "tmpfs_bytes", "rlimits": {...}, "own_pid_namespace"}
        fds: [child control socket, stdout write end, stderr write end]
    {"op": "shutdown"}
  zygote -> supervisor
    {"op": "ready", "pid", "python", "preloaded", "preload_failed", "warmup_error", "rehearsal",
     "lockdown", "rss_kb"}     (rehearsal: a warm-up ran cleanly, children can rehearse it)
    {"op": "fatal", "error"}                       (then the zygote exits)
    {"op": "spawned", "id", "pid", "rss_kb"}   fds: [pidfd]   (rss_kb: the zygote's peak RSS)
    {"op": "spawn_failed", "id", "error"}
    {"op": "exit", "id", "pid", "exit_code", "signal", "utime", "stime", "maxrss_kb"}

Child channel: fd 3 in the child, a SEQPACKET socket whose other end the supervisor holds.

  child -> supervisor  {"op": "ready"}            after lockdown, before any user input
  supervisor -> child  {"op": "rehearse"}         optional, to a warm child that waits for a
                                                  request: run the warm-up once meanwhile
  supervisor -> child  {"op": "go", "argv", "rlimits", "mode", "files", "collect"}
                       fds: [code memfd, stdin memfd(, input files memfd)]
  child -> supervisor  after the program:
                       {"op": "result", "size"} + raw packets   function mode: main()'s JSON
                       {"op": "files", "entries": [{"path", "size"}], "truncated", "skipped",
                        "size"}   (skipped: files whose path is not UTF-8)
                           + raw packets
                       {"op": "done"}             (stdout/stderr already closed)

A session's child gets "session" instead of "go", then cells until the channel closes:

  supervisor -> child  {"op": "session", "rlimits"}
  supervisor -> child  {"op": "cell", "number", "files", "value_bytes", "code", "stdin"}
                       fds: [code memfd unless "code" is inline][stdin memfd if "stdin"]
                            [input files memfd if "files"]
  child -> supervisor  {"op": "result", "size"} + raw packets   the last expression's repr()
                       {"op": "cell_done", "failed"}            output flushed, not closed
  supervisor -> child  {"op": "list_files", "max_count"}  ->  {"op": "listing", ...}, done
  supervisor -> child  {"op": "read_file", "path", "max_bytes"}  ->  files (0 or 1), done

The channel stays open as fd 3 while the program runs, so the supervisor reads everything the
child sends after "go" as the program's claims: bounded, strictly parsed, believed only as far as
they can be checked. The exit status comes from the kernel (the zygote's wait4), never from here.

Warm-up: the profile's trusted warm-up code runs twice in the zygote before gc.freeze() (lazy
imports and caches are filled once, for every child), and once more in a warm child that the
supervisor asks to ("rehearse": it went into the pool with no request waiting), output
discarded: that rehearsal takes the copy-on-write faults a typical run takes before the request
arrives instead of on its path. It runs in a throwaway namespace; the request's code still gets
a fresh __main__.

A run's child runs the code once in a fresh __main__ and _exits; a session's child keeps its
__main__ from cell to cell (SIGINT raises KeyboardInterrupt in a running cell, and is ignored
between cells) and exits when the channel closes or a cell calls sys.exit().
"""

import ast
import builtins
import ctypes
import gc
import json
import linecache
import os
import resource
import signal
import socket
import stat
import sys
import threading
import time
import traceback
import types

CONTROL_FD = 3
MAX_PACKET = 1 << 20
# Exit codes of a child that never reached user code; the supervisor reports them as
# internal_error and never blames the user for them.
EXIT_LOCKDOWN_FAILED = 121
EXIT_CHILD_SETUP_FAILED = 122
# sandfork_serve's results (zygote/lockdown/src/ffi.rs).
SERVE_STOP = 0
SERVE_CHILD = 1
SCRIPT_NAME = "main.py"
# The supervisor's request to rehearse the warm-up while waiting: ToChild::Rehearse's exact bytes
# (tests/ipc_shapes.rs checks them against the Rust encoding).
REHEARSE = b'{"op":"rehearse"}'
# How ToChild::Session's encoding begins (tests/ipc_shapes.rs checks it too).
SESSION_PREFIX = b'{"op":"session"'


def log(message):
    """Writes one line to the zygote's stderr, which the supervisor logs."""
    try:
        sys.stderr.write("zygote: %s\n" % message)
        sys.stderr.flush()
    except Exception:
        pass


def send(sock, message, fds=()):
    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


RLIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "fsize_bytes": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "as_bytes": resource.RLIMIT_AS,
}


def lower_rlimits(limits):
    """Lowers (never raises) the child's rlimits to the values the run asked for."""
    for key, value in (limits or {}).items():
        which = RLIMITS.get(key)
        if which is None or value is None:
            continue
        soft, hard = resource.getrlimit(which)
        value = int(value)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        new_hard = hard
        if key == "cpu_seconds":
            # SIGXCPU at the soft limit, SIGKILL one second later at the hard limit.
            new_hard = value + 1 if hard == resource.RLIM_INFINITY else min(hard, value + 1)
        elif hard == resource.RLIM_INFINITY or value < hard:
            new_hard = value
        resource.setrlimit(which, (value, new_hard))


class Zygote:
    def __init__(self, config):
        self.config = config
        self.ctrl = socket.socket(fileno=CONTROL_FD)
        self.lockdown = None
        self.warmup = None  # the warm-up source, once it has run cleanly in the zygote

    # ---- start-up -------------------------------------------------------------------------
    def start(self):
        lib = ctypes.CDLL(self.config["lockdown_lib"])
        lib.sandfork_lockdown_init.argtypes = [ctypes.c_char_p]
        lib.sandfork_lockdown_init.restype = ctypes.c_int32
        lib.sandfork_child_lockdown.argtypes = [ctypes.c_char_p]
        lib.sandfork_child_lockdown.restype = ctypes.c_int32
        lib.sandfork_lockdown_error.restype = ctypes.c_char_p
        lib.sandfork_lockdown_report.restype = ctypes.c_char_p
        lib.sandfork_serve.argtypes = [ctypes.c_int32]
        lib.sandfork_serve.restype = ctypes.c_int32
        lib.sandfork_child_message.restype = ctypes.c_char_p
        ctypes.pythonapi.PyOS_AfterFork_Child.argtypes = []
        ctypes.pythonapi.PyOS_AfterFork_Child.restype = None
        rc = lib.sandfork_lockdown_init(json.dumps(self.config["lockdown_init"]).encode())
        if rc != 0:
            raise RuntimeError(
                "lockdown init failed (%d): %s" % (rc, lib.sandfork_lockdown_error().decode())
            )
        self.lockdown = lib
        report = json.loads(lib.sandfork_lockdown_report().decode() or "{}")

        failed = []
        preloaded = 0
        for name in self.config.get("preload", []):
            try:
                __import__(name)
                preloaded += 1
            except Exception as err:  # a missing optional module is reported, not fatal
                failed.append("%s: %s: %s" % (name, type(err).__name__, err))
        warmup_error = None
        warmup = self.config.get("warmup") or ""
        if warmup:
            try:
                rehearse(warmup, times=2)
                self.warmup = warmup
            except BaseException as err:  # reported; children then skip the rehearsal
                warmup_error = "%s: %s" % (type(err).__name__, err)
        if threading.active_count() != 1:
            raise RuntimeError(
                "zygote is not single-threaded after preload (%d threads)"
                % threading.active_count()
            )
        # Children must not copy pages when they collect: move everything preloaded out of
        # the collector's generations for good.
        gc.collect()
        gc.freeze()

        send(self.ctrl, ready_message(preloaded, failed, warmup_error, self.warmup, report))

    # ---- serving ----------------------------------------------------------------------------
    def serve(self):
        """Hands the channel to the lockdown library's fork loop (in Rust, so the zygote writes
        nothing to the Python heap its children share). Returns when the zygote should stop;
        never returns in a child."""
        sys.stdout.flush()
        sys.stderr.flush()
        rc = self.lockdown.sandfork_serve(CONTROL_FD)
        if rc == SERVE_CHILD:
            # What os.fork() does in the child, first: re-create the GIL, run the at-fork hooks
            # (random's reseed, threading's bookkeeping, ...).
            ctypes.pythonapi.PyOS_AfterFork_Child()
            code = EXIT_CHILD_SETUP_FAILED
            try:
                message = json.loads(self.lockdown.sandfork_child_message().decode())
                code = self.become_child(message, message["fds"])
            except BaseException as err:
                # Never unwind into the zygote's code; say why on the run's stderr.
                try:
                    why = "%s: %s" % (type(err).__name__, err)
                    os.write(2, ("sandfork: child setup failed: %s\n" % why).encode())
                except BaseException:
                    pass
            finally:
                os._exit(code)
        if rc != SERVE_STOP:
            why = self.lockdown.sandfork_lockdown_error().decode(errors="replace")
            log("serving stopped: %s" % why)

    # ---- the child ------------------------------------------------------------------------
    def become_child(self, message, fds):
        """Runs in the forked child. Returns the exit code; never returns to the zygote loop."""
        # The zygote's own channel must not survive in the child, not even as a Python object
        # that could close a reused fd number when collected.
        self.ctrl.detach()
        child_ctrl, out_w, err_w = fds
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(child_ctrl, CONTROL_FD)
        params = {
            "keep_fds": [0, 1, 2, CONTROL_FD],
            "work_dir": self.config["work_dir"],
            "tmpfs_bytes": message["tmpfs_bytes"],
            "uid": message["uid"],
            "gid": message["gid"],
            "rlimits": message["rlimits"],
        }
        if self.config.get("shm_dir"):
            # A profile with processes: the run's private /dev/shm (the jail links it here).
            params["shm_dir"] = self.config["shm_dir"]
        rootless = self.config.get("rootless")
        if rootless:
            # Rootless mode: the namespace maps only the daemon's own ids, so every child stays
            # uid 0 and drops its capabilities instead; RLIMIT_NPROC then counts every child of
            # this zygote, so the supervisor sizes it for all of them.
            params.update(uid=0, gid=0, rootless=True)
            params["rlimits"] = dict(params["rlimits"], nproc=rootless["nproc"])
        rc = self.lockdown.sandfork_child_lockdown(json.dumps(params).encode())
        if rc != 0:
            err = self.lockdown.sandfork_lockdown_error().decode(errors="replace")
            os.write(2, ("sandfork: lockdown failed at step %d: %s\n" % (rc, err)).encode())
            return EXIT_LOCKDOWN_FAILED
        return run_child(self.warmup)


def ready_message(preloaded, failed, warmup_error, warmup, report):
    """The zygote's "ready" (sandfork_ipc::zygote::FromZygote::Ready)."""
    return {
        "op": "ready",
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "preloaded": preloaded,
        "preload_failed": failed,
        "warmup_error": warmup_error,
        "rehearsal": warmup is not None,
        "lockdown": report,
        "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# The child's reports (sandfork_ipc::child::FromChild), one function per message.
def report_ready(chan):
    send(chan, {"op": "ready"})


def report_result(chan, value):
    send_blob(chan, {"op": "result"}, value)


def report_files(chan, entries, payload, truncated, skipped=0):
    header = {"op": "files", "entries": entries, "truncated": truncated, "skipped": skipped}
    send_blob(chan, header, payload)


def report_done(chan):
    send(chan, {"op": "done"})


def report_cell_done(chan, failed):
    send(chan, {"op": "cell_done", "failed": failed})


def report_listing(chan, entries, truncated):
    send(chan, {"op": "listing", "entries": entries, "truncated": truncated})
    report_done(chan)


# What a "go" looks like, for the rehearsal's JSON decoding.
SAMPLE_GO = (
    '{"op":"go","argv":[],"rlimits":{"cpu_seconds":16,"as_bytes":null},"mode":"script",'
    '"files":[],"collect":{"max_count":100,"max_bytes":1048576}}'
)


def rehearse(source, times=1):
    """Runs trusted warm-up code `times` times, each in a throwaway namespace, its output
    discarded; then decodes a sample "go"."""
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w", encoding="utf-8") as sink:
        sys.stdout = sys.stderr = sink
        try:
            for _ in range(times):
                module = types.ModuleType("__main__")
                module.__dict__["__builtins__"] = builtins
                exec(compile(source, "<warmup>", "exec", dont_inherit=True), module.__dict__)
                sink.flush()
        finally:
            sys.stdout, sys.stderr = saved
    json.loads(SAMPLE_GO)


def run_child(warmup):
    """Locked down: tell the supervisor, rehearse if asked, wait for the code, run it once."""
    chan = socket.socket(fileno=CONTROL_FD)
    chan.setblocking(True)
    # Everything that does not depend on the request is built before "ready".
    sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = sys.__stderr__ = open(
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    main.__dict__["__file__"] = SCRIPT_NAME
    report_ready(chan)
    while True:
        data, fds, _flags, _addr = socket.recv_fds(chan, MAX_PACKET, 3)
        if data != REHEARSE or fds:
            break
        if warmup:
            try:
                rehearse(warmup)
            except BaseException:
                pass  # it ran cleanly in the zygote; a failure here only costs speed
    if data.startswith(SESSION_PREFIX):
        for fd in fds:
            os.close(fd)
        return run_session(chan, main, json.loads(data))
    if not data or len(fds) < 2:
        os.write(2, b"sandfork: no code arrived\n")
        return EXIT_CHILD_SETUP_FAILED
    go = json.loads(data)
    code_fd, stdin_fd = fds[0], fds[1]
    files_fd = fds[2] if len(fds) > 2 else None
    lower_rlimits(go.get("rlimits"))
    os.dup2(stdin_fd, 0)
    os.close(stdin_fd)
    source = read_sealed(code_fd)
    inputs = write_input_files(go.get("files") or [], files_fd)
    # The run's directory, as it is now: output files are collected from it, wherever the
    # program's working directory ends up.
    run_dir = os.getcwd()
    run_dir_id = os.stat(run_dir)
    run_dir_id = (run_dir_id.st_dev, run_dir_id.st_ino)

    reseed_generators()
    sys.argv = [SCRIPT_NAME] + [str(a) for a in go.get("argv", [])]
    # As `python main.py` run in its working directory: main.py's directory comes first on the
    # import path, so the run's own modules import (those it was given, or writes). The jail is
    # unchanged: site-packages stays read-only, there is no user site (-I), and this directory is
    # the run's own tmpfs.
    sys.path.insert(0, os.getcwd())
    sys.modules["__main__"] = main
    text = source.decode("utf-8", errors="replace")
    # mtime None: linecache keeps the entry although no such file exists, so tracebacks show
    # the offending lines.
    linecache.cache[SCRIPT_NAME] = (len(text), None, text.splitlines(True), SCRIPT_NAME)

    code = 0
    value = None
    try:
        exec(compile(source, SCRIPT_NAME, "exec", dont_inherit=True), main.__dict__)
        if go.get("mode") == "function":
            value, code = call_main(main)
    except SystemExit as exc:
        code = exit_code_of(exc)
    except BaseException as exc:
        print_user_traceback(exc)
        code = 1
    code = finish(code)
    try:
        if value is not None:
            report_result(chan, value)
        collect = go.get("collect") or {}
        if collect.get("max_count", 0) > 0:
            entries, payload, truncated, skipped = collect_output_files(
                run_dir, run_dir_id, collect, inputs
            )
            report_files(chan, entries, payload, truncated, skipped)
        # Output is flushed: close it now, so the supervisor sees EOF without waiting for the
        # kernel to tear down this process's copy of the zygote's memory, and say we are done.
        for fd in (1, 2):
            try:
                os.close(fd)
            except OSError:
                pass
        report_done(chan)
    except OSError:
        pass  # the program closed or broke its channel: no result, no files
    return code


# ---- sessions ------------------------------------------------------------------------------


# A session's stdin: the /dev/null descriptor kept at its start, and the reader on it that the
# last cell without stdin had (None after a cell with stdin).
STDIN = {"null_fd": None, "empty": None}


def ignore_interrupt(_signum, _frame):
    """SIGINT between cells: an interrupt that arrived late has nothing to interrupt."""


def run_session(chan, main, start):
    """A session's child: cells in one __main__ until the supervisor closes the channel. Every
    cell is a claim of the program like everything after "go": the supervisor bounds and checks
    what it reads here, and ends the session by killing this process."""
    lower_rlimits(start.get("rlimits"))
    run_dir = os.getcwd()
    info = os.stat(run_dir)
    run_dir_id = (info.st_dev, info.st_ino)
    reseed_generators()
    sys.argv = [SCRIPT_NAME]
    sys.path.insert(0, run_dir)
    sys.modules["__main__"] = main
    signal.signal(signal.SIGINT, ignore_interrupt)
    # fd 0 is /dev/null until the first cell: kept, for the cells without stdin.
    STDIN["null_fd"] = os.dup(0)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(chan, MAX_PACKET, 3)
        except OSError:
            return 0
        if not data:
            return 0  # the supervisor closed the session
        try:
            message = json.loads(data)
            op = message.get("op")
        except ValueError:
            op = None
        if op != "cell":
            for fd in fds:
                os.close(fd)
        try:
            if op == "cell":
                code = run_cell(chan, main, message, fds)
                if code is not None:
                    return code  # the cell called sys.exit(): the session ends with it
            elif op == "list_files":
                answer_list_files(chan, run_dir, run_dir_id, message)
            elif op == "read_file":
                answer_read_file(chan, run_dir, run_dir_id, message)
            else:
                os.write(2, b"sandfork: the session got a message it does not know\n")
                return EXIT_CHILD_SETUP_FAILED
        except OSError:
            return 0  # the channel broke (the program closed it): nothing more to serve


def run_cell(chan, main, cell, fds):
    """Runs one cell in the session's __main__; the value of a last expression statement is
    reported as its repr(). Returns an exit code if the cell exits the session, else None."""
    fds = list(fds)
    text = cell.get("code")
    if text is None:
        text = read_sealed(fds.pop(0)).decode("utf-8", errors="replace")
    if cell.get("stdin"):
        stdin_fd = fds.pop(0)
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
        sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
        STDIN["empty"] = None
    else:
        # No stdin: end of file at once, from the /dev/null kept at the session's start. The
        # same reader serves every such cell while the cells leave it alone (reading /dev/null
        # leaves nothing buffered).
        os.dup2(STDIN["null_fd"], 0)
        if STDIN["empty"] is None or sys.stdin is not STDIN["empty"]:
            STDIN["empty"] = sys.stdin = sys.__stdin__ = open(
                0, "r", encoding="utf-8", closefd=False
            )
    files_fd = fds.pop(0) if cell.get("files") and fds else None
    for fd in fds:
        os.close(fd)
    name = "<cell %d>" % int(cell.get("number", 0))
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    value, failed, exit_code = None, False, None
    try:
        try:
            write_input_files(cell.get("files") or [], files_fd, replace=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            value = run_cell_code(text, name, main.__dict__)
        finally:
            signal.signal(signal.SIGINT, ignore_interrupt)
    except SystemExit as exc:
        exit_code = exit_code_of(exc)
    except BaseException as exc:
        print_user_traceback(exc)
        failed = True
    if exit_code is not None:
        return finish(exit_code)
    text_value = None
    if value is not None:
        try:
            text_value = repr(value)
        except BaseException as exc:
            print_user_traceback(exc)
            failed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            failed = True
    if text_value is not None:
        limit = int(cell.get("value_bytes", 0))
        data = text_value.encode("utf-8", errors="backslashreplace")
        if len(data) > limit:
            data = data[:limit].decode("utf-8", errors="ignore").encode()
        report_result(chan, data)
    report_cell_done(chan, failed)
    return None


def run_cell_code(text, name, namespace):
    """Executes a cell as a REPL would: its statements, then its last expression statement,
    whose value is returned (None when there is none)."""
    tree = ast.parse(text, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, name, "exec", dont_inherit=True), namespace)
    if last is None:
        return None
    return eval(compile(last, name, "eval", dont_inherit=True), namespace)


def session_root(run_dir, run_dir_id):
    """The session's directory, opened without following symlinks, if it is still the one the
    session started in; else None."""
    try:
        root = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(root)
    if (info.st_dev, info.st_ino) != run_dir_id:
        os.close(root)
        return None
    return root


def answer_list_files(chan, run_dir, run_dir_id, request):
    entries, truncated = [], True
    root = session_root(run_dir, run_dir_id)
    if root is not None:
        try:
            collect = {"max_count": int(request.get("max_count", 0)), "max_bytes": 0}
            deadline = time.monotonic() + WALK_MAX_SECONDS
            entries, _payload, truncated, skipped = walk_output_files(
                root, collect, {}, deadline, read=False
            )
            truncated = truncated or skipped > 0
        finally:
            os.close(root)
    report_listing(chan, entries, truncated)


def answer_read_file(chan, run_dir, run_dir_id, request):
    entries, payload, truncated = [], b"", False
    parts = safe_relative_path(request.get("path"))
    root = session_root(run_dir, run_dir_id) if parts else None
    if root is not None:
        try:
            fd = open_beneath(root, parts[:-1])
        except OSError:
            fd = None
        finally:
            os.close(root)
        if fd is not None:
            try:
                data = read_file_at(fd, parts[-1], 1, int(request.get("max_bytes", 0)))
            finally:
                os.close(fd)
            if data is None:
                truncated = True
            elif data is not False:
                entries, payload = [{"path": "/".join(parts), "size": len(data)}], data
    report_files(chan, entries, payload, truncated)
    report_done(chan)


def reseed_generators():
    """Fresh kernel entropy for every generator the zygote's preload created, right before the
    program runs: all children of a zygote start as copies of its memory, so they would
    otherwise draw the same numbers (numpy's global generator does; `random` is reseeded at fork
    too, and again here, after any rehearsal). Hash randomization and the address-space layout
    stay those of the zygote: fixed per zygote by the nature of fork (see the README)."""
    import random

    random.seed()
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()


def read_sealed(fd):
    """The whole content of a sealed memfd (its size cannot change), then closes it."""
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while size > 0:
            chunk = os.read(fd, size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def call_main(module):
    """Function mode: calls main() and returns (its JSON text as bytes, exit code)."""
    fn = module.__dict__.get("main")
    if not callable(fn):
        sys.stderr.write("sandfork: function mode: the script must define a function main()\n")
        return None, 1
    try:
        result = fn()
    except SystemExit:
        raise
    except BaseException as exc:
        print_user_traceback(exc)
        return None, 1
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        sys.stderr.write(
            "sandfork: function mode: main() returned a value that is not JSON-serializable"
            " (%s: %s)\n" % (type(exc).__name__, exc)
        )
        return None, 1
    return text.encode(), 0


CHUNK = 32 * 1024


def send_blob(chan, header, payload):
    """A header announcing the size, then the bytes in SEQPACKET-sized pieces."""
    header = dict(header, size=len(payload))
    send(chan, header)
    view = memoryview(payload)
    for start in range(0, len(payload), CHUNK):
        chan.send(view[start : start + CHUNK])


def safe_relative_path(path):
    """The path's components if it is a plain relative path inside the working directory."""
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/"):
        return None
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def write_input_files(manifest, files_fd, replace=False):
    """Writes the request's files into the working directory; returns {path: bytes written}.
    `replace` (a session's cell): an existing file of the same path is overwritten."""
    written = {}
    if not manifest or files_fd is None:
        if files_fd is not None:
            os.close(files_fd)
        return written
    with os.fdopen(files_fd, "rb") as blob:
        for entry in manifest:
            parts = safe_relative_path(entry.get("path"))
            size = int(entry.get("size", -1))
            if parts is None or size < 0:
                raise ValueError("invalid input file entry %r" % (entry,))
            data = blob.read(size)
            if len(data) != size:
                raise ValueError("input file %r is truncated" % (entry.get("path"),))
            directory = "."
            for part in parts[:-1]:
                directory = os.path.join(directory, part)
                try:
                    os.mkdir(directory, 0o755)
                except FileExistsError:
                    pass
            path = "/".join(parts)
            exclusive = os.O_TRUNC if replace else os.O_EXCL
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | exclusive | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            written[path] = data
    return written


# Bounds of the output-file walk: however the program left its directory, collecting costs at
# most this much, and what is left out is flagged (truncated), never a failure of the run.
WALK_MAX_DEPTH = 32
WALK_MAX_ENTRIES = 10000
WALK_MAX_SECONDS = 2.0


def collect_output_files(run_dir, run_dir_id, collect, inputs):
    """Regular files left in the run's directory, read from inside the sandbox without following
    symlinks; unchanged input files are left out. The walk is iterative and bounded (depth,
    entries, time); a file whose path is not UTF-8 (JSON, and so the report, cannot carry it) is
    left out alone and counted. Returns (entries, payload, truncated, skipped)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        root = os.open(run_dir, flags)
    except OSError:
        return [], b"", True, 0
    try:
        info = os.fstat(root)
        if (info.st_dev, info.st_ino) != run_dir_id:
            return [], b"", True, 0  # not the directory the run started in
        if not os.listdir(root):
            return [], b"", False, 0  # the common case, without walking
        return walk_output_files(root, collect, inputs, time.monotonic() + WALK_MAX_SECONDS)
    finally:
        os.close(root)


def open_beneath(root, parts):
    """A directory below `root`, opened one component at a time without following symlinks."""
    fd = os.dup(root)
    try:
        for part in parts:
            next_fd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def walk_output_files(root, collect, inputs, deadline, read=True):
    """`read` False: a listing, each entry with its size and no contents."""
    max_count = int(collect.get("max_count", 0))
    max_bytes = int(collect.get("max_bytes", 0))
    entries, chunks, total, truncated, skipped = [], [], 0, False, 0
    seen = 0
    # Depth first, names sorted, a directory's files before its subdirectories: the order the
    # recursive walk this replaces produced.
    stack = [()]
    while stack:
        parts = stack.pop()
        if time.monotonic() > deadline:
            truncated = True
            break
        try:
            fd = open_beneath(root, parts)
        except OSError:
            continue  # replaced by a symlink, or gone
        try:
            names = sorted(os.listdir(fd))
            subdirs = []
            for name in names:
                seen += 1
                if seen > WALK_MAX_ENTRIES or time.monotonic() > deadline:
                    truncated = True
                    stack.clear()
                    subdirs.clear()
                    break
                path = "/".join(parts + (name,))
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    skipped += 1
                    continue
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                mode = info.st_mode
                if stat.S_ISDIR(mode):
                    if len(parts) + 1 >= WALK_MAX_DEPTH:
                        truncated = True
                    else:
                        subdirs.append(parts + (name,))
                    continue
                if not stat.S_ISREG(mode):
                    continue  # symlinks, fifos, devices, sockets are never read
                if not read:
                    if len(entries) >= max_count:
                        truncated = True
                        continue
                    entries.append({"path": path, "size": info.st_size})
                    continue
                data = read_file_at(fd, name, max_count - len(entries), max_bytes - total)
                if data is None:
                    truncated = True
                    continue
                if data is False or inputs.get(path) == data:
                    continue
                entries.append({"path": path, "size": len(data)})
                chunks.append(data)
                total += len(data)
            stack.extend(reversed(subdirs))
        finally:
            os.close(fd)
    return entries, b"".join(chunks), truncated, skipped


def read_file_at(dir_fd, name, room_count, room_bytes):
    """A regular file's bytes; None when it does not fit the caps; False when it is not a
    regular file after all (or vanished)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        if room_count <= 0 or info.st_size > room_bytes:
            return None
        data = b""
        while len(data) < info.st_size:
            chunk = os.read(fd, info.st_size - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


def exit_code_of(exc):
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except Exception:
        pass
    return 1


def print_user_traceback(exc):
    """Prints the traceback without the zygote's own frame."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code in OWN_FRAMES:
        tb = tb.tb_next
    try:
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except Exception:
        os.write(2, ("%s: %s\n" % (type(exc).__name__, exc)).encode(errors="replace"))


def finish(code):
    """What the interpreter does at exit: join non-daemon threads, run atexit, flush."""
    try:
        threading._shutdown()
    except BaseException:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 1
    return code


# The zygote's frames a user's traceback starts with, cut from it.
OWN_FRAMES = (run_child.__code__, run_cell.__code__, run_cell_code.__code__)


def main():
    config = json.loads(sys.argv[1])
    zygote = Zygote(config)
    try:
        zygote.start()
    except BaseException as err:
        try:
            send(zygote.ctrl, {"op": "fatal", "error": "%s: %s" % (type(err).__name__, err)})
        finally:
            os._exit(70)
    zygote.serve()
    os._exit(0)


if __name__ == "__main__":
    main()
