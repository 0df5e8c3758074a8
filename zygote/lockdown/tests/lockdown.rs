//! The child lockdown, end to end, each check in a throwaway forked process (run as root).
//!
//! The lockdown is prepared in the parent (like the zygote's init) and enforced in the child
//! (like a forked zygote child); the child then probes what it can and cannot do.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::IntoRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

use common::{check, expect_errno, in_child, require_root, WorkTree, GID, UID};
use nix::errno::Errno;
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use sandfork_lockdown::{landlock_rules, seccomp, Lockdown};

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

fn effective_capabilities() -> Result<u64, String> {
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
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

fn prctl_get(option: libc::c_int) -> libc::c_int {
    // SAFETY: the PR_GET_* options used here take no pointer arguments.
    unsafe { libc::prctl(option, 0, 0, 0, 0) }
}

/// Open fds that must not survive step 1: a file and a high dup of it.
fn open_stray_fds() -> Result<(i32, i32), String> {
    let file = fs::File::open("/dev/null").map_err(|e| format!("open: {e}"))?;
    let high = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD(100))
        .map_err(|e| format!("dup: {e}"))?;
    Ok((file.into_raw_fd(), high))
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only inspects the fd table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Every check of the brief that a locked-down child must pass, in one child.
fn probe_locked_down(
    tree: &WorkTree,
    ruleset_fd: i32,
    stray: (i32, i32),
    kept: i32,
    tcp_fd: i32,
    tcp_port: u16,
) -> Result<(), String> {
    // Seccomp mode 2 (filter), no_new_privs, identity, no capabilities.
    check(prctl_get(libc::PR_GET_SECCOMP) == 2, || {
        "PR_GET_SECCOMP != 2".into()
    })?;
    check(prctl_get(libc::PR_GET_NO_NEW_PRIVS) == 1, || {
        "no_new_privs unset".into()
    })?;
    check(prctl_get(libc::PR_GET_DUMPABLE) == 0, || {
        "still dumpable".into()
    })?;
    let ids = (
        nix::unistd::getuid(),
        nix::unistd::geteuid(),
        nix::unistd::getgid(),
    );
    check(
        ids.0.as_raw() == UID && ids.1.as_raw() == UID && ids.2.as_raw() == GID,
        || format!("ids {ids:?}"),
    )?;
    check(nix::unistd::getgroups().is_ok_and(|g| g.is_empty()), || {
        "supplementary groups left".into()
    })?;
    let caps = effective_capabilities()?;
    check(caps == 0, || format!("effective capabilities {caps:#x}"))?;

    // Session and limits.
    let sid = nix::unistd::getsid(None).map_err(|e| format!("getsid: {e}"))?;
    check(sid == nix::unistd::getpid(), || {
        "not a session leader".into()
    })?;
    let limits = [
        (Resource::RLIMIT_CPU, (15, 16)),
        (Resource::RLIMIT_CORE, (0, 0)),
        (Resource::RLIMIT_NOFILE, (256, 256)),
        (Resource::RLIMIT_NPROC, (64, 64)),
        (Resource::RLIMIT_FSIZE, (64 << 20, 64 << 20)),
    ];
    for (resource, want) in limits {
        let got = getrlimit(resource).map_err(|e| format!("getrlimit: {e}"))?;
        check(got == want, || {
            format!("{resource:?} is {got:?}, want {want:?}")
        })?;
    }

    // Fds: strays closed, the kept pipe and the TCP socket open, the ruleset fd consumed.
    check(!fd_is_open(stray.0) && !fd_is_open(stray.1), || {
        format!("stray fds {stray:?} still open")
    })?;
    check(fd_is_open(kept) && fd_is_open(tcp_fd), || {
        "kept fds closed".into()
    })?;
    check(!fd_is_open(ruleset_fd), || {
        format!("landlock ruleset fd {ruleset_fd} still open")
    })?;

    // The cwd is the tmpfs, writable, size-limited; nothing else is writable.
    let cwd = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    check(cwd == tree.work_dir, || format!("cwd {cwd:?}"))?;
    let fs_type = statfs(".")
        .map_err(|e| format!("statfs: {e}"))?
        .filesystem_type();
    check(fs_type == TMPFS_MAGIC, || "cwd is not a tmpfs".into())?;
    fs::write("probe.txt", b"hello").map_err(|e| format!("write in cwd: {e}"))?;
    check(
        fs::read("probe.txt").ok().as_deref() == Some(&b"hello"[..]),
        || "read back in cwd".into(),
    )?;
    let mut big = fs::File::create("big.bin").map_err(|e| format!("create: {e}"))?;
    let full = big.write_all(&vec![1u8; 2 << 20]).unwrap_err();
    check(full.raw_os_error() == Some(libc::ENOSPC), || {
        format!("writing 2 MiB into the 1 MiB tmpfs: {full}")
    })?;
    for outside in [
        "/tmp/sandfork-lockdown-escape",
        "/dev/shm/sandfork-lockdown-escape",
    ] {
        let err = fs::write(outside, b"x").unwrap_err();
        check(err.kind() == ErrorKind::PermissionDenied, || {
            format!("write {outside}: {err}")
        })?;
    }
    let beside = tree.root.path().join("escape");
    let err = fs::write(&beside, b"x").unwrap_err();
    check(err.kind() == ErrorKind::PermissionDenied, || {
        format!("write {beside:?}: {err}")
    })?;
    // /etc/passwd is world-readable: only landlock can refuse it (EACCES).
    for secret in ["/etc/passwd", "/etc/shadow"] {
        let err = fs::read(secret).unwrap_err();
        check(err.raw_os_error() == Some(libc::EACCES), || {
            format!("read {secret}: {err}")
        })?;
    }
    fs::read("/etc/ld.so.cache").map_err(|e| format!("read allowed file: {e}"))?;
    fs::read_dir("/usr/lib").map_err(|e| format!("list allowed dir: {e}"))?;

    // Threads still work (clone3 → ENOSYS → glibc falls back to clone with CLONE_THREAD).
    let joined = std::thread::spawn(|| 42).join();
    check(matches!(joined, Ok(42)), || {
        "thread spawn/join failed".into()
    })?;

    // Seccomp refusals are EPERM (clone3 ENOSYS).
    let err = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap_err();
    check(err == Errno::EPERM, || format!("socket(AF_INET): {err}"))?;
    let err = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap_err();
    check(err == Errno::EPERM, || format!("socket(AF_UNIX): {err}"))?;
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack); should it succeed, the copy
    // `_exit`s at once.
    let rc = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if rc == 0 {
        // SAFETY: leave the accidental copy immediately.
        unsafe { libc::_exit(0) }
    }
    expect_errno(rc, libc::EPERM, "clone without CLONE_THREAD")?;
    // SAFETY: the filter answers before the kernel reads the (NULL) clone_args.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    expect_errno(rc, libc::ENOSYS, "clone3")?;
    // SAFETY: as for clone; vfork would share memory, so use the raw fork number only.
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
    let err = nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).unwrap_err();
    check(err == Errno::EPERM, || format!("setuid(0): {err}"))?;
    // No fd, inherited or not, accepts landlock rules: the ruleset fd is closed and the
    // syscalls are refused.
    for fd in 0..1024 {
        // SAFETY: a NULL rule attribute; the filter answers before the kernel reads it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                fd,
                1,
                std::ptr::null::<u8>(),
                0,
            )
        };
        expect_errno(rc, libc::EPERM, &format!("landlock_add_rule on fd {fd}"))?;
    }
    // SAFETY: version query: NULL attribute, size 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0,
            1,
        )
    };
    expect_errno(rc, libc::EPERM, "landlock_create_ruleset")?;
    // TCP: a socket created before the lockdown still cannot connect.
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: tcp_port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in and its exact length.
    let rc = unsafe {
        libc::connect(
            tcp_fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let err = Errno::last();
    check(
        rc == -1 && (err == Errno::EPERM || err == Errno::EACCES),
        || format!("connect to 127.0.0.1:{tcp_port}: rc {rc}, {err}"),
    )?;
    Ok(())
}

#[test]
fn locked_down_child_has_exactly_the_expected_powers() {
    if !require_root("locked_down_child_has_exactly_the_expected_powers") {
        return;
    }
    let tree = WorkTree::new();
    let lockdown = Lockdown::prepare(&tree.config()).expect("prepare");
    assert!(lockdown.report().landlock.landlock_enforced);
    let ruleset_fd = lockdown.ruleset_fd().expect("ruleset fd");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let tcp_port = listener.local_addr().expect("addr").port();

    let outcome = in_child(|report_fd| {
        let stray = open_stray_fds()?;
        let tcp = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .map_err(|e| format!("socket before lockdown: {e}"))?;
        let tcp_fd = tcp.into_raw_fd();
        let params = tree.params(&[report_fd, tcp_fd]);
        lockdown
            .enforce(&params)
            .map_err(|e| format!("step {}: {e}", e.step()))?;
        probe_locked_down(&tree, ruleset_fd, stray, report_fd, tcp_fd, tcp_port)
    });
    outcome.assert_ok();
    drop(listener);
}

fn probe_ptrace() -> libc::c_long {
    // SAFETY: integer arguments only; the zygote filter kills before the kernel acts.
    unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) }
}

