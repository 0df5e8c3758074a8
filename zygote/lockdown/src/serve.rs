//! The zygote's serving loop: receive `spawn`, fork, report `spawned`, and `exit` when a child
//! ends. The messages are the ones `zygote/zygote.py`'s docstring lists; this loop only moves
//! them off the Python heap.
//!
//! # Why in Rust
//! After every fork the zygote's memory is shared copy-on-write with the child, so each page the
//! zygote writes afterwards is copied. A loop in Python writes all over that heap (refcounts,
//! frames, the method cache, the allocator's pools, JSON objects): measured on the 2-vCPU VM of
//! docs/BENCHMARKS.md, ~200 page faults and ~1 ms of zygote CPU per fork. This loop touches only
//! its own stack and two buffers, and Python runs again only in the child, or when the zygote
//! stops.
//!
//! # The child
//! In the child, [`serve`] returns [`Served::Child`] straight after `fork()`, with the spawn
//! message and its descriptors. The caller is Python, which must run `PyOS_AfterFork_Child()`
//! before any Python code (that is what `os.fork()` does: it re-creates the GIL and runs the
//! `os.register_at_fork` child hooks, e.g. `random`'s reseed). `os.fork()`'s *before* hooks and
//! `PyOS_BeforeFork` are not run: the zygote is single-threaded and runs no Python in this loop,
//! so no Python lock can be held at the fork; C-level `pthread_atfork` handlers run as usual
//! (this is libc's `fork()`).
//!
//! # Reaping
//! Each child's pidfd is polled; a readable one is collected with `wait4` (status and rusage for
//! the `exit` report). Only children this loop forked are collected: they cannot create
//! processes of their own (their seccomp filter allows `clone` for threads only), so no orphan is
//! ever reparented to the zygote, PID 1 of their namespace.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde_json::{json, Value};

/// Largest control message accepted (as zygote.py's `MAX_PACKET`).
const MAX_PACKET: usize = 1 << 20;
/// Descriptors a spawn carries: the child's channel, its stdout and stderr write ends.
const SPAWN_FDS: usize = 3;

/// How [`serve`] ended.
#[derive(Debug)]
pub enum Served {
    /// The supervisor said `shutdown` or closed the channel.
    Stop,
    /// This process is a freshly forked child: the spawn message, with `"fds"` (the three
    /// descriptors, now owned by the caller) added.
    Child(String),
}

/// A live child of the zygote.
struct Child {
    pid: libc::pid_t,
    /// The run id the supervisor gave, echoed in `exit`.
    id: Value,
    /// Readable once the child has exited.
    pidfd: OwnedFd,
}

/// Serves `spawn` requests on `ctrl` until told to stop; returns in every forked child too.
/// An error means the channel broke (the caller exits, and the kernel ends the children: the
/// zygote is PID 1 of their namespace).
pub fn serve(ctrl: BorrowedFd<'_>) -> io::Result<Served> {
    let mut children: Vec<Child> = Vec::new();
    let mut packet = vec![0u8; MAX_PACKET];
    loop {
        let (ctrl_ready, exited) = wait_for_events(ctrl, &children)?;
        for index in exited.into_iter().rev() {
            let child = children.swap_remove(index);
            reap(ctrl, child)?;
        }
        if !ctrl_ready {
            continue;
        }
        let Some((len, fds)) = receive(ctrl, &mut packet)? else {
            return Ok(Served::Stop);
        };
        let message: Value = match serde_json::from_slice(&packet[..len]) {
            Ok(value) => value,
            Err(err) => {
                eprintln!("zygote: unreadable control message: {err}");
                continue;
            }
        };
        match message.get("op").and_then(Value::as_str) {
            Some("spawn") => {
                if let Some(served) = spawn(ctrl, message, fds, &mut children)? {
                    return Ok(served);
                }
            }
            Some("shutdown") => return Ok(Served::Stop),
            other => eprintln!("zygote: unknown control op {other:?}"),
        }
    }
}

