//! Shared fixtures for the integration tests: a spec for the host's real Python, and a spawner
//! that passes descriptors the way the supervisor does (control socket as fd 3, parent-death
//! signal set in the child before exec).
//!
//! Longer than the ~500 lines we aim for, on purpose: the one fixture that derives a real jail
//! spec from the host's interpreter for every zygote-init test.

#![allow(dead_code)] // each test binary uses a different subset

#[path = "../../../../tests/support/skip.rs"]
mod skip;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use zygote_init::{Bind, ExecSpec, IdMapping, JailSpec, Symlink};

/// Where the host's real interpreter lives and what it maps.
#[derive(Debug)]
pub struct Python {
    /// The real binary (shims and symlinks resolved).
    pub executable: PathBuf,
    /// `sys.prefix`, canonical.
    pub prefix: PathBuf,
    /// Directories of every shared object a probe maps, outside the prefix, canonical.
    pub lib_dirs: Vec<PathBuf>,
    /// Symlinks needed so the ELF interpreter's and the libraries' host paths resolve.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
}

/// Finds the real interpreter behind `python3` (a pyenv shim on these machines).
pub fn python() -> &'static Python {
    static PYTHON: OnceLock<Python> = OnceLock::new();
    PYTHON.get_or_init(|| probe_python("python3"))
}

/// The distribution's interpreter, readable by every user: what a rootless jail can bind (the
/// pyenv one lives under /root).
pub fn system_python() -> &'static Python {
    static PYTHON: OnceLock<Python> = OnceLock::new();
    PYTHON.get_or_init(|| probe_python(SYSTEM_PYTHON))
}

/// Where Debian and Ubuntu install the distribution's interpreter.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The unprivileged host uid/gid the rootless tests run zygote-init as when they run as root.
pub const ROOTLESS_ID: u32 = 65_534;

fn probe_python(command: &str) -> Python {
    {
        let out = Command::new(command)
            .args(["-c", "import sys; print(sys.executable); print(sys.prefix)"])
            .output()
            .expect("python3 on PATH");
        assert!(out.status.success(), "python3 -c failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let executable = std::fs::canonicalize(lines.next().unwrap()).unwrap();
        let prefix = std::fs::canonicalize(lines.next().unwrap()).unwrap();

        // Every shared object the probes need: run the real interpreter with the same imports
        // and read its memory map.
        let maps = Command::new(&executable)
            .args([
                "-I",
                "-c",
                "import ctypes, socket, json, errno, time; print(open('/proc/self/maps').read())",
            ])
            .output()
            .unwrap();
        assert!(maps.status.success());
        let mut objects = BTreeSet::new();
        for line in String::from_utf8(maps.stdout).unwrap().lines() {
            if let Some(path) = line.split_whitespace().nth(5) {
                if path.starts_with('/') && path.contains(".so") {
                    objects.insert(PathBuf::from(path));
                }
            }
        }
        let mut lib_dirs = BTreeSet::new();
        let mut symlinks = Vec::new();
        for object in &objects {
            let real = std::fs::canonicalize(object).unwrap();
            let dir = real.parent().unwrap().to_owned();
            if !dir.starts_with(&prefix) {
                lib_dirs.insert(dir);
            }
            for link in symlink_chain(object) {
                if !symlinks.contains(&link) {
                    symlinks.push(link);
                }
            }
        }
        // The ELF interpreter is requested by its PT_INTERP path, e.g. /lib64/ld-linux-*.so.2.
        let ldd = Command::new("ldd").arg(&executable).output().unwrap();
        for line in String::from_utf8(ldd.stdout).unwrap().lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.starts_with('/') {
                for link in symlink_chain(Path::new(first)) {
                    if !symlinks.contains(&link) {
                        symlinks.push(link);
                    }
                }
                let real = std::fs::canonicalize(first).unwrap();
                lib_dirs.insert(real.parent().unwrap().to_owned());
            }
        }
        let lib_dirs: Vec<PathBuf> = lib_dirs.into_iter().collect();
        // Symlinks inside bound directories come with the bind.
        symlinks.retain(|(path, _)| {
            !lib_dirs.iter().any(|d| path.starts_with(d)) && !path.starts_with(&prefix)
        });
        Python {
            executable,
            prefix,
            lib_dirs,
            symlinks,
        }
    }
}

