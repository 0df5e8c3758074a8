//! The supervisor's few kernel interfaces that need raw calls: SEQPACKET channels carrying file
//! descriptors, pidfds, sealed memfds and pipes. Every `unsafe` block of the supervisor lives here.

use std::io::{self, IoSlice, IoSliceMut, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A connected AF_UNIX SOCK_SEQPACKET socket: message boundaries are kept, so one JSON object
/// is one packet, and file descriptors ride along as SCM_RIGHTS.
#[derive(Debug)]
pub struct SeqChannel {
    fd: AsyncFd<OwnedFd>,
}

/// A fresh pair of connected, close-on-exec SEQPACKET sockets, both blocking: the end handed to
/// a zygote or child must block, and `SeqChannel::new` makes ours non-blocking.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

impl SeqChannel {
    /// Wraps one end (which must be non-blocking) for use from tokio.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(SeqChannel {
            fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Sends one packet with `fds` attached.
    pub async fn send(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let iov = [IoSlice::new(data)];
            let cmsgs = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
            match guard.try_io(|inner| {
                sendmsg::<()>(
                    inner.get_ref().as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet of at most `max` bytes and at most `max_fds` descriptors.
    /// `Ok(None)` means the peer closed its end. A truncated packet is an error (and its
    /// descriptors are closed), so a peer cannot smuggle a partial message through.
    /// The buffer is sized to the packet (peeked first), not to `max`: most packets are a few
    /// dozen bytes, and a `max`-sized allocation per packet would be an mmap and munmap each.
    pub async fn recv(&self, max: usize, max_fds: usize) -> io::Result<Option<Packet>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                let fd = inner.get_ref().as_raw_fd();
                // An oversized packet does not fit `max` bytes and shows as truncated below.
                let size = peek_packet_size(fd)?.min(max);
                let mut buf = vec![0u8; size];
                let received = recv_packet(fd, &mut buf, max_fds)?;
                Ok(received.map(|(len, fds)| {
                    buf.truncate(len);
                    (buf, fds)
                }))
            }) {
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some((data, fds)))) => return Ok(Some(Packet { data, fds })),
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

/// One received SEQPACKET message.
#[derive(Debug)]
pub struct Packet {
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// The size of the next packet without taking it (MSG_PEEK | MSG_TRUNC reports a SEQPACKET
/// message's real length); 0 at end of stream or for an empty packet.
fn peek_packet_size(fd: RawFd) -> io::Result<usize> {
    // SAFETY: a zero-length receive into a null buffer writes nothing; `fd` is borrowed from an
    // OwnedFd the caller holds.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_PEEK | libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn recv_packet(
    fd: RawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg_buf),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for us; nothing
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let len = msg.bytes;
    if truncated || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "packet or its descriptors exceed the expected size",
        ));
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((len, fds)))
}

/// Registers an owned descriptor with the tokio reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open, is closed only when dropped (which the AsyncFd controls), and
    // always returns the same descriptor from as_raw_fd, as register_with_interest requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: `fd` is borrowed from an OwnedFd the caller holds for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(borrowed, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// A process handle that cannot be confused with a recycled pid.
#[derive(Debug)]
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