fn probe_personality() -> libc::c_long {
    // SAFETY: integer argument only (READ_IMPLIES_EXEC); killed before the kernel acts.
    unsafe { libc::syscall(libc::SYS_personality, 0x0040_0000) }
}

fn probe_bpf() -> libc::c_long {
    // SAFETY: NULL attribute; killed before the kernel reads it.
    unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) }
}

fn probe_x32() -> libc::c_long {
    // SAFETY: getpid under its x32 number takes no arguments; the x32 guard kills it.
    unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }
}

#[test]
fn gravest_calls_kill_the_child_with_sigsys() {
    if !require_root("gravest_calls_kill_the_child_with_sigsys") {
        return;
    }
    let tree = WorkTree::new();
    let lockdown = Lockdown::prepare(&tree.config()).expect("prepare");
    let zygote_filters = seccomp::zygote_filters().expect("zygote filters");

    type Probe = fn() -> libc::c_long;
    let probes: [(&str, Probe); 4] = [
        ("ptrace(PTRACE_TRACEME)", probe_ptrace),
        ("personality(READ_IMPLIES_EXEC)", probe_personality),
        ("bpf", probe_bpf),
        ("x32 getpid (nr | 0x40000000)", probe_x32),
    ];
    for (name, probe) in probes {
        let outcome = in_child(|report_fd| {
            // As zygote-init does before exec'ing Python.
            for program in &zygote_filters {
                seccomp::apply(program).map_err(|e| format!("zygote filter: {e}"))?;
            }
            lockdown
                .enforce(&tree.params(&[report_fd]))
                .map_err(|e| format!("step {}: {e}", e.step()))?;
            let rc = probe();
            Err(format!("{name} returned {rc} ({})", Errno::last()))
        });
        assert_eq!(
            outcome.signal(),
            Some(Signal::SIGSYS),
            "{name}: {:?} {}",
            outcome.status,
            outcome.message
        );
    }
}