/// The symlinks met while resolving `path` component by component, as (link, target).
fn symlink_chain(path: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut chain = Vec::new();
    let mut todo = path.to_owned();
    'restart: for _ in 0..40 {
        let mut resolved = PathBuf::from("/");
        let mut components = todo.components();
        while let Some(component) = components.next() {
            match component {
                Component::Normal(name) => resolved.push(name),
                Component::ParentDir => {
                    resolved.pop();
                    continue;
                }
                _ => continue,
            }
            if let Ok(target) = std::fs::read_link(&resolved) {
                chain.push((resolved.clone(), target.clone()));
                // An absolute target replaces the parent in `join`.
                let mut next = resolved.parent().unwrap().join(&target);
                next.extend(components);
                todo = next;
                continue 'restart;
            }
        }
        return chain;
    }
    panic!("symlink loop at {path:?}")
}

/// The spec the supervisor would write for `python() -c script`.
pub fn python_spec(script: &str) -> JailSpec {
    spec_for(python(), script)
}

/// The spec a rootless supervisor running as `uid`/`gid` would write: the system interpreter
/// and a one-line map of its own ids.
pub fn rootless_spec(script: &str, uid: u32, gid: u32) -> JailSpec {
    let mut spec = spec_for(system_python(), script);
    spec.uid_map = vec![IdMapping {
        inside: 0,
        outside: uid,
        count: 1,
    }];
    spec.gid_map = vec![IdMapping {
        inside: 0,
        outside: gid,
        count: 1,
    }];
    spec
}

fn spec_for(py: &Python, script: &str) -> JailSpec {
    let mut binds = vec![Bind {
        path: py.prefix.clone(),
        dest: None,
    }];
    binds.extend(py.lib_dirs.iter().map(|dir| Bind {
        path: dir.clone(),
        dest: None,
    }));
    binds.push(Bind {
        path: "/etc/ld.so.cache".into(),
        dest: None,
    });
    JailSpec {
        uid_map: vec![IdMapping {
            inside: 0,
            outside: 200_000,
            count: 33,
        }],
        gid_map: vec![IdMapping {
            inside: 0,
            outside: 200_000,
            count: 33,
        }],
        hostname: "sandfork".into(),
        keep_fds: vec![3],
        root_size_bytes: 16 << 20,
        binds,
        symlinks: py
            .symlinks
            .iter()
            .map(|(path, target)| Symlink {
                path: path.clone(),
                target: target.clone(),
            })
            .collect(),
        devices: ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
            .map(PathBuf::from)
            .to_vec(),
        dirs: vec!["/sandbox/work".into()],
        cwd: "/sandbox".into(),
        seccomp: true,
        exec: ExecSpec {
            path: py.executable.clone(),
            argv: ["python3", "-I", "-X", "utf8", "-c", script]
                .map(String::from)
                .to_vec(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("OPENBLAS_NUM_THREADS".into(), "1".into()),
            ],
        },
    }
}

/// A running zygote-init and the supervisor's end of its control socket.
pub struct Jail {
    /// The zygote-init process (the monitor, once PID 1 is forked).
    pub child: Child,
    /// Our end of the SEQPACKET control socket; EOF once every holder of fd 3 is gone.
    pub control: OwnedFd,
}

/// A connected SEQPACKET pair (close-on-exec).
pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// Spawns `zygote-init <args>` with `fds` placed at the given numbers, stdout and stderr piped.
pub fn spawn_raw(args: &[String], fds: Vec<(OwnedFd, RawFd)>) -> Child {
    spawn_raw_as(args, fds, None)
}