/// Blocks until the channel is readable or children exited; returns (channel ready, indexes
/// of exited children in ascending order).
fn wait_for_events(ctrl: BorrowedFd<'_>, children: &[Child]) -> io::Result<(bool, Vec<usize>)> {
    let mut fds = Vec::with_capacity(1 + children.len());
    fds.push(PollFd::new(ctrl, PollFlags::POLLIN));
    fds.extend(
        children
            .iter()
            .map(|c| PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN)),
    );
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::other(format!("poll: {err}"))),
        }
    }
    let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
    let exited = fds[1..]
        .iter()
        .enumerate()
        .filter(|(_, fd)| ready(fd))
        .map(|(index, _)| index)
        .collect();
    Ok((ready(&fds[0]), exited))
}

/// One packet and its descriptors; `None` when the supervisor closed the channel.
fn receive(ctrl: BorrowedFd<'_>, packet: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(packet)];
    let msg = loop {
        match recvmsg::<()>(
            ctrl.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(msg) => break msg,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::other(format!("recvmsg: {err}"))),
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| io::Error::other(e.to_string()))? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing
            // else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let (len, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC));
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    // A truncated packet is no JSON object: the caller reports it as unreadable.
    Ok(Some((if truncated { 0 } else { len }, fds)))
}

/// Forks for one spawn. Returns `Some` in the child; in the zygote, reports and returns `None`.
fn spawn(
    ctrl: BorrowedFd<'_>,
    mut message: Value,
    fds: Vec<OwnedFd>,
    children: &mut Vec<Child>,
) -> io::Result<Option<Served>> {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let failed = |error: String| {
        send(
            ctrl,
            &json!({"op": "spawn_failed", "id": id, "error": error}),
            &[],
        )
        .map(|()| None)
    };
    if fds.len() != SPAWN_FDS {
        return failed(format!("expected {SPAWN_FDS} fds, got {}", fds.len()));
    }
    // SAFETY: the zygote is single-threaded (zygote.py checks before it serves), so the child
    // may run anything; it returns to Python, which runs PyOS_AfterFork_Child first.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return failed(io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        // The siblings' pidfds close with `children`, in the caller's unwinding.
        let raw: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
        message["fds"] = json!(raw);
        return Ok(Some(Served::Child(message.to_string())));
    }
    drop(fds);
    let pidfd = pidfd_open(pid)?;
    let rss_kb = max_rss_kb(libc::RUSAGE_SELF);
    let spawned = json!({"op": "spawned", "id": id, "pid": pid, "rss_kb": rss_kb});
    send(ctrl, &spawned, &[pidfd.as_raw_fd()])?;
    children.push(Child { pid, id, pidfd });
    Ok(None)
}

/// Collects an exited child and reports its status and resource use.
fn reap(ctrl: BorrowedFd<'_>, child: Child) -> io::Result<()> {
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; the pid is our own child (its pidfd said it exited).
    let reaped = unsafe { libc::wait4(child.pid, &mut status, libc::WNOHANG, &mut usage) };
    if reaped != child.pid {
        return Err(io::Error::other(format!(
            "wait4({}) after its pidfd said it exited: {}",
            child.pid,
            io::Error::last_os_error()
        )));
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let exit = json!({
        "op": "exit",
        "id": child.id,
        "pid": child.pid,
        "exit_code": libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        "signal": libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        "utime": seconds(usage.ru_utime),
        "stime": seconds(usage.ru_stime),
        "maxrss_kb": usage.ru_maxrss,
    });
    send(ctrl, &exit, &[])
}

fn send(ctrl: BorrowedFd<'_>, message: &Value, fds: &[RawFd]) -> io::Result<()> {
    let data = message.to_string();
    let iov = [IoSlice::new(data.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(ctrl.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(drop)
        .map_err(|err| io::Error::other(format!("sendmsg: {err}")))
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn max_rss_kb(who: libc::c_int) -> i64 {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::getrusage(who, &mut usage) };
    usage.ru_maxrss
}
