//! Processes inside a run (a profile's `processes` setting), tried as a program that wants out
//! would try it. Such a run may use subprocess, multiprocessing and os.fork; it is PID 1 of a
//! pid namespace of its own, with a private /dev/shm, exec only beneath the interpreter's
//! prefix, the same uid, landlock and a seccomp filter that still refuses namespaces; its slot
//! cgroup counts and caps every process. What must hold:
//! - the first process's exit ends every other one, before the result is answered: a
//!   daemonized grandchild, a process that ignores SIGTERM and a pool never joined are all gone
//!   (nothing under the daemon, nothing with the run's host uid, right after the result, but
//!   the first process itself, which may still be exiting when a run is answered early);
//! - a fork bomb meets the pids cap and leaves nothing behind;
//! - nothing outside the interpreter's prefix can be executed (a copied binary, a script in
//!   /dev/shm, the loader pointed at a copy), and no namespace can be made;
//! - runs cannot see or signal each other's processes or shared memory;
//! - a profile without the setting still refuses every process.
//!
//! The daemon keeps no warm children (but for one profile that tests the warm path), so every
//! process under it and every slot uid is accounted for; the tests take turns.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{descendants, err, ok_stdout, out, privileged, spec, test_config, Daemon};
use sandfork_protocol::client::Client;
use sandfork_protocol::{
    Caller, Cell, FileData, RunResult, RunSpec, SessionOp, SessionOpen, SessionReply, Status,
};

/// Most processes and threads of a run on the `procs` profile.
const PROCESSES: u64 = 16;
/// The daemon's uid_base (the default): the host uid of inner uid N is UID_BASE + N.
const UID_BASE: u32 = 200_000;

fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        common::start_private_daemon("sandfork-processes-", |dir| {
            let profiles = format!(
                "[profiles.default]\nwarm_children = 0\n\
                 [profiles.procs]\nwarm_children = 0\nprocesses = {PROCESSES}\n\
                 limits = {{ timeout_ms = 10000, memory_mb = 256 }}\n\
                 [profiles.procs_warm]\nwarm_children = 1\nprocesses = 8\n"
            );
            test_config(dir, &profiles)
        })
    })
}

/// The tests count processes under the daemon and by uid, so they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn on(profile: &str, code: &str) -> RunSpec {
    RunSpec {
        profile: Some(profile.into()),
        ..spec(code)
    }
}

async fn run(request: RunSpec) -> RunResult {
    let mut client = Client::connect(&daemon().socket).await.unwrap();
    client.run(request).await.unwrap()
}

/// Host pids whose real uid is `uid`.
fn processes_of_uid(uid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|id| id.parse::<u32>().ok());
        if real == Some(uid) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is gone or on its way out: a zombie, dead, or exiting (`PF_EXITING`). A run may
/// be answered while its first process is still exiting (its memory already detached, it runs
/// nothing more): the early end on "done". Everything else it started must be gone by then.
fn exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return true;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Processes under the daemon once nothing runs (zygote-init, its helpers, the zygotes).
fn idle_processes() -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = descendants(daemon().pid);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = descendants(daemon().pid);
        if now.len() == last.len() || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Runs `code` on `procs`; its first stdout line must be the run's inner uid (`os.getuid()`).
/// Right after the result — no waiting — nothing of the run may be left: not under the daemon,
/// not anywhere on the host with the run's uid.
async fn run_leaving_nothing(what: &str, code: &str) -> RunResult {
    let before = idle_processes();
    let result = run(on("procs", code)).await;
    let after = descendants(daemon().pid);
    let leftover: Vec<&u32> = after
        .iter()
        .filter(|pid| !before.contains(pid) && !exiting(**pid))
        .collect();
    assert!(
        leftover.is_empty(),
        "{what}: processes left under the daemon after the result: {leftover:?}; stdout={:?} stderr={:?}",
        out(&result),
        err(&result)
    );
    let inner: u32 = out(&result)
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: no uid line: {:?} {:?}", out(&result), err(&result)));
    assert!(inner > 0, "{what}: the run was root in its namespace");
    let uid_left: Vec<u32> = processes_of_uid(UID_BASE + inner)
        .into_iter()
        .filter(|pid| !exiting(*pid))
        .collect();
    assert!(
        uid_left.is_empty(),
        "{what}: processes with the run's host uid {} after the result: {uid_left:?}",
        UID_BASE + inner
    );
    result
}

