//! Rootless mode: a child of a zygote whose user namespace maps only the daemon's own ids stays
//! uid 0 there and drops every capability instead of changing uid. Each check runs in a
//! throwaway forked process that first builds such a namespace (as `nobody` when the test runs
//! as root), so these tests need unprivileged user namespaces, not root.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::{check, enter_rootless_userns, expect_errno, in_child, require_rootless, WorkTree};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use sandfork_lockdown::creds::{self, ROOTLESS_SECUREBITS};
use sandfork_lockdown::{seccomp, Lockdown};

/// `struct __user_cap_header_struct` / `__user_cap_data_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// (effective, permitted, inheritable) of the calling thread.
fn capget() -> Result<(u64, u64, u64), String> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capget(2) requires for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!("capget: {}", Errno::last()));
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

/// Tries to give the calling thread every capability back.
fn capset_full() -> libc::c_long {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let full = CapData {
        effective: u32::MAX,
        permitted: u32::MAX,
        inheritable: u32::MAX,
    };
    let data = [full; 2];
    // SAFETY: as for capget; the kernel only reads `data`.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
    // SAFETY: the options used here take integers only, no pointers.
    unsafe { libc::prctl(option, arg, 0, 0, 0) }
}

/// The `Cap*:` lines of a /proc/<pid>/status text that are not all zeros.
fn nonzero_cap_lines(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|v| !v.trim_matches('0').is_empty())
        })
        .map(str::to_owned)
        .collect()
}

/// Capabilities, identity and securebits right after the rootless credential step.
fn probe_dropped_capabilities() -> Result<(), String> {
    let before = capget()?;
    check(before.0 != 0, || {
        "the namespace's uid 0 should start with capabilities".into()
    })?;
    creds::drop_capabilities().map_err(|e| format!("drop_capabilities: {e}"))?;

    check(capget()? == (0, 0, 0), || {
        format!("capget: {:x?}", capget())
    })?;
    let status = fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    for field in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        check(status.contains(field), || format!("no {field} in status"))?;
    }
    let left = nonzero_cap_lines(&status);
    check(left.is_empty(), || format!("capabilities left: {left:?}"))?;
    check(prctl(libc::PR_CAPBSET_READ, 0) == 0, || {
        "CAP_CHOWN still in the bounding set".into()
    })?;
    let bits = prctl(libc::PR_GET_SECUREBITS, 0);
    check(bits == ROOTLESS_SECUREBITS, || {
        format!("securebits {bits:#x}, want {ROOTLESS_SECUREBITS:#x}")
    })?;
    check(prctl(libc::PR_GET_DUMPABLE, 0) == 0, || "dumpable".into())?;
    let ids = (nix::unistd::getuid(), nix::unistd::geteuid());
    check(ids.0.is_root() && ids.1.is_root(), || {
        format!("ids {ids:?}")
    })?;

    // Nothing gives them back: not capset, not clearing the (locked) securebits …
    expect_errno(capset_full(), libc::EPERM, "capset(full)")?;
    expect_errno(
        prctl(libc::PR_SET_SECUREBITS, 0).into(),
        libc::EPERM,
        "clearing securebits",
    )?;
    // … and not exec as uid 0 (no NO_NEW_PRIVS here: only SECBIT_NOROOT stops it).
    let out = std::process::Command::new("/bin/cat")
        .arg("/proc/self/status")
        .output()
        .map_err(|e| format!("exec cat: {e}"))?;
    let exec_status = String::from_utf8_lossy(&out.stdout);
    check(exec_status.contains("CapEff:"), || {
        format!("cat printed {exec_status:?}")
    })?;
    let left = nonzero_cap_lines(&exec_status);
    check(left.is_empty(), || {
        format!("an exec'd program as uid 0 regained {left:?}")
    })?;
    // Privileged calls fail.
    let err = nix::mount::mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap_err();
    check(err == Errno::EPERM, || format!("mount: {err}"))?;
    Ok(())
}

#[test]
fn rootless_credentials_leave_no_capability_and_lock_the_securebits() {
    if !require_rootless("rootless_credentials_leave_no_capability_and_lock_the_securebits") {
        return;
    }
    let outcome = in_child(|_| {
        enter_rootless_userns()?;
        probe_dropped_capabilities()
    });
    outcome.assert_ok();
}

