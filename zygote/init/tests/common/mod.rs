//! Shared fixtures for the integration tests: a spec for the host's real Python, and a spawner
//! that passes descriptors the way the supervisor does (control socket as fd 3, parent-death
//! signal set in the child before exec).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use zygote_init::{Bind, ExecSpec, IdMapping, Spec, Symlink};

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
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
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
    })
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
pub fn python_spec(script: &str) -> Spec {
    let py = python();
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
    Spec {
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zygote-init"));
    cmd.args(args)
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

/// Spawns zygote-init for `spec` with a control socket on fd 3 and `extra` fds.
pub fn spawn(spec: &Spec, extra: Vec<(OwnedFd, RawFd)>) -> Jail {
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
pub fn run(spec: &Spec) -> (i32, String, String) {
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

/// Prints SKIPPED and returns true when the privileged tests cannot run here.
pub fn skip_unless_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: zygote-init must run as root in the initial user namespace");
        return true;
    }
    false
}