#[tokio::test]
async fn a_run_is_pid_1_and_can_use_subprocess_multiprocessing_and_shared_memory() {
    if !privileged("a_run_is_pid_1_and_can_use_subprocess_multiprocessing_and_shared_memory") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let code = r#"
import os, subprocess, sys
from multiprocessing import Pool
from multiprocessing.shared_memory import SharedMemory
import lib

def square(x):
    return x * x

if __name__ == "__main__":
    print("pid", os.getpid())
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"],
                           capture_output=True, text=True, check=True)
    print("child", child.stdout.strip())
    with Pool(2) as pool:
        print("pool", pool.map(square, [1, 2, 3]))
    shm = SharedMemory(create=True, size=4096)
    shm.buf[:5] = b"hello"
    other = SharedMemory(shm.name)
    print("shm", bytes(other.buf[:5]), os.path.exists("/dev/shm/" + shm.name))
    other.close(); shm.close(); shm.unlink()
    print("lib", lib.VALUE, sorted(os.listdir(".")))
"#;
    let mut request = on("procs", code);
    request.files = vec![FileData {
        path: "lib.py".into(),
        content: b"VALUE = 42\n".to_vec(),
    }];
    let result = run(request).await;
    assert_eq!(
        ok_stdout(&result),
        "pid 1\nchild 2 1\npool [1, 4, 9]\nshm b'hello' True\nlib 42 ['lib.py']\n"
    );
    // The warm path: a child forked into its own namespace ahead of the request.
    for _ in 0..2 {
        let result = run(on(
            "procs_warm",
            "import os, subprocess, sys\nprint(os.getpid(), subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True).stdout)",
        ))
        .await;
        assert_eq!(ok_stdout(&result), "1 b'7\\n'\n");
    }
}

#[tokio::test]
async fn a_profile_without_processes_still_refuses_them() {
    if !privileged("a_profile_without_processes_still_refuses_them") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let code = r#"
import os, subprocess, sys
for name, attempt in [("fork", os.fork),
                      ("subprocess", lambda: subprocess.run([sys.executable, "-c", "1"])),
                      ("exec", lambda: os.execv(sys.executable, [sys.executable, "-c", "1"]))]:
    try:
        attempt()
        print(name, "ALLOWED")
    except PermissionError:
        print(name, "refused")
print(os.getpid() != 1, os.path.exists("/dev/shm"))
"#;
    let result = run(on("default", code)).await;
    assert_eq!(
        ok_stdout(&result),
        "fork refused\nsubprocess refused\nexec refused\nTrue False\n"
    );
}

#[tokio::test]
async fn nothing_the_run_started_outlives_its_result() {
    if !privileged("nothing_the_run_started_outlives_its_result") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let code = r#"
import os, signal, subprocess, sys, time
from multiprocessing import Pool

def forever(_):
    time.sleep(600)

if __name__ == "__main__":
    print(os.getuid(), flush=True)
    # A daemon: double fork, new session, exec.
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"])
        os._exit(0)
    # A process that ignores SIGTERM and SIGINT, in a process group of its own.
    subprocess.Popen([sys.executable, "-c",
                      "import signal, time\n"
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                      "time.sleep(600)"], start_new_session=True)
    # A pool never joined or closed, its workers busy.
    pool = Pool(3)
    pool.map_async(forever, range(3))
    # A plain forked child asleep.
    if os.fork() == 0:
        time.sleep(600)
    time.sleep(0.5)
    print("main leaves")
"#;
    let result = run_leaving_nothing("daemon, SIGTERM-proof child, open pool", code).await;
    assert_eq!(result.status, Status::Ok, "{}", err(&result));
    assert!(out(&result).ends_with("main leaves\n"), "{}", out(&result));
    // The same when the wall-clock limit ends the run instead.
    let mut request = on(
        "procs",
        "import os, subprocess, sys, time\nprint(os.getuid(), flush=True)\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\ntime.sleep(600)\n",
    );
    request.limits.timeout_ms = Some(1500);
    let before = idle_processes();
    let result = run(request).await;
    assert_eq!(result.status, Status::Timeout);
    let leftover: Vec<u32> = descendants(daemon().pid)
        .into_iter()
        .filter(|pid| !before.contains(pid) && !exiting(*pid))
        .collect();
    assert!(leftover.is_empty(), "after a timeout: {leftover:?}");
}