/// A whole rootless lockdown: zero capabilities and every usual denial.
fn probe_rootless_child(tree: &WorkTree, status: &fs::File) -> Result<(), String> {
    check(prctl(libc::PR_GET_SECCOMP, 0) == 2, || {
        "PR_GET_SECCOMP != 2".into()
    })?;
    check(prctl(libc::PR_GET_NO_NEW_PRIVS, 0) == 1, || {
        "no_new_privs unset".into()
    })?;
    check(prctl(libc::PR_GET_DUMPABLE, 0) == 0, || "dumpable".into())?;
    check(nix::unistd::geteuid().is_root(), || {
        "a rootless child keeps uid 0".into()
    })?;
    check(capget()? == (0, 0, 0), || {
        format!("capget: {:x?}", capget())
    })?;
    for cap in 0..41 {
        check(prctl(libc::PR_CAPBSET_READ, cap) != 1, || {
            format!("capability {cap} still in the bounding set")
        })?;
    }
    // /proc is out of landlock's reach now; this fd was opened before the lockdown.
    let mut buf = vec![0u8; 8192];
    let n = status
        .read_at(&mut buf, 0)
        .map_err(|e| format!("pread: {e}"))?;
    let text = String::from_utf8_lossy(&buf[..n]);
    check(text.contains("CapBnd:"), || format!("status: {text}"))?;
    let left = nonzero_cap_lines(&text);
    check(left.is_empty(), || format!("capabilities left: {left:?}"))?;

    // The tmpfs cwd is writable, nothing else is; landlock hides host files.
    let cwd = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    check(cwd == tree.work_dir, || format!("cwd {cwd:?}"))?;
    fs::write("probe.txt", b"hello").map_err(|e| format!("write in cwd: {e}"))?;
    for outside in [
        "/tmp/sandfork-rootless-escape",
        "/dev/shm/sandfork-rootless",
    ] {
        let err = fs::write(outside, b"x").unwrap_err();
        check(err.kind() == ErrorKind::PermissionDenied, || {
            format!("write {outside}: {err}")
        })?;
    }
    for secret in ["/etc/passwd", "/etc/shadow"] {
        let err = fs::read(secret).unwrap_err();
        check(err.raw_os_error() == Some(libc::EACCES), || {
            format!("read {secret}: {err}")
        })?;
    }
    let joined = std::thread::spawn(|| 42).join();
    check(matches!(joined, Ok(42)), || "threads must work".into())?;

    // Seccomp: no sockets, processes, exec, mounts, namespaces, capability changes.
    for family in [AddressFamily::Inet, AddressFamily::Unix] {
        let err = socket(family, SockType::Stream, SockFlag::empty(), None).unwrap_err();
        check(err == Errno::EPERM, || format!("socket({family:?}): {err}"))?;
    }
    // SAFETY: the raw fork number; should it succeed, the copy `_exit`s at once.
    let rc = unsafe { libc::syscall(libc::SYS_fork) };
    if rc == 0 {
        // SAFETY: leave the accidental copy immediately.
        unsafe { libc::_exit(0) }
    }
    expect_errno(rc, libc::EPERM, "fork")?;
    let true_bin = CString::new("/bin/true").map_err(|e| e.to_string())?;
    let err = nix::unistd::execv(&true_bin, &[&true_bin]).unwrap_err();
    check(err == Errno::EPERM, || format!("execve: {err}"))?;
    let err = nix::mount::mount(
        Some("tmpfs"),
        ".",
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap_err();
    check(err == Errno::EPERM, || format!("mount: {err}"))?;
    for flags in [
        nix::sched::CloneFlags::CLONE_NEWNS,
        nix::sched::CloneFlags::CLONE_NEWUSER,
    ] {
        let err = nix::sched::unshare(flags).unwrap_err();
        check(err == Errno::EPERM, || format!("unshare({flags:?}): {err}"))?;
    }
    expect_errno(capset_full(), libc::EPERM, "capset(full)")?;
    Ok(())
}

#[test]
fn rootless_child_holds_no_capability_and_keeps_every_denial() {
    if !require_rootless("rootless_child_holds_no_capability_and_keeps_every_denial") {
        return;
    }
    let tree = WorkTree::new();
    let lockdown = Lockdown::prepare(&tree.config()).expect("prepare");
    let outcome = in_child(|report_fd| {
        enter_rootless_userns()?;
        let status = fs::File::open("/proc/self/status").map_err(|e| e.to_string())?;
        let params = tree.rootless_params(&[report_fd, status.as_raw_fd()]);
        lockdown
            .enforce(&params)
            .map_err(|e| format!("step {}: {e}", e.step()))?;
        probe_rootless_child(&tree, &status)
    });
    outcome.assert_ok();
}

#[test]
fn ptrace_still_kills_a_rootless_child() {
    if !require_rootless("ptrace_still_kills_a_rootless_child") {
        return;
    }
    let tree = WorkTree::new();
    let lockdown = Lockdown::prepare(&tree.config()).expect("prepare");
    let zygote_filters = seccomp::zygote_filters().expect("zygote filters");
    let outcome = in_child(|report_fd| {
        enter_rootless_userns()?;
        // As zygote-init does before exec'ing Python (NO_NEW_PRIVS first, as it does).
        nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())?;
        for program in &zygote_filters {
            seccomp::apply(program).map_err(|e| format!("zygote filter: {e}"))?;
        }
        lockdown
            .enforce(&tree.rootless_params(&[report_fd]))
            .map_err(|e| format!("step {}: {e}", e.step()))?;
        // SAFETY: integer arguments only; the zygote filter kills before the kernel acts.
        let rc = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
        Err(format!("ptrace returned {rc} ({})", Errno::last()))
    });
    assert_eq!(
        outcome.signal(),
        Some(Signal::SIGSYS),
        "{:?} {}",
        outcome.status,
        outcome.message
    );
}

#[test]
fn a_rootless_child_must_stay_uid_0_and_a_slot_child_must_not() {
    let tree = WorkTree::new();
    let lockdown = Lockdown::prepare(&tree.config()).expect("prepare");
    let mut params = tree.rootless_params(&[]);
    params.uid = 5;
    let err = lockdown.enforce(&params).unwrap_err();
    assert_eq!(err.step(), 100, "{err}");
    assert!(err.to_string().contains("rootless"), "{err}");
}