impl PidFd {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(PidFd {
            fd: register(fd, Interest::READABLE)?,
        })
    }

    /// `pidfd_open(pid)` for a process in our pid namespace.
    pub fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh descriptor that only we own.
        PidFd::new(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Another handle on the same process (a duplicated descriptor).
    pub fn duplicate(&self) -> io::Result<PidFd> {
        PidFd::new(self.fd.get_ref().try_clone()?)
    }

    /// Sends `signal`; `Ok(false)` if the process has already exited.
    pub fn signal(&self, signal: i32) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags reads no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        Err(err)
    }

    /// Resolves when the process has exited (the pidfd turns readable).
    pub async fn exited(&self) -> io::Result<()> {
        let _guard = self.fd.readable().await?;
        Ok(())
    }

    /// True once the process has exited (the pidfd is readable), without waiting.
    pub fn has_exited(&self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.fd.get_ref().as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// The process's pid in our pid namespace, from /proc/self/fdinfo (0 once it has exited).
    pub fn host_pid(&self) -> Option<i32> {
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            self.fd.get_ref().as_raw_fd()
        ))
        .ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("Pid:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// `PF_EXITING` in /proc/<pid>/stat's flags: the task is inside `do_exit`.
const PF_EXITING: u64 = 0x4;
/// CAP_SYS_PTRACE, the capability that lets /proc show another uid's exit code.
const CAP_SYS_PTRACE: u32 = 19;

/// Whether this process may read other users' exit codes in /proc/<pid>/stat: the kernel shows
/// them only to a reader that may ptrace-read the task (for a child of another uid, one holding
/// CAP_SYS_PTRACE), and prints 0 to anyone else — which [`exiting_status`] could not tell from
/// a real 0.
pub fn may_read_exit_codes() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// The wait status of process `pid` once it has begun to exit, read from the kernel's own task
/// before the kernel has torn down its memory (for a forked CPython that teardown takes
/// milliseconds, and the exit only becomes visible through a pidfd or `wait4` after it).
///
/// `do_exit` sets `PF_EXITING`, then stores the exit code, then detaches the memory map
/// (`task->mm = NULL`, under the task lock) and only then frees it. So a task that shows
/// `PF_EXITING` and no memory map (vsize 0) has its final exit code in the stat's `exit_code`
/// field. `None` while that is not so, for a multi-threaded process (its leader's code need not
/// be the group's), or when the stat cannot be read. Only meaningful where
/// [`may_read_exit_codes`].
pub fn exiting_status(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which is in parentheses and may contain anything.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (flags, threads, vsize) = (field(9)?, field(20)?, field(23)?);
    if flags & PF_EXITING == 0 || threads != 1 || vsize != 0 {
        return None;
    }
    i32::try_from(field(52)?).ok()
}

/// A sealed memfd holding `data`, positioned at offset 0, that nobody can modify any more.
pub fn sealed_memfd(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    let memfd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(|err| io::Error::other(format!("memfd_create: {err}")))?;
    let mut file = memfd.as_file();
    file.write_all(data)?;
    file.seek(SeekFrom::Start(0))?;
    memfd
        .add_seals(&[
            memfd::FileSeal::SealShrink,
            memfd::FileSeal::SealGrow,
            memfd::FileSeal::SealWrite,
            memfd::FileSeal::SealSeal,
        ])
        .map_err(|err| io::Error::other(format!("memfd seals: {err}")))?;
    Ok(OwnedFd::from(memfd.into_file()))
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Makes glibc serve every allocation of 128 KiB or more with its own mmap, returned to the
/// kernel on free. Output capture and result frames are transient buffers of up to a few MiB;
/// with glibc's default *dynamic* threshold, the first large free raises the threshold and later
/// large buffers come from the heap, whose fragmentation shows as slowly creeping RSS under
/// output-heavy load. Setting the threshold explicitly turns the dynamic adjustment off.
pub fn pin_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes allocator tuning; called once at
    // start-up before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime and nginx do, and
/// returns the limit now in force. Each slot keeps its cgroup control files open (up to twelve
/// on v1), and each run and client connection holds a few descriptors more: systemd's default
/// soft limit of 1,024 would cap a daemon at about a hundred slots. Zygotes inherit the raised
/// limit; children set their own (the profile's `nofile`) in their lockdown.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard)
}

/// Makes every process `command` spawns die with `signal` when the spawning thread exits
/// (PR_SET_PDEATHSIG in the child, between fork and exec).
pub fn die_with_parent(command: &mut std::process::Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes one prctl: async-signal-safe.
    unsafe {
        command.pre_exec(move || set_parent_death_signal(signal));
    }
}

/// As [`die_with_parent`] (SIGKILL), and hands `fd` to the spawned process as its fd `target`
/// (inherited across exec): how a zygote-init gets its control socket as fd 3.
pub fn die_with_parent_holding_fd(command: &mut std::process::Command, fd: RawFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, dup2/fcntl) on plain integers.
    unsafe {
        command.pre_exec(move || {
            set_parent_death_signal(libc::SIGKILL)?;
            install_fd(fd, target)
        });
    }
}