#[tokio::test]
async fn a_fork_bomb_meets_the_pids_cap_and_leaves_nothing() {
    if !privileged("a_fork_bomb_meets_the_pids_cap_and_leaves_nothing") {
        return;
    }
    let _turn = SERIAL.lock().await;
    // How many children fit: the cap counts the run's first process too.
    let counted = r#"
import os, time
print(os.getuid(), flush=True)
started = 0
try:
    for _ in range(100):
        if os.fork() == 0:
            time.sleep(600)
        started += 1
except BlockingIOError as err:
    print("refused:", err)
print("started", started)
"#;
    let result = run_leaving_nothing("counted forks", counted).await;
    let text = ok_stdout(&result);
    assert!(
        text.contains("refused: [Errno 11] Resource temporarily unavailable"),
        "{text}"
    );
    assert!(
        text.contains(&format!("started {}\n", PROCESSES - 1)),
        "the cap is {PROCESSES} tasks, the first process included: {text}"
    );
    // The classic bomb: every process forks until it cannot.
    let bomb = "import os\nprint(os.getuid(), flush=True)\nwhile True:\n    os.fork()\n";
    let result = run_leaving_nothing("fork bomb", bomb).await;
    assert_eq!(result.status, Status::Error, "{:?}", result.message);
    assert!(
        err(&result).contains("Resource temporarily unavailable"),
        "{}",
        err(&result)
    );
    // The daemon is fine.
    assert_eq!(
        ok_stdout(&run(on("procs", "print('fine')")).await),
        "fine\n"
    );
}

