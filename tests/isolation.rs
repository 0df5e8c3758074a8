//! Isolation, tested as an attacker would: each test runs a program that tries to break one
//! layer from inside the sandbox and asserts the attempt failed — plus tests that the layers are
//! really on, seen from inside (prctl) and from outside (/proc/<pid>/status of a live child).

mod common;

use std::time::Duration;

use common::{daemon, err, in_session, ok_stdout, out, privileged, run};
use sandfork_protocol::Status;

/// Runs `attack`, which must print lines `BLOCKED <what>` or `ESCAPED <what>`, as a run and as
/// a session's cell; asserts every attempt was blocked in both and that there were `expected`.
async fn assert_all_blocked(attack: &str, expected: usize) {
    let (cell, _) = in_session(attack).await;
    for (what, result) in [("run", run(attack).await), ("session", cell)] {
        let stdout = ok_stdout(&result);
        let blocked = stdout.lines().filter(|l| l.starts_with("BLOCKED")).count();
        assert!(
            !stdout.contains("ESCAPED"),
            "an attempt succeeded in a {what}:\n{stdout}\nstderr: {}",
            err(&result)
        );
        assert_eq!(
            blocked, expected,
            "unexpected probe output in a {what}:\n{stdout}"
        );
    }
}

const TRY: &str = r#"
import os, sys, errno
def attempt(what, fn):
    try:
        fn()
    except OSError as e:
        print('BLOCKED', what, errno.errorcode.get(e.errno, e.errno))
        return
    except Exception as e:
        print('BLOCKED', what, type(e).__name__)
        return
    print('ESCAPED', what)
"#;

#[tokio::test]
async fn host_files_cannot_be_read() {
    if !privileged("host_files_cannot_be_read") {
        return;
    }
    let attack = format!(
        "{TRY}
attempt('/etc/shadow', lambda: open('/etc/shadow').read())
attempt('/etc/passwd', lambda: open('/etc/passwd').read())
attempt('/root', lambda: os.listdir('/root'))
attempt('/proc', lambda: os.listdir('/proc'))
attempt('/sys', lambda: os.listdir('/sys'))
attempt('/home', lambda: os.listdir('/home'))
attempt('/sandfork runtime', lambda: open('/sandfork/zygote.py').read())
attempt('/proc/1/environ', lambda: open('/proc/1/environ').read())
"
    );
    assert_all_blocked(&attack, 8).await;
}

#[tokio::test]
async fn nothing_outside_the_tmpfs_is_writable() {
    if !privileged("nothing_outside_the_tmpfs_is_writable") {
        return;
    }
    let attack = format!(
        "{TRY}
import sys
prefix = sys.prefix
attempt('/', lambda: open('/evil', 'w'))
attempt('/tmp', lambda: open('/tmp/evil', 'w'))
attempt('/sandbox', lambda: open('/sandbox/evil', 'w'))
attempt('prefix', lambda: open(prefix + '/evil', 'w'))
attempt('stdlib', lambda: open(os.__file__, 'a'))
attempt('mkdir /dev/x', lambda: os.mkdir('/dev/x'))
attempt('/dev/urandom write', lambda: open('/dev/urandom', 'wb').write(b'x'))
attempt('chmod stdlib', lambda: os.chmod(os.__file__, 0o777))
attempt('symlink escape', lambda: (os.symlink('/etc', 'etc-link'), open('etc-link/hostname').read()))
attempt('hardlink stdlib', lambda: os.link(os.__file__, 'os-link.py'))
attempt('rename out', lambda: (open('f', 'w').close(), os.rename('f', '/sandbox/f')))
"
    );
    assert_all_blocked(&attack, 11).await;
}