/// [`spawn_raw`], as host uid and gid `id` (no supplementary groups) when given.
pub fn spawn_raw_as(args: &[String], fds: Vec<(OwnedFd, RawFd)>, id: Option<u32>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zygote-init"));
    cmd.uid_maybe(id)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let raw: Vec<(RawFd, RawFd)> = fds.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, fcntl, dup2) on integers captured by value; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // What the supervisor does: the jail dies with the thread that spawned it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Move every source out of the way first, so a source that happens to sit on
            // another target number is not clobbered.
            let mut high = [0; 8];
            for (i, (from, _)) in raw.iter().enumerate() {
                high[i] = libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, (_, to)) in raw.iter().enumerate() {
                if libc::dup2(high[i], *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn zygote-init");
    drop(fds);
    child
}

/// The host id a rootless zygote-init runs as: [`ROOTLESS_ID`] when we are root (it is
/// spawned as that), else our own uid and gid.
pub fn rootless_ids() -> (Option<u32>, u32, u32) {
    if nix::unistd::geteuid().is_root() {
        (Some(ROOTLESS_ID), ROOTLESS_ID, ROOTLESS_ID)
    } else {
        (
            None,
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
}

/// Runs a rootless jail for `script` to completion: (exit code, stdout, stderr).
pub fn run_rootless(script: &str) -> (i32, String, String) {
    let (spawn_as, uid, gid) = rootless_ids();
    run_rootless_spec(&rootless_spec(script, uid, gid), spawn_as)
}

/// Runs `spec` in zygote-init spawned as `spawn_as` (None: as we are).
pub fn run_rootless_spec(spec: &JailSpec, spawn_as: Option<u32>) -> (i32, String, String) {
    let jail = spawn_jail_as(spec, spawn_as);
    finish(jail.child)
}

/// Spawns zygote-init for `spec` as `id` (None: as we are), control socket on fd 3.
pub fn spawn_jail_as(spec: &JailSpec, id: Option<u32>) -> Jail {
    let (ours, theirs) = seqpacket_pair();
    let child = spawn_raw_as(
        &[serde_json::to_string(spec).unwrap()],
        vec![(theirs, 3)],
        id,
    );
    Jail {
        child,
        control: ours,
    }
}

/// Whether rootless jails can be built here (unprivileged user namespaces, a system Python
/// that `nobody` can run); prints SKIPPED with the reason otherwise, or panics under CI.
pub fn skip_unless_rootless_works(test: &str) -> bool {
    let reason = if !Path::new(SYSTEM_PYTHON).exists() {
        format!("{SYSTEM_PYTHON} is missing")
    } else {
        let (spawn_as, _, _) = rootless_ids();
        let probe = Command::new("unshare")
            .args(["--user", "--map-root-user", "true"])
            .uid_maybe(spawn_as)
            .output();
        match probe {
            Ok(out) if out.status.success() => return false,
            Ok(out) => format!(
                "unprivileged user namespaces do not work here ({}); check \
                 user.max_user_namespaces, kernel.unprivileged_userns_clone and \
                 kernel.apparmor_restrict_unprivileged_userns",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => format!("cannot run unshare(1): {err}"),
        }
    };
    skip::skip(test, &reason);
    true
}

/// `Command::uid`/`gid` only when an id is given (as root, std then drops the supplementary
/// groups too).
trait UidMaybe {
    fn uid_maybe(&mut self, id: Option<u32>) -> &mut Self;
}

impl UidMaybe for Command {
    fn uid_maybe(&mut self, id: Option<u32>) -> &mut Self {
        if let Some(id) = id {
            self.uid(id).gid(id);
        }
        self
    }
}

/// Spawns zygote-init for `spec` with a control socket on fd 3 and `extra` fds.
pub fn spawn(spec: &JailSpec, extra: Vec<(OwnedFd, RawFd)>) -> Jail {
    let (ours, theirs) = seqpacket_pair();
    let mut fds = vec![(theirs, 3)];
    fds.extend(extra);
    let child = spawn_raw(&[serde_json::to_string(spec).unwrap()], fds);
    Jail {
        child,
        control: ours,
    }
}

/// Runs a jail to completion: (exit code, stdout, stderr).
pub fn run(spec: &JailSpec) -> (i32, String, String) {
    let jail = spawn(spec, Vec::new());
    finish(jail.child)
}

/// Waits for a child: (exit code or 128 + signal, stdout, stderr).
pub fn finish(child: Child) -> (i32, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = child.wait_with_output().unwrap();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads one line from the child's stdout (blocking).
pub fn first_line(child: &mut Child) -> (String, BufReader<std::process::ChildStdout>) {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (line, reader)
}

/// Prints SKIPPED (or panics under CI) and returns true when the privileged tests cannot run.
pub fn skip_unless_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip::skip(
            "zygote-init privileged tests",
            "zygote-init must run as root in the initial user namespace",
        );
        return true;
    }
    false
}

/// Everything the jail should look like from inside. `{prefix}` and `{libdir}` are filled in.
pub const PROBE: &str = r#"
import ctypes, errno, json, os, socket, sys
r = {}
# Descriptors first, before this script opens any: only fd 3 (the control socket) is inherited.
fds = []
for fd in range(3, 64):
    try:
        os.fstat(fd)
        fds.append(fd)
    except OSError:
        pass
r["fds"] = fds
r["pid"] = os.getpid()
r["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]
r["groups"] = os.getgroups()
r["hostname"] = socket.gethostname()
r["exists"] = {p: os.path.exists(p) for p in ["/proc", "/sys", "/etc/passwd", "/tmp", "/sandbox/work"]}
r["root"] = sorted(os.listdir("/"))
r["cwd"] = os.getcwd()
r["env"] = dict(os.environ)
def write_error(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return None
    except OSError as e:
        return errno.errorcode[e.errno]
r["write"] = {p: write_error(p) for p in ["/probe", "/sandbox/probe", "{prefix}/probe", "{libdir}/probe", "/dev/null"]}
r["rdonly"] = {p: bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in ["/", "{prefix}", "{libdir}", "/etc/ld.so.cache", "/dev/null"]}
r["nosuid"] = {p: bool(os.statvfs(p).f_flag & os.ST_NOSUID) for p in ["/", "{prefix}", "{libdir}", "/dev/null"]}
with open("/dev/urandom", "rb") as f:
    r["urandom"] = len(f.read(16))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.connect(("127.0.0.1", 9))
    r["connect"] = None
except OSError as e:
    r["connect"] = errno.errorcode[e.errno]
s.close()
libc = ctypes.CDLL(None, use_errno=True)
r["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)
r["seccomp_mode"] = libc.prctl(21, 0, 0, 0, 0)
# A sibling id is mapped: a forked child can become uid/gid 1.
pid = os.fork()
if pid == 0:
    try:
        os.setgroups([])
        os.setresgid(1, 1, 1)
        os.setresuid(1, 1, 1)
        os._exit(0 if (os.getuid(), os.getgid()) == (1, 1) else 1)
    except BaseException:
        os._exit(2)
r["sibling_uid"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
# The zygote keeps CAP_SYS_ADMIN in its user namespace: a child can mount its private tmpfs.
pid = os.fork()
if pid == 0:
    try:
        if libc.unshare(0x00020000) != 0:
            os._exit(10)
        if libc.mount(b"tmpfs", b"/sandbox/work", b"tmpfs", 0, b"size=1m") != 0:
            os._exit(11)
        with open("/sandbox/work/f", "w") as f:
            f.write("ok")
        os._exit(0)
    except BaseException:
        os._exit(12)
r["child_tmpfs"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(r))
"#;

/// [`PROBE`] for `py`: `{prefix}` and `{libdir}` filled in.
pub fn probe_script(py: &Python) -> String {
    let libdir = py
        .lib_dirs
        .iter()
        .find(|d| d.ends_with("x86_64-linux-gnu") || d.starts_with("/usr/lib"))
        .unwrap_or(&py.lib_dirs[0]);
    PROBE
        .replace("{prefix}", py.prefix.to_str().unwrap())
        .replace("{libdir}", libdir.to_str().unwrap())
}

/// Blocks until `fd` reports EOF/hang-up or `timeout` passes; true on EOF.
pub fn eof_within(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return false,
            Ok(_) => {
                let events = fds[0].revents().unwrap_or(PollFlags::empty());
                if events.contains(PollFlags::POLLHUP) {
                    return true;
                }
                let mut buf = [0u8; 64];
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(_) => return true,
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Processes on the host whose command line contains `token`.
pub fn processes_with(token: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(token) {
                found.push(pid);
            }
        }
    }
    found
}
