//! `sandfork bench --floor`: what a run costs against the least a run can cost here — the
//! profile's zygote forking a child that exits at once, reaped and reported through the same
//! channels (`Mode::Floor`). The same number of floor runs at the same concurrency follow the
//! load in the same invocation; both are timed as round trips and CPU-accounted the same way:
//! the CPU time (user + system) of the daemon and every process below it, its own and its reaped
//! children's, from `/proc`, before and after each phase, divided by the results.
//!
//! The daemon is found through the socket (`SO_PEERCRED` names its pid), so the bench must run
//! on the daemon's host and see its `/proc`; otherwise CPU per run is not reported.

use std::os::unix::net::UnixStream;
use std::path::Path;

/// The daemon's pid, as the kernel names the socket's peer; `None` if it cannot be asked.
pub fn daemon_pid(socket: &Path) -> Option<i32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stream = UnixStream::connect(socket).ok()?;
    let credentials = getsockopt(&stream, PeerCredentials).ok()?;
    Some(credentials.pid()).filter(|&pid| pid > 0)
}

/// One process's line of `/proc/<pid>/stat`: (parent pid, CPU ticks of its own and of its
/// reaped children).
fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// (ppid, utime + stime + cutime + cstime) from a `/proc/<pid>/stat` line. The command name may
/// hold spaces and parentheses; the fields after its last `)` are fixed.
pub fn parse_stat(text: &str) -> Option<(i32, u64)> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = (11..=14)
        .map(|i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()?;
    Some((ppid, ticks))
}

/// CPU time, ms, of `root` and every process below it: each one's own and its reaped
/// children's, so a run's child that has exited is counted through the zygote that reaped it.
pub fn tree_cpu_ms(root: i32) -> Option<f64> {
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)? as f64;
    let mut processes: Vec<(i32, i32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((ppid, ticks)) = stat(pid) {
            processes.push((pid, ppid, ticks));
        }
    }
    let mut tree = vec![root];
    let mut total = processes.iter().find(|p| p.0 == root)?.2;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, ticks) in &processes {
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
                total += ticks;
            }
        }
        i += 1;
    }
    Some(total as f64 * 1000.0 / ticks_per_second)
}