#[tokio::test]
async fn no_network_and_no_sockets() {
    if !privileged("no_network_and_no_sockets") {
        return;
    }
    let attack = format!(
        "{TRY}
import socket
attempt('tcp socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt('udp socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
attempt('ipv6 socket', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
attempt('unix socket', lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
attempt('create_connection', lambda: socket.create_connection(('127.0.0.1', 22), timeout=1))
attempt('getaddrinfo+connect', lambda: socket.create_connection(('localhost', 80), timeout=1))
attempt('inet socketpair', lambda: socket.socketpair(socket.AF_INET))
"
    );
    assert_all_blocked(&attack, 9).await;
}

#[tokio::test]
async fn no_new_processes_and_no_exec() {
    if !privileged("no_new_processes_and_no_exec") {
        return;
    }
    let attack = format!(
        "{TRY}
import subprocess, ctypes, multiprocessing
libc = ctypes.CDLL(None, use_errno=True)
def raw_fork():
    r = libc.fork()
    if r == 0:
        os._exit(0)
    if r < 0:
        raise OSError(ctypes.get_errno(), 'fork')
def raw_clone3():
    r = libc.syscall(435, None, 0)
    if r < 0:
        raise OSError(ctypes.get_errno(), 'clone3')
attempt('os.fork', os.fork)
attempt('libc fork', raw_fork)
attempt('clone3', raw_clone3)
attempt('subprocess', lambda: subprocess.run(['/bin/true']))
attempt('subprocess python', lambda: subprocess.run([sys.executable, '-c', 'print(1)']))
def system():
    rc = os.system('true')
    if rc != 0:
        raise OSError(errno.EPERM, 'os.system returned %d' % rc)
attempt('os.system', system)
attempt('execv', lambda: os.execv(sys.executable, [sys.executable, '-c', 'print(1)']))
attempt('posix_spawn', lambda: os.posix_spawn(sys.executable, [sys.executable], {{}}))
attempt('multiprocessing', lambda: multiprocessing.Process(target=print).start())
"
    );
    assert_all_blocked(&attack, 9).await;
}

#[tokio::test]
async fn clone3_fails_with_enosys_so_libc_can_fall_back() {
    if !privileged("clone3_fails_with_enosys_so_libc_can_fall_back") {
        return;
    }
    let code = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.syscall(435, None, 0), ctypes.get_errno())";
    assert_eq!(ok_stdout(&run(code).await), "-1 38\n");
}

#[tokio::test]
async fn kernel_interfaces_are_denied() {
    if !privileged("kernel_interfaces_are_denied") {
        return;
    }
    let attack = format!(
        "{TRY}
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def check(what, rc):
    if rc < 0:
        raise OSError(ctypes.get_errno(), what)
attempt('mount tmpfs', lambda: check('mount', libc.mount(b'none', b'/sandbox/work', b'tmpfs', 0, None)))
attempt('umount', lambda: check('umount', libc.umount2(b'/sandbox/work', 2)))
attempt('unshare user', lambda: check('unshare', libc.unshare(0x10000000)))
attempt('unshare mount', lambda: check('unshare', libc.unshare(0x00020000)))
attempt('setns', lambda: check('setns', libc.setns(0, 0)))
attempt('chroot', lambda: check('chroot', libc.chroot(b'/sandbox/work')))
attempt('fsopen', lambda: check('fsopen', libc.syscall(430, b'tmpfs', 0)))
attempt('open_tree', lambda: check('open_tree', libc.syscall(428, -100, b'/', 1)))
attempt('setuid 0', lambda: os.setuid(0))
attempt('setgid 0', lambda: os.setgid(0))
attempt('shmget', lambda: check('shmget', libc.shmget(0, 4096, 0o1000 | 0o600)))
attempt('semget', lambda: check('semget', libc.semget(0, 1, 0o1000 | 0o600)))
attempt('mq_open', lambda: check('mq_open', libc.syscall(240, b'q', 0o100, 0o600, None)))
attempt('landlock_create_ruleset', lambda: check('landlock', libc.syscall(444, None, 0, 1)))
attempt('seccomp', lambda: check('seccomp', libc.syscall(317, 0, 0, None)))
attempt('pidfd_open 1', lambda: check('pidfd_open', libc.syscall(434, 1, 0)))
attempt('sethostname', lambda: check('sethostname', libc.sethostname(b'evil', 4)))
"
    );
    assert_all_blocked(&attack, 17).await;
}

/// The gravest calls (ptrace, io_uring, bpf, process_vm_readv, …) kill the process outright.
#[tokio::test]
async fn gravest_calls_kill_the_run() {
    if !privileged("gravest_calls_kill_the_run") {
        return;
    }
    let probes = [
        ("ptrace", "libc.ptrace(0, 0, None, None)"),
        (
            "ptrace attach to the zygote",
            "libc.ptrace(16, 1, None, None)",
        ),
        (
            "io_uring_setup",
            "libc.syscall(425, 8, ctypes.create_string_buffer(128))",
        ),
        ("bpf", "libc.syscall(321, 0, None, 0)"),
        (
            "process_vm_readv",
            "libc.syscall(310, 1, None, 0, None, 0, 0)",
        ),
        ("perf_event_open", "libc.syscall(298, None, 0, -1, -1, 0)"),
        ("keyctl", "libc.syscall(250, 0, 0)"),
        ("userfaultfd", "libc.syscall(323, 0)"),
    ];
    for (name, call) in probes {
        let code = format!(
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint('before', flush=True)\n{call}\nprint('ESCAPED')"
        );
        let result = run(&code).await;
        assert_eq!(
            result.status,
            Status::Killed,
            "{name}: {:?} {}",
            result.message,
            out(&result)
        );
        assert_eq!(result.signal, Some(libc::SIGSYS), "{name}");
        assert!(
            result.message.as_deref().unwrap_or("").contains("seccomp"),
            "{name}"
        );
        assert_eq!(out(&result), "before\n", "{name}");
        // In a session's cell: the same kill, and the session ends with it.
        let (cell, ended) = in_session(&code).await;
        assert_eq!(
            (cell.status, cell.signal, ended),
            (Status::Killed, Some(libc::SIGSYS), true),
            "{name} in a session: {cell:?}"
        );
    }
}

#[tokio::test]
async fn the_zygote_and_siblings_cannot_be_signalled() {
    if !privileged("the_zygote_and_siblings_cannot_be_signalled") {
        return;
    }
    // A sibling run that must survive; it sleeps while the attacker runs.
    let sibling = tokio::spawn(run(
        "import time\ntime.sleep(1.5)\nprint('sibling survived')",
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attack = r#"
import os, signal
me = os.getpid()
hits = []
for pid in range(1, 4096):
    if pid == me:
        continue
    for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
        try:
            os.kill(pid, sig)
            hits.append((pid, sig))
        except (PermissionError, ProcessLookupError):
            pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
try:
    os.killpg(1, signal.SIGKILL)
except OSError:
    pass
print('hits', hits)
"#;
    let result = run(attack).await;
    assert_eq!(ok_stdout(&result), "hits []\n");
    let sibling = sibling.await.expect("sibling task");
    assert_eq!(ok_stdout(&sibling), "sibling survived\n");
    // The zygote survived too.
    assert_eq!(
        ok_stdout(&run("print('zygote alive')").await),
        "zygote alive\n"
    );
}

#[tokio::test]
async fn an_inherited_landlock_ruleset_cannot_be_extended() {
    if !privileged("an_inherited_landlock_ruleset_cannot_be_extended") {
        return;
    }
    // DESIGN §8: a prebuilt ruleset fd inherited by the child could be extended from inside.
    // Try landlock_add_rule(fd, PATH_BENEATH, {all rights, "/"}) on every possible fd.
    let attack = r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
root = os.open('/', os.O_PATH)
attr = ctypes.create_string_buffer(struct.pack('=Qi', (1 << 16) - 1, root))
results = set()
for fd in range(0, 1024):
    rc = libc.syscall(445, fd, 1, attr, 0)
    results.add((rc, ctypes.get_errno() if rc < 0 else 0))
print(sorted(results))
open('/escape-test', 'w')
"#;
    let result = run(attack).await;
    assert_eq!(result.status, Status::Error, "{}", err(&result));
    assert_eq!(
        out(&result),
        "[(-1, 1)]\n",
        "every landlock_add_rule must fail with EPERM"
    );
    assert!(err(&result).contains("Errno"), "{}", err(&result));
}

#[tokio::test]
async fn no_fd_beyond_stdio_and_the_result_channel_is_open() {
    if !privileged("no_fd_beyond_stdio_and_the_result_channel_is_open") {
        return;
    }
    let code = r#"
import os
open_fds = []
for fd in range(0, 4096):
    try:
        os.fstat(fd)
        open_fds.append(fd)
    except OSError:
        pass
import socket
chan = socket.socket(fileno=3)
print(open_fds, chan.family == socket.AF_UNIX, chan.type == socket.SOCK_SEQPACKET)
chan.detach()
"#;
    // 0-2: stdio; 3: the run's own channel to the supervisor (main()'s result and output
    // files travel on it after the program).
    assert_eq!(ok_stdout(&run(code).await), "[0, 1, 2, 3] True True\n");
    // A session's child holds the same, and one more: the /dev/null it was started with, kept
    // read-only as the stdin of cells that have none.
    let null = r#"
import os, stat
st = os.fstat(4)
print(stat.S_ISCHR(st.st_mode), (os.major(st.st_rdev), os.minor(st.st_rdev)))
try:
    os.write(4, b"x")
except OSError as e:
    print("read-only", e.errno)
"#;
    assert_eq!(
        ok_stdout(&in_session(&format!("{code}{null}")).await.0),
        "[0, 1, 2, 3, 4] True True\nTrue (1, 3)\nread-only 9\n"
    );
}

#[tokio::test]
async fn layers_are_on_seen_from_inside() {
    if !privileged("layers_are_on_seen_from_inside") {
        return;
    }
    let code = r#"
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_SECCOMP, PR_GET_NO_NEW_PRIVS, PR_GET_DUMPABLE = 21, 39, 3
print('seccomp', libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0))
print('no_new_privs', libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
print('dumpable', libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
class Header(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32), ('inheritable', ctypes.c_uint32)]
h = Header(0x20080522, 0)
d = (Data * 2)()
rc = libc.capget(ctypes.byref(h), d)
print('capget', rc, 'effective', d[0].effective | d[1].effective, 'permitted', d[0].permitted | d[1].permitted)
print('uid', os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
print('sid', os.getsid(0) == os.getpid())
print('host', socket.gethostname())
"#;
    let stdout = ok_stdout(&run(code).await);
    assert!(stdout.contains("seccomp 2\n"), "{stdout}");
    assert!(stdout.contains("no_new_privs 1\n"), "{stdout}");
    assert!(stdout.contains("dumpable 0\n"), "{stdout}");
    assert!(
        stdout.contains("capget 0 effective 0 permitted 0\n"),
        "{stdout}"
    );
    assert!(stdout.contains("sid True\n"), "{stdout}");
    assert!(stdout.contains("host sandfork\n"), "{stdout}");
    let uid_line = stdout.lines().find(|l| l.starts_with("uid ")).unwrap();
    let fields: Vec<&str> = uid_line.split(' ').collect();
    let uid: u32 = fields[1].parse().unwrap();
    assert!(uid >= 1, "a slot uid, never the zygote's 0: {uid_line}");
    assert_eq!(fields[1], fields[2]);
    assert_eq!(fields[1], fields[3]);
    assert_eq!(fields[4], "[]", "no supplementary groups: {uid_line}");
}

// Multi-threaded: the finder blocks its thread while the run proceeds on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_on_seen_from_the_host() {
    if !privileged("layers_are_on_seen_from_the_host") {
        return;
    }
    let daemon = daemon();
    let marker = format!("host-view-{}", std::process::id());
    let code = format!(
        "import time\nopen('{marker}', 'w').close()\nprint('up', flush=True)\ntime.sleep(2)\n"
    );
    let runner = tokio::spawn(async move { run(&code).await });
    let pid = common::find_marked_child(daemon.pid, &marker);
    let child = pid.and_then(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .map(|status| (pid, status))
    });
    let (pid, status) = child.expect("the running child is visible from the host");
    assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
    assert_eq!(field(&status, "Seccomp"), "2", "{status}");
    let filters: u32 = field(&status, "Seccomp_filters").parse().unwrap();
    assert!(filters >= 3, "zygote + child filters stacked: {filters}");
    assert_eq!(field(&status, "CapEff"), "0000000000000000");
    assert_eq!(field(&status, "CapPrm"), "0000000000000000");
    let uids: Vec<u32> = field(&status, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(
        uids.iter().all(|&u| u == uids[0] && u > 200_000),
        "{uids:?}"
    );
    let gids: Vec<u32> = field(&status, "Gid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(
        gids.iter().all(|&g| g == gids[0] && g > 200_000),
        "{gids:?}"
    );
    // Every namespace differs from the host's.
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(host, theirs, "{ns} namespace is shared with the host");
    }
    // Its root is not the host's root.
    let root_entries: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !root_entries.contains(&"etc".to_string())
            || !std::path::Path::new(&format!("/proc/{pid}/root/etc/passwd")).exists()
    );
    assert!(
        !root_entries.contains(&"proc".to_string()),
        "{root_entries:?}"
    );
    let result = runner.await.unwrap();
    assert_eq!(ok_stdout(&result), "up\n");
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or("")
}

/// The run's channel (fd 3) is the one path from the child to the supervisor: abusing it must
/// neither break the daemon nor forge anything beyond the run's own result.
#[tokio::test]
async fn abusing_the_result_channel_gets_nowhere() {
    if !privileged("abusing_the_result_channel_gets_nowhere") {
        return;
    }
    // The supervisor stops listening at the first packet it does not expect, so later sends
    // may fail with EPIPE: every attempt is wrapped.
    let attack = r#"
import socket, os, json
chan = socket.socket(fileno=3)
def attempt(fn):
    try:
        fn()
    except OSError:
        pass
# A forged result in script mode, a lying files header, garbage, a descriptor, a flood.
attempt(lambda: chan.send(json.dumps({"op": "result", "size": 4}).encode()))
attempt(lambda: chan.send(b"1234"))
attempt(lambda: chan.send(json.dumps({"op": "files", "entries": [{"path": "../../etc/passwd", "size": 3}], "size": 3}).encode()))
attempt(lambda: chan.send(b"abc"))
attempt(lambda: chan.send(b"\xff\x00 not json"))
r, w = os.pipe()
attempt(lambda: socket.send_fds(chan, [b'{"op":"done"}'], [r, w]))
def flood():
    chan.setblocking(False)
    sent = 0
    while sent < 50 * 1024 * 1024:
        sent += chan.send(b"x" * 65536)
attempt(flood)
open('real.txt', 'w').write('kept')
print('attacked')
"#;
    let result = run(attack).await;
    assert_eq!(ok_stdout(&result), "attacked\n");
    assert_eq!(
        result.result, None,
        "no result in script mode, forged or not"
    );
    assert!(
        result.files.iter().all(|f| !f.path.contains("..")),
        "{:?}",
        result.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    // The daemon is unharmed.
    assert_eq!(ok_stdout(&run("print('fine')").await), "fine\n");
}