#[test]
fn failed_step_is_numbered_and_names_its_argument() {
    if !require_root("failed_step_is_numbered_and_names_its_argument") {
        return;
    }
    let tree = WorkTree::new();
    let lockdown = Lockdown::prepare(&tree.config()).expect("prepare");
    let outcome = in_child(|report_fd| {
        let mut params = tree.params(&[report_fd]);
        params.work_dir = tree.work_parent.join("missing");
        match lockdown.enforce(&params) {
            Ok(()) => Err("lockdown succeeded without a mount point".into()),
            Err(err) if err.step() == 2 && err.to_string().contains("missing") => Ok(()),
            Err(err) => Err(format!("step {}: {err}", err.step())),
        }
    });
    outcome.assert_ok();

    // Bad params are refused before anything changes (step 100).
    let mut params = tree.params(&[]);
    params.uid = 0;
    let err = lockdown.enforce(&params).unwrap_err();
    assert_eq!(err.step(), 100, "{err}");
}

#[test]
fn landlock_alone_denies_tcp_and_scopes_ipc() {
    if !require_root("landlock_alone_denies_tcp_and_scopes_ipc") {
        return;
    }
    let abi = match landlock_rules::probe_abi() {
        Ok(abi) if abi >= 6 => abi,
        other => {
            println!(
                "SKIPPED: landlock_alone_denies_tcp_and_scopes_ipc: needs ABI 6, have {other:?}"
            );
            return;
        }
    };
    let tree = WorkTree::new();
    let prepared = landlock_rules::build(&tree.config(), Ok(abi)).expect("build");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let name = format!("sandfork-lockdown-test-{}", std::process::id());
    let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let unix_listener = UnixListener::bind_addr(&abstract_addr).expect("abstract listen");

    let restrict_flags = prepared.restrict_flags;
    let ruleset = prepared.fd;
    let abstract_addr = &abstract_addr;
    let outcome = in_child(move |_| {
        let fd = ruleset.ok_or("no ruleset fd")?;
        landlock_rules::restrict_self(fd, restrict_flags)
            .map_err(|e| format!("restrict_self: {e}"))?;
        let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        check(err.raw_os_error() == Some(libc::EACCES), || {
            format!("tcp connect: {err}")
        })?;
        let err = TcpListener::bind("127.0.0.1:0").unwrap_err();
        check(err.raw_os_error() == Some(libc::EACCES), || {
            format!("tcp bind: {err}")
        })?;
        let err = UnixStream::connect_addr(abstract_addr).unwrap_err();
        check(err.raw_os_error() == Some(libc::EPERM), || {
            format!("abstract unix connect: {err}")
        })?;
        // Signals to processes outside the domain are refused even for the same uid (root).
        let err = nix::sys::signal::kill(nix::unistd::getppid(), None).unwrap_err();
        check(err == Errno::EPERM, || format!("kill(parent, 0): {err}"))?;
        Ok(())
    });
    outcome.assert_ok();
    drop((listener, unix_listener));
}
