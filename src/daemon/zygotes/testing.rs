//! Zygotes without a jail, for the scheduling tests (no root needed): a zygote is its control
//! channel and the process whose death is its death. Here the channel's other end stays with the
//! test, which can speak for the zygote through it, and the process is a `sleep` the test can
//! kill.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandfork_ipc::zygote::ReadyInfo;

use super::handle::{Zygote, ZygoteError};
use crate::daemon::engine::pool::{Launch, LaunchFuture};
use crate::daemon::sys::{self, PidFd, SeqChannel};

/// A zygote attached to a `sleep` process, and the test's end of its channel.
pub fn fake_zygote(name: &str) -> (Arc<Zygote>, OwnedFd, u32) {
    let (ours, theirs) = sys::seqpacket_pair().expect("socketpair");
    let init: Child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = init.id();
    let pidfd = PidFd::open(pid).expect("pidfd");
    let chan = SeqChannel::new(ours).expect("channel");
    let zygote = Zygote::attach(name.into(), chan, init, pidfd, ReadyInfo::default());
    (zygote, theirs, pid)
}

/// Kills a fake zygote's process: for the pool, the zygote died.
pub fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A launcher of fake zygotes: the first `failures` launches fail, each launch takes `delay`.
#[derive(Default)]
pub struct FakeLauncher {
    pub failures: AtomicU32,
    pub delay: Duration,
    pub launches: AtomicU32,
    /// Every zygote launched, with its channel's other end (kept open) and its process.
    pub launched: Mutex<Vec<(Arc<Zygote>, OwnedFd, u32)>>,
}

impl FakeLauncher {
    /// A launcher whose every launch takes `delay`.
    pub fn slow(delay: Duration) -> FakeLauncher {
        FakeLauncher {
            failures: AtomicU32::new(0),
            delay,
            launches: AtomicU32::new(0),
            launched: Mutex::new(Vec::new()),
        }
    }

    pub fn launches(&self) -> u32 {
        self.launches.load(Ordering::SeqCst)
    }

    /// The process of the `n`th zygote launched.
    pub fn pid(&self, n: usize) -> u32 {
        self.launched.lock().unwrap()[n].2
    }

    pub fn zygote(&self, n: usize) -> Arc<Zygote> {
        Arc::clone(&self.launched.lock().unwrap()[n].0)
    }
}

impl Launch for FakeLauncher {
    fn launch(&self, name: String) -> LaunchFuture<'_> {
        Box::pin(async move {
            self.launches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(ZygoteError::Start("a launch made to fail".into()));
            }
            let (zygote, theirs, pid) = fake_zygote(&name);
            self.launched
                .lock()
                .unwrap()
                .push((Arc::clone(&zygote), theirs, pid));
            Ok(zygote)
        })
    }
}

impl Drop for FakeLauncher {
    fn drop(&mut self) {
        for (_, _, pid) in self.launched.lock().unwrap().iter() {
            kill(*pid);
        }
    }
}