#[tokio::test]
async fn only_the_interpreter_can_be_executed() {
    if !privileged("only_the_interpreter_can_be_executed") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let code = r##"
import os, shutil, subprocess, sys

def attempt(name, argv):
    try:
        done = subprocess.run(argv, capture_output=True)
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        print(name, "exit", done.returncode, tail)
    except OSError as err:
        print(name, type(err).__name__, err.errno)

shutil.copy(sys.executable, "py")
os.chmod("py", 0o755)
attempt("copy in the work dir", ["./py", "-c", "print('escaped')"])
with open("/dev/shm/run.sh", "w") as script:
    script.write("#!" + sys.executable + "\nprint('escaped')\n")
os.chmod("/dev/shm/run.sh", 0o755)
attempt("script in /dev/shm", ["/dev/shm/run.sh"])
loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
if os.path.exists(loader):
    attempt("loader on a copy", [loader, "./py", "-c", "print('escaped')"])
else:
    print("loader on a copy exit 127 ['failed to map segment']")
for program in ["/bin/sh", "/usr/bin/env", "/sbin/init"]:
    attempt(program, [program])
attempt("the interpreter", [sys.executable, "-c", "print('inside')"])
"##;
    let result = run(on("procs", code)).await;
    let text = ok_stdout(&result);
    assert!(!text.contains("escaped"), "{text}");
    for line in [
        "copy in the work dir PermissionError 13",
        "script in /dev/shm PermissionError 13",
        "the interpreter exit 0 []",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // Host programs are absent from the jail, or (a system Python binds /usr) not executable.
    for program in ["/bin/sh", "/usr/bin/env", "/sbin/init"] {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{program} ")))
            .unwrap_or_default();
        assert!(
            line.ends_with("FileNotFoundError 2") || line.ends_with("PermissionError 13"),
            "{program} ran: {line:?}\n{text}"
        );
    }
    // The loader may run (the kernel needs it for the interpreter), but it cannot map a copy
    // from the noexec tmpfs.
    let loader = text
        .lines()
        .find(|line| line.starts_with("loader on a copy"))
        .unwrap_or_default();
    assert!(
        loader.contains("exit 127") && loader.contains("failed to map segment"),
        "{loader}"
    );
}

#[tokio::test]
async fn namespaces_stay_closed_to_a_run_with_processes() {
    if !privileged("namespaces_stay_closed_to_a_run_with_processes") {
        return;
    }
    let _turn = SERIAL.lock().await;
    // Raw syscalls, x86_64 numbers (aarch64 has no fork/clone at these numbers: skipped there).
    let code = r#"
import ctypes, errno, os, platform
if platform.machine() != "x86_64":
    print("skip")
    raise SystemExit
libc = ctypes.CDLL(None, use_errno=True)
SIGCHLD = 17
flags = {"CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000, "CLONE_NEWNS": 0x00020000,
         "CLONE_NEWNET": 0x40000000, "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUTS": 0x04000000,
         "CLONE_NEWCGROUP": 0x02000000}
for name, flag in flags.items():
    ctypes.set_errno(0)
    pid = libc.syscall(56, flag | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    print("clone", name, pid, errno.errorcode.get(ctypes.get_errno()))
    ctypes.set_errno(0)
    print("unshare", name, libc.syscall(272, flag), errno.errorcode.get(ctypes.get_errno()))
ctypes.set_errno(0)
print("clone3", libc.syscall(435, 0, 0), errno.errorcode.get(ctypes.get_errno()))
ctypes.set_errno(0)
print("setns", libc.syscall(308, 0, 0), errno.errorcode.get(ctypes.get_errno()))
ctypes.set_errno(0)
print("mount", libc.mount(b"none", b"/sandbox/work", b"tmpfs", 0, None), errno.errorcode.get(ctypes.get_errno()))
"#;
    let result = run(on("procs", code)).await;
    let text = ok_stdout(&result);
    if text == "skip\n" {
        println!("SKIPPED: namespaces_stay_closed: raw syscall numbers are x86_64's");
        return;
    }
    for line in text.lines() {
        let verdict_ok = if line.starts_with("clone3") {
            line.ends_with("-1 ENOSYS")
        } else {
            line.ends_with("-1 EPERM")
        };
        assert!(verdict_ok, "{line}\nall:\n{text}");
    }
    assert_eq!(text.lines().count(), 7 * 2 + 3, "{text}");
}

#[tokio::test]
async fn every_process_counts_against_the_run_memory() {
    if !privileged("every_process_counts_against_the_run_memory") {
        return;
    }
    let _turn = SERIAL.lock().await;
    // Each worker alone fits in 256 MiB; two at once do not (snekbox's own test, scaled).
    let code = r#"
import os, time
from multiprocessing import Process

def hold():
    data = bytearray(150 * 2**20)
    time.sleep(1.5)

if __name__ == "__main__":
    print(os.getuid(), flush=True)
    workers = [Process(target=hold) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(sorted(worker.exitcode for worker in workers))
"#;
    let result = run_leaving_nothing("two workers over the memory limit", code).await;
    assert_eq!(result.status, Status::MemoryLimit, "{}", err(&result));
    // At least one is killed (cgroup v2's OOM killer may take both, one after the other).
    assert!(out(&result).contains("[-9, "), "{}", out(&result));
    assert_eq!(
        result.exit_code,
        Some(0),
        "the first process exits by itself"
    );
}

#[tokio::test]
async fn runs_cannot_reach_each_other_processes_or_shared_memory() {
    if !privileged("runs_cannot_reach_each_other_processes_or_shared_memory") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let victim = r#"
import os, subprocess, sys, time
from multiprocessing.shared_memory import SharedMemory
secret = SharedMemory(name="victim-secret", create=True, size=16)
secret.buf[:6] = b"secret"
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
time.sleep(2.5)
print("victim", helper.poll(), bytes(secret.buf[:6]))
secret.close(); secret.unlink()
"#;
    let attacker = r#"
import os, signal, time
time.sleep(0.8)
print("shm", sorted(os.listdir("/dev/shm")))
try:
    os.kill(-1, signal.SIGKILL)
    print("kill -1: no one to kill outside")
except ProcessLookupError:
    print("kill -1: no process")
hits = 0
for pid in range(2, 400):
    try:
        os.kill(pid, signal.SIGKILL)
        hits += 1
    except (ProcessLookupError, PermissionError):
        pass
print("hits", hits)
"#;
    let (victim, attacker) = tokio::join!(run(on("procs", victim)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        run(on("procs", attacker)).await
    });
    assert_eq!(ok_stdout(&victim), "victim None b'secret'\n");
    let text = ok_stdout(&attacker);
    assert!(text.starts_with("shm []\n"), "{text}");
    assert!(text.ends_with("hits 0\n"), "{text}");
}

#[tokio::test]
async fn a_session_keeps_its_processes_between_cells_and_ends_them_with_it() {
    if !privileged("a_session_keeps_its_processes_between_cells_and_ends_them_with_it") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let before = idle_processes();
    let mut client = Client::connect(&daemon().socket).await.unwrap();
    let open = SessionOpen {
        profile: Some("procs".into()),
        ..SessionOpen::default()
    };
    let session = match client
        .session(Caller::default(), SessionOp::Open(open))
        .await
        .unwrap()
    {
        SessionReply::Opened(info) => info.session_id,
        other => panic!("open: {other:?}"),
    };
    let cell = |code: &str| Cell {
        code: code.as_bytes().to_vec(),
        ..Cell::default()
    };
    let first = cell(
        "import os, subprocess, sys\nworker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\nprint(os.getuid(), worker.pid)",
    );
    let (result, _) = client
        .execute_cell(Caller::default(), &session, first, |_, _| {})
        .await
        .unwrap();
    let text = ok_stdout(&result);
    let inner: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
    let (result, _) = client
        .execute_cell(
            Caller::default(),
            &session,
            cell("print(worker.poll(), worker.pid)"),
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(
        ok_stdout(&result),
        format!("None {}\n", text.split_whitespace().nth(1).unwrap())
    );
    client
        .session(Caller::default(), SessionOp::Close { session })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_of_uid(UID_BASE + inner).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the session's processes outlived it: {:?}",
            processes_of_uid(UID_BASE + inner)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = idle_processes();
    assert!(
        after.iter().all(|pid| before.contains(pid)),
        "{before:?} -> {after:?}"
    );
}
