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
//! # A pid namespace per run
//! A spawn with `own_pid_namespace` (a profile with processes) forks the child as PID 1 of a
//! new pid namespace: `unshare(CLONE_NEWPID)` points the zygote's next child at a new namespace,
//! `fork()` makes it, and `setns` on the zygote's own pidfd points later children back at the
//! zygote's namespace. The child's processes live in its namespace and die with it: when PID 1
//! exits, the kernel kills every other process there and reaps them before PID 1's pidfd
//! becomes readable. It is still libc's `fork()`, so the child returns into Python as above.
//!
//! # Reaping
//! Each child's pidfd is polled; a readable one is collected with `wait4` (status and rusage for
//! the `exit` report). Only children this loop forked are collected: without processes their
//! seccomp filter allows `clone` for threads only, and with processes each child is PID 1 of its
//! own namespace and adopts its orphans itself, so no orphan is ever reparented to the zygote,
//! PID 1 of their namespace.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use sandfork_ipc::zygote::{
    ExitReport, FromZygote, SpawnRequest, ToZygote, MAX_ZYGOTE_PACKET as MAX_PACKET, SPAWN_FDS,
};

use crate::sys;

/// How [`serve`] ended.
#[derive(Debug)]
pub enum Served {
    /// The supervisor said `shutdown` or closed the channel.
    Stop,
    /// This process is a freshly forked child: the spawn request and its three descriptors
    /// (child channel, stdout, stderr), now owned by the caller.
    Child(SpawnRequest, [RawFd; SPAWN_FDS]),
}

/// A live child of the zygote.
struct Child {
    pid: libc::pid_t,
    /// The run id the supervisor gave, echoed in `exit`.
    id: u64,
    /// Readable once the child has exited.
    pidfd: OwnedFd,
}

/// Serves `spawn` requests on `ctrl` until told to stop; returns in every forked child too.
/// An error means the channel broke (the caller exits, and the kernel ends the children: the
/// zygote is PID 1 of their namespace).
pub fn serve(ctrl: BorrowedFd<'_>) -> io::Result<Served> {
    let mut children: Vec<Child> = Vec::new();
    // The zygote's own pidfd, opened at the first spawn that needs it (see the module docs).
    let mut own_pidfd: Option<OwnedFd> = None;
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
        match sandfork_ipc::decode::<ToZygote>(&packet[..len], MAX_PACKET) {
            Ok(ToZygote::Spawn(request)) => {
                if let Some(served) = spawn(ctrl, request, fds, &mut children, &mut own_pidfd)? {
                    return Ok(served);
                }
            }
            Ok(ToZygote::Shutdown {}) => return Ok(Served::Stop),
            Err(err) => eprintln!("zygote: unreadable control message: {err}"),
        }
    }
}

/// The JSON a forked child's Python reads (`sandfork_child_message`): the spawn request with
/// `"fds"`, the child's three descriptors, added.
pub fn child_message(request: &SpawnRequest, fds: [RawFd; SPAWN_FDS]) -> String {
    let mut message = serde_json::to_value(request).unwrap_or_default();
    if let Some(object) = message.as_object_mut() {
        object.insert("fds".into(), fds.to_vec().into());
    }
    message.to_string()
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
            fds.extend(sys::received_fds(received));
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
    request: SpawnRequest,
    fds: Vec<OwnedFd>,
    children: &mut Vec<Child>,
    own_pidfd: &mut Option<OwnedFd>,
) -> io::Result<Option<Served>> {
    let id = request.id;
    let failed =
        |error: String| send(ctrl, &FromZygote::SpawnFailed { id, error }, &[]).map(|()| None);
    let fds: [OwnedFd; SPAWN_FDS] = match fds.try_into() {
        Ok(fds) => fds,
        Err(fds) => return failed(format!("expected {SPAWN_FDS} fds, got {}", fds.len())),
    };
    let forked = if request.own_pid_namespace {
        let own = match own_pidfd {
            Some(fd) => fd,
            None => match sys::pidfd_open(nix::unistd::getpid().as_raw()) {
                Ok(fd) => own_pidfd.insert(fd),
                Err(errno) => return failed(format!("pidfd_open(self): {errno}")),
            },
        };
        fork_in_own_pid_namespace(own)?
    } else {
        sys::fork_zygote().map_err(|errno| io::Error::from(errno).to_string())
    };
    let pid = match forked {
        Ok(pid) => pid,
        Err(why) => return failed(why),
    };
    if pid == 0 {
        if request.floor {
            // A floor child: the fork, its exit and its reaping are all that is measured.
            sys::exit_now(0);
        }
        // The siblings' pidfds close with `children`, in the caller's unwinding.
        return Ok(Some(Served::Child(
            request,
            fds.map(IntoRawFd::into_raw_fd),
        )));
    }
    drop(fds);
    let pidfd = sys::pidfd_open(pid)?;
    let rss_kb = sys::max_rss_kb();
    let spawned = FromZygote::Spawned { id, pid, rss_kb };
    send(ctrl, &spawned, &[pidfd.as_raw_fd()])?;
    children.push(Child { pid, id, pidfd });
    Ok(None)
}

/// Forks a child that is PID 1 of a new pid namespace (see the module docs). The inner result
/// is a failed fork, reported to the supervisor; the outer one a zygote that could not point
/// its later children back at its own namespace — they would be born inside this child's, so
/// the zygote must stop (its pid namespace then takes every child with it).
fn fork_in_own_pid_namespace(own: &OwnedFd) -> io::Result<Result<libc::pid_t, String>> {
    use nix::sched::{setns, unshare, CloneFlags};
    if let Err(errno) = unshare(CloneFlags::CLONE_NEWPID) {
        return Ok(Err(format!("unshare(CLONE_NEWPID): {errno}")));
    }
    let forked = sys::fork_zygote();
    if forked == Ok(0) {
        return Ok(Ok(0));
    }
    setns(own, CloneFlags::CLONE_NEWPID).map_err(|errno| {
        io::Error::other(format!(
            "setns(own pid namespace) after a fork into a new one: {errno}"
        ))
    })?;
    Ok(forked.map_err(|errno| io::Error::from(errno).to_string()))
}

/// Collects an exited child and reports its status and resource use.
fn reap(ctrl: BorrowedFd<'_>, child: Child) -> io::Result<()> {
    // The pid is our own child, and its pidfd said it exited.
    let (status, usage) = match sys::reap_child(child.pid) {
        Ok(Some(reaped)) => reaped,
        Ok(None) => {
            return Err(io::Error::other(format!(
                "wait4({}) after its pidfd said it exited: not exited",
                child.pid
            )))
        }
        Err(errno) => {
            return Err(io::Error::other(format!(
                "wait4({}) after its pidfd said it exited: {errno}",
                child.pid
            )))
        }
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let exit = FromZygote::Exit(ExitReport {
        id: child.id,
        pid: child.pid,
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        utime: seconds(usage.ru_utime),
        stime: seconds(usage.ru_stime),
        maxrss_kb: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    });
    send(ctrl, &exit, &[])
}

fn send(ctrl: BorrowedFd<'_>, message: &FromZygote, fds: &[RawFd]) -> io::Result<()> {
    let data = sandfork_ipc::encode(message).map_err(io::Error::other)?;
    let iov = [IoSlice::new(&data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(ctrl.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(drop)
        .map_err(|err| io::Error::other(format!("sendmsg: {err}")))
}
