//! `sandfork bench --floor`: what a run costs against the least a run can cost here — the
//! profile's zygote forking a child that exits at once, reaped and reported through the same
//! channels (`Mode::Floor`). The same number of floor runs at the same concurrency follow the
//! load in the same invocation; both are timed as round trips and CPU-accounted the same way.
//!
//! CPU is the machine's, not one process tree's: the busy time of every CPU (`/proc/stat`: user,
//! nice, system, irq, softirq) over a phase, less the bench's own CPU time (`getrusage`) and
//! less the machine's background (its busy time per second while the daemon sat idle, measured
//! before the load and again after the floor, the mean of the two times the phase's length).
//! When the two readings differ much ([`background_changed`]) the bench says its figures are not
//! trustworthy, and a figure that comes out negative is not reported. So it counts everything a run costs wherever it is
//! spent — the daemon, the zygote, the child, the kernel's work on their behalf (exit teardown,
//! RCU callbacks, softirqs), the shim when the load goes over HTTP — and nothing that leaves a
//! process tree unaccounted (a zygote replaced mid-phase took its children's CPU with it in the
//! first version, which summed the daemon's tree from `/proc/<pid>/stat`).
//!
//! Each phase is bracketed by [`settle`]: the daemon idle and its pools no longer changing, so
//! the warm children a phase used are refilled inside that phase's accounting. The bench must
//! run on the daemon's host, on an otherwise quiet machine; what else runs there meanwhile is
//! counted too.

use std::path::Path;
use std::time::Duration;

use sandfork_protocol::client::Client;
use tokio::time::Instant;

/// How long [`background`] watches the idle machine.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(1);
/// The smallest change of the background that [`background_changed`] calls a change, ms/s:
/// `/proc/stat` counts in ticks of 10 ms (USER_HZ 100), so one reading over a second moves in
/// steps of 10 ms/s by itself (0, 10, 20 are all a quiet machine); three ticks is something.
/// At the few hundred runs per second measured here, 30 ms/s is ~0.1 ms per run.
const BACKGROUND_STEP: f64 = 30.0;
/// How often [`settle`] asks the daemon, and how many equal answers in a row mean settled.
const SETTLE_POLL: Duration = Duration::from_millis(50);
const SETTLE_STABLE: u32 = 3;
/// The longest [`settle`] waits; a daemon still busy by then is measured as it is.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// The CPU counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Busy time of all CPUs since boot, ms.
    machine_ms: f64,
    /// This process's own CPU time (user + system, all threads), ms.
    own_ms: f64,
    at: Instant,
}

impl Snapshot {
    /// Now; `None` where `/proc/stat` or the clock tick cannot be read.
    pub fn take() -> Option<Snapshot> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks = busy_ticks(&text)?;
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)? as f64;
        let usage =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
        let own = usage.user_time() + usage.system_time();
        Some(Snapshot {
            machine_ms: ticks as f64 * 1000.0 / per_second,
            own_ms: own.tv_sec() as f64 * 1000.0 + own.tv_usec() as f64 / 1000.0,
            at: Instant::now(),
        })
    }

    /// CPU ms the machine spent from `self` to `later` on anything but this process, less
    /// `background_ms_per_s` for every second in between.
    pub fn cpu_until(&self, later: &Snapshot, background_ms_per_s: f64) -> f64 {
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        (later.machine_ms - self.machine_ms)
            - (later.own_ms - self.own_ms)
            - background_ms_per_s * seconds
    }
}

/// The busy ticks of all CPUs from `/proc/stat`'s first line (`cpu user nice system idle iowait
/// irq softirq steal …`): user + nice + system + irq + softirq. Idle, iowait and the time a
/// hypervisor stole are not this machine's work.
pub fn busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| values.get(i).copied())
        .sum()
}

/// The machine's busy CPU ms per second while the daemon idles and the bench sleeps: what is
/// subtracted from every phase. `None` where the counters cannot be read.
pub async fn background(socket: &Path) -> Option<f64> {
    settle(socket).await;
    let before = Snapshot::take()?;
    tokio::time::sleep(BACKGROUND_WINDOW).await;
    let after = Snapshot::take()?;
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    Some((before.cpu_until(&after, 0.0) / seconds).max(0.0))
}

/// True when two background readings (ms/s) differ by more than half the larger or
/// [`BACKGROUND_STEP`], whichever is more: then something else ran during the bench, and its
/// CPU is in the figures.
pub fn background_changed(before: f64, after: f64) -> bool {
    (before - after).abs() > (0.5 * before.max(after)).max(BACKGROUND_STEP)
}

/// Waits until the daemon runs nothing and its pools stopped changing (zygotes and warm
/// children the same over [`SETTLE_STABLE`] answers in a row), at most [`SETTLE_LIMIT`]. A
/// daemon that cannot be asked is not waited for.
pub async fn settle(socket: &Path) {
    let limit = Instant::now() + SETTLE_LIMIT;
    let Ok(mut client) = Client::connect(socket).await else {
        return;
    };
    let mut last = None;
    let mut stable = 0;
    while Instant::now() < limit {
        let Ok(Ok(status)) = tokio::time::timeout_at(limit, client.ping()).await else {
            return;
        };
        let pools: Vec<(u32, u32, u32)> = status
            .profiles
            .iter()
            .map(|p| (p.zygotes_ready, p.zygotes_wanted, p.warm_children))
            .collect();
        let idle = status.slots_busy == 0 && pools.iter().all(|p| p.0 == p.1);
        if idle && last.as_ref() == Some(&pools) {
            stable += 1;
            if stable >= SETTLE_STABLE {
                return;
            }
        } else {
            stable = 0;
        }
        last = Some(pools);
        tokio::time::sleep(SETTLE_POLL).await;
    }
}