/// Makes `command`'s process enter a new user namespace before exec, and write `maps` (path,
/// contents: its uid_map, setgroups, gid_map) in that order: the rootless-mode probe.
pub fn enter_user_namespace(
    command: &mut std::process::Command,
    maps: Vec<(std::ffi::CString, Vec<u8>)>,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only unshare, open, write and
    // close on memory prepared before the fork (nothing is allocated).
    unsafe {
        command.pre_exec(move || {
            unshare_user_namespace()?;
            for (path, text) in &maps {
                write_file_once(path, text)?;
            }
            Ok(())
        });
    }
}

/// Sets PR_SET_PDEATHSIG for the calling thread's future children; used in `pre_exec`.
/// Async-signal-safe: one prctl.
pub fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `fd` the process's fd `target` without close-on-exec; used in `pre_exec`.
/// Async-signal-safe: dup2 / fcntl only.
pub fn install_fd(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // SAFETY: fcntl on a descriptor number with integer arguments.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 on descriptor numbers; the target is replaced atomically.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unshare(CLONE_NEWUSER)`; used in `pre_exec` (the rootless-mode probe).
/// Async-signal-safe: one system call.
pub fn unshare_user_namespace() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `data` to the existing file `path` in a single write(2), as /proc/self/uid_map
/// requires; used in `pre_exec`. Async-signal-safe: open, write, close; nothing is allocated.
pub fn write_file_once(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the kernel only reads it.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is valid for `data.len()` bytes for the call; `fd` is ours.
    let written = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let error = io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above, which nothing else holds.
    unsafe { libc::close(fd) };
    if written < 0 {
        return Err(error);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The listening socket systemd passed (socket activation: `LISTEN_PID` is this process,
/// `LISTEN_FDS` = 1, the socket at fd 3), with its path; None when none was passed. Anything
/// else is an error: more than one socket, or fd 3 not a listening Unix stream socket with a
/// path. The variables are unset (no child inherits them) and the fd is close-on-exec. Call it
/// before any other thread exists (it changes the environment).
#[allow(clippy::type_complexity)]
pub fn inherited_listener(
) -> io::Result<Option<(std::os::unix::net::UnixListener, std::path::PathBuf)>> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, UnixAddr};
    use std::path::Path;
    // SAFETY: unsetting environment variables is sound only while no other thread reads the
    // environment; the caller runs this before any other thread exists. The crate also sets
    // FD_CLOEXEC on the passed fds.
    let fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }?.collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("systemd passed {} sockets; sandforkd takes one", more.len()),
            ))
        }
    };
    // SAFETY: LISTEN_PID named this process, so fd 3 was passed to it to own, and nothing
    // else in the process has taken it (this runs once, at start-up, before other threads).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let kind = getsockopt(&owned, sockopt::SockType).map_err(io::Error::from)?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(io::Error::from)?;
    let address: UnixAddr = getsockname(owned.as_raw_fd())
        .map_err(|e| invalid(format!("the passed socket is not a Unix socket: {e}")))?;
    let Some(path) = address.path().map(Path::to_path_buf) else {
        return Err(invalid("the passed Unix socket has no path".into()));
    };
    if kind != SockType::Stream || !listening {
        return Err(invalid(format!(
            "the passed socket {} is not a listening stream socket",
            path.display()
        )));
    }
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener.set_nonblocking(true)?;
    Ok(Some((listener, path)))
}
