//! The supervisor ↔ zygote channel: the zygote's start-up config (its one argument), and the
//! messages on its SEQPACKET control socket (fd 3 of the zygote).
//!
//! The zygote is trusted code, already confined; still, everything it sends is decoded strictly
//! (`deny_unknown_fields`, bounded size): a zygote that says something else is stopped.
//!
//! ```text
//! supervisor -> zygote   spawn (fds: child channel, stdout write end, stderr write end)
//!                        shutdown
//! zygote -> supervisor   ready | fatal                     (once, at start-up)
//!                        spawned (fds: pidfd) | spawn_failed
//!                        exit                              (wait4 status and rusage)
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::lockdown::{InitConfig, RlimitParams};

/// Largest packet either side sends on this channel (as the zygote's receive buffer).
pub const MAX_ZYGOTE_PACKET: usize = 1 << 20;
/// Largest packet the supervisor accepts from a zygote.
pub const MAX_ZYGOTE_EVENT: usize = 64 * 1024;
/// Descriptors a spawn carries: the child's channel, its stdout and stderr write ends.
pub const SPAWN_FDS: usize = 3;

/// The zygote's start-up config: `zygote.py`'s one argument (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZygoteConfig {
    /// Path of the lockdown library inside the jail.
    pub lockdown_lib: PathBuf,
    /// The lockdown's per-zygote preparation (landlock paths, work dir parent).
    pub lockdown_init: InitConfig,
    /// Modules imported before `gc.freeze()` (only those the probe found importable).
    pub preload: Vec<String>,
    /// Trusted warm-up code run twice in the zygote, and once in each rehearsing warm child.
    #[serde(default)]
    pub warmup: String,
    /// The mount point of each child's tmpfs (inside `lockdown_init.work_parent`).
    pub work_dir: PathBuf,
    /// The profile's name, for the zygote's log lines.
    pub profile: String,
    /// Rootless mode: children stay uid 0 without capabilities.
    #[serde(default)]
    pub rootless: Option<RootlessConfig>,
    /// A profile with processes: each child's private `/dev/shm` (its `ChildParams::shm_dir`).
    #[serde(default)]
    pub shm_dir: Option<PathBuf>,
}

/// What a rootless zygote does differently for its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootlessConfig {
    /// RLIMIT_NPROC for every child: the kernel counts it over all children of the zygote.
    pub nproc: u64,
}

/// Supervisor → zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToZygote {
    /// Fork one child for run `id`; [`SPAWN_FDS`] descriptors ride along.
    Spawn(SpawnRequest),
    /// Stop serving and exit.
    Shutdown {},
}

/// One child to fork, with the identity and ceilings the supervisor chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// The supervisor's id for this child, echoed in every event about it.
    pub id: u64,
    /// The slot's uid inside the zygote's user namespace.
    pub uid: u32,
    /// The slot's gid inside the zygote's user namespace.
    pub gid: u32,
    /// Size of the child's tmpfs.
    pub tmpfs_bytes: u64,
    /// The profile's ceilings; the child may only lower them when its request arrives.
    pub rlimits: RlimitParams,
    /// Fork the child as PID 1 of a pid namespace of its own (a profile with processes): when
    /// it exits, the kernel kills every process it started, and none can outlive the run.
    #[serde(default)]
    pub own_pid_namespace: bool,
    /// A floor child (`Mode::Floor`): it exits at once after the fork, in the zygote's loop,
    /// before any lockdown or Python; its exit report is the floor's end.
    #[serde(default)]
    pub floor: bool,
}

/// Zygote → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromZygote {
    /// Preloaded, frozen, serving.
    Ready(ReadyInfo),
    /// Start-up failed; the zygote exits.
    Fatal { error: String },
    /// A child was forked; its pidfd rides along.
    Spawned {
        id: u64,
        /// Pid inside the zygote's pid namespace, for logs.
        pid: i32,
        /// The zygote's peak RSS, for recycling on growth.
        rss_kb: u64,
    },
    /// The fork failed.
    SpawnFailed { id: u64, error: String },
    /// A child was reaped (`wait4`): the kernel's word on how it ended.
    Exit(ExitReport),
}

/// What the zygote said when it became ready.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyInfo {
    /// The zygote's pid (1 in its namespace).
    #[serde(default)]
    pub pid: i32,
    /// The zygote's peak RSS after preloading: the baseline for recycling on growth.
    #[serde(default)]
    pub rss_kb: u64,
    /// The interpreter's version.
    pub python: String,
    /// How many preload modules were imported.
    pub preloaded: u64,
    /// Preload modules that failed, with the reason.
    pub preload_failed: Vec<String>,
    /// Why the profile's warm-up failed in the zygote (children then skip the rehearsal).
    #[serde(default)]
    pub warmup_error: Option<String>,
    /// A warm-up ran cleanly in the zygote, so its children have one to rehearse.
    #[serde(default)]
    pub rehearsal: bool,
    /// The lockdown library's report of what it prepared (free-form, for logs and doctor).
    pub lockdown: serde_json::Value,
}

/// A reaped child's wait status and resource usage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitReport {
    /// The run id of the spawn.
    pub id: u64,
    /// Pid inside the zygote's pid namespace.
    pub pid: i32,
    /// `WEXITSTATUS`, when it exited.
    pub exit_code: Option<i32>,
    /// `WTERMSIG`, when a signal ended it.
    pub signal: Option<i32>,
    /// User CPU seconds.
    pub utime: f64,
    /// System CPU seconds.
    pub stime: f64,
    /// Peak RSS (KiB).
    pub maxrss_kb: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_has_the_documented_shape() {
        let spawn = ToZygote::Spawn(SpawnRequest {
            id: 7,
            uid: 3,
            gid: 3,
            tmpfs_bytes: 1024,
            rlimits: RlimitParams {
                cpu_seconds: 2,
                fsize_bytes: 1024,
                nofile: 64,
                nproc: 8,
                as_bytes: None,
            },
            own_pid_namespace: true,
            floor: false,
        });
        let json = serde_json::to_value(&spawn).unwrap();
        assert_eq!(json["op"], "spawn");
        assert_eq!(json["id"], 7);
        assert_eq!(json["rlimits"]["nofile"], 64);
        assert_eq!(json["own_pid_namespace"], true);
        let back: ToZygote = serde_json::from_value(json).unwrap();
        assert_eq!(back, spawn);
        assert_eq!(
            serde_json::to_string(&ToZygote::Shutdown {}).unwrap(),
            r#"{"op":"shutdown"}"#
        );
    }

    #[test]
    fn events_decode_strictly() {
        let exit: FromZygote = serde_json::from_str(
            r#"{"op":"exit","id":1,"pid":2,"exit_code":0,"signal":null,"utime":0.1,"stime":0.0,"maxrss_kb":9}"#,
        )
        .unwrap();
        assert!(matches!(exit, FromZygote::Exit(ExitReport { id: 1, .. })));
        for bad in [
            r#"{"op":"exit","id":1}"#,
            r#"{"op":"spawned","id":1,"pid":2,"rss_kb":3,"extra":1}"#,
            r#"{"op":"nonsense","id":1}"#,
            r#"{"id":1}"#,
            r#"{"op":"spawned","id":-1,"pid":2,"rss_kb":3}"#,
        ] {
            assert!(serde_json::from_str::<FromZygote>(bad).is_err(), "{bad}");
        }
    }
}
