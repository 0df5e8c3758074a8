//! The daemon's configuration: a TOML file, or the built-in default when there is none.
//!
//! Every key is optional; `Config::default()` is a working single-profile setup that runs the
//! host's `python3`. docs/CONFIG.md lists the keys; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tenants::TenantConfig;

/// Name of the profile a request gets when it names none.
pub const DEFAULT_PROFILE: &str = "default";

/// A profile's warm-up unless it sets its own: what most runs do — compile, print, format, a
/// little JSON and arithmetic, an exception caught — and, when the zygote preloaded them, a
/// small numpy and pandas computation.
pub const DEFAULT_WARMUP: &str = r#"import json, sys
data = {"values": [i * 1.5 for i in range(20)], "name": "warm-up"}
print(json.dumps(data, sort_keys=True))
print(sum(data["values"]), len(data), f"{3.14159:.2f}", file=sys.stderr)
try:
    int("x")
except ValueError as err:
    print(repr(err))
if "numpy" in sys.modules:
    import numpy as np
    arr = np.arange(6.0).reshape(2, 3)
    print(arr.sum(), arr.mean(axis=0), arr @ arr.T)
if "pandas" in sys.modules:
    import pandas as pd
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    print(df.sum().iloc[0], df["a"].mean(), df)
"#;

/// The stdlib modules a `default` zygote imports before it forks anything, so that a child
/// pays nothing for them. Missing ones are logged and skipped.
pub const DEFAULT_PRELOAD: &[&str] = &[
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "binascii",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "collections.abc",
    "concurrent.futures",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "math",
    "numbers",
    "operator",
    "pathlib",
    "pprint",
    "queue",
    "random",
    "re",
    "secrets",
    "shutil",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "tarfile",
    "tempfile",
    "textwrap",
    "time",
    "tokenize",
    "traceback",
    "typing",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the daemon listens; `--socket` and `SANDFORK_SOCKET` override it.
    pub socket: Option<PathBuf>,
    /// Where the daemon writes the files its zygotes read (zygote.py, the lockdown library);
    /// bind-mounted read-only into every jail.
    pub runtime_dir: Option<PathBuf>,
    /// Concurrent runs. Each slot owns one uid, so no two live children share a uid.
    pub slots: Option<u32>,
    /// Runs that may wait for a slot, per profile; more are answered `busy` at once. One
    /// tenant may hold at most three quarters of the places.
    pub queue_per_profile: u32,
    /// Host uid (and gid) that uid 0 of every zygote's user namespace maps to; slot `i` runs as
    /// host uid `uid_base + 1 + i`. The range must belong to no real user.
    pub uid_base: u32,
    /// Largest frame the daemon accepts or sends.
    pub max_frame_len: u32,
    /// How long in-flight runs may take to finish after SIGTERM before they are killed.
    pub shutdown_grace_ms: u64,
    /// Log format on stderr: "text" or "json" (one JSON object per line, for log shippers).
    pub log_format: LogFormat,
    /// Put each run's code text in its audit record (default: only the code's SHA-256).
    pub audit_code: bool,
    /// Limits every profile starts from.
    pub limits: Limits,
    /// The profiles, by name. Without any, a `default` profile is created.
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// Who may run code, and under which policy (`[[tenants]]`; see `crate::tenants`). The
    /// daemon's own uid is served as the built-in tenant `local` unless one of these claims it.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Uids besides the daemon's own that may act on behalf of a tenant (the HTTP shim's user).
    #[serde(default)]
    pub proxy_uids: Vec<u32>,
    /// Sessions' timeouts (`[sessions]`); how many a profile may hold is its `max_sessions`.
    pub sessions: SessionsConfig,
    /// This machine's name among several behind one load balancer (1–32 of `a-z`, `0-9`, `-`).
    /// Session ids then carry it (`s_<node>_<hex>`), so the balancer can send a session's
    /// requests to the machine that holds it by matching the id in the path. `--node` and
    /// `SANDFORK_NODE` override it.
    pub node: Option<String>,
    /// snekbox's `POST /eval` on the HTTP shim (`[eval]`): which profile runs a request, by its
    /// `executable_path`.
    pub eval: EvalConfig,
}

/// `[eval]`: snekbox callers name an interpreter by path (`executable_path`); here each path
/// names a profile. A path not listed is refused (400), as snekbox refuses a path it cannot
/// run, without telling whether it exists on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// The profile of a request without `executable_path`; unset, the daemon's default profile
    /// (as for a run that names none).
    pub profile: Option<String>,
    /// `executable_path` → profile.
    pub executables: BTreeMap<String, String>,
}

/// How long sessions live (`[sessions]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// A session without a cell this long ends, unless its opener asked for less (or more, up
    /// to `max_idle_timeout_s`).
    pub idle_timeout_s: u64,
    /// The longest idle timeout a session may ask for.
    pub max_idle_timeout_s: u64,
    /// A session ends this long after it opened, whatever it is doing. Its CPU time over its
    /// whole life is bounded by the same number of seconds (RLIMIT_CPU).
    pub max_lifetime_s: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            idle_timeout_s: 600,
            max_idle_timeout_s: 3600,
            max_lifetime_s: 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            runtime_dir: None,
            slots: None,
            queue_per_profile: 128,
            uid_base: 200_000,
            max_frame_len: sandfork_protocol::DEFAULT_MAX_FRAME_LEN,
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
            audit_code: false,
            limits: Limits::default(),
            profiles: BTreeMap::new(),
            tenants: Vec::new(),
            proxy_uids: Vec::new(),
            sessions: SessionsConfig::default(),
            node: None,
            eval: EvalConfig::default(),
        }
    }
}

/// How the daemon writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Resource limits of one run. A profile may override any of them; a request may only lower
/// the ones the protocol exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline, enforced by the supervisor through the child's pidfd.
    pub timeout_ms: u64,
    /// Address-space ceiling (RLIMIT_AS) in MiB until cgroup slots exist.
    pub memory_mb: u64,
    /// Bytes kept per output stream; more stops the run with status `output_limit`.
    pub output_bytes: u64,
    /// Largest accepted program text.
    pub code_bytes: u64,
    /// Largest accepted stdin.
    pub stdin_bytes: u64,
    /// Size of the run's private tmpfs working directory (also its largest file).
    pub tmpfs_mb: u64,
    /// Processes and threads of the run's uid (RLIMIT_NPROC).
    pub pids: u64,
    /// Open files (RLIMIT_NOFILE).
    pub nofile: u64,
    /// Input files a request may bring, and output files a run may return.
    pub max_files: u64,
    /// Total bytes of a request's input files.
    pub files_bytes: u64,
    /// CPU seconds (RLIMIT_CPU); defaults to the wall-clock timeout rounded up plus one, so a
    /// single-threaded loop meets the wall deadline (`timeout`) first and only a program using
    /// several cores at once ends with `cpu_limit`.
    pub cpu_seconds: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 15_000,
            memory_mb: 700,
            output_bytes: 1024 * 1024,
            code_bytes: 1024 * 1024,
            stdin_bytes: 1024 * 1024,
            tmpfs_mb: 64,
            pids: 64,
            nofile: 256,
            max_files: 100,
            files_bytes: 8 * 1024 * 1024,
            cpu_seconds: None,
        }
    }
}

impl Limits {
    /// CPU seconds allowed: the configured value, or the wall timeout rounded up plus one.
    pub fn cpu_seconds(&self) -> u64 {
        self.cpu_seconds
            .unwrap_or_else(|| self.timeout_ms.div_ceil(1000) + 1)
    }
}

/// The most processes (and threads) a profile may let one run have at once.
pub const MAX_PROCESSES: u64 = 4096;

/// One profile: an interpreter, what its zygotes preload, and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// Interpreter command or path (a venv's `bin/python` works; shims are resolved).
    pub python: String,
    /// Modules imported by the zygote before it forks. The entry `@stdlib` stands for the
    /// default stdlib list (`DEFAULT_PRELOAD`).
    pub preload: Vec<String>,
    /// Zygotes kept running for this profile.
    pub zygotes: u32,
    /// Children forked and locked down ahead of requests (0: fork per request).
    pub warm_children: u32,
    /// A warm child that waited longer than this is discarded and replaced.
    pub warm_idle_ms: u64,
    /// A zygote is replaced by a fresh one after this many forks.
    pub zygote_max_forks: u64,
    /// … or once its peak RSS has grown this much beyond what it was after preloading …
    pub zygote_max_rss_growth_mb: u64,
    /// … or once it has served this long (seconds). Every child of a zygote shares its hash
    /// seed and address-space layout (fork copies them); a fresh zygote draws new ones, so this
    /// bounds how long any one layout is in use.
    pub zygote_max_age_s: u64,
    /// Trusted Python code the zygote runs twice before it forks anything (filling lazy
    /// imports and caches for every child) and a warm child runs once while it waits in the
    /// pool with no request for it, output discarded (taking the copy-on-write faults of a
    /// typical run before the request arrives). Empty: no warm-up.
    pub warmup: String,
    /// Sessions this profile may hold at once. Each holds a uid and a cgroup of its own, busy
    /// or idle, so this many identities are set aside for them; 0 disables sessions here.
    pub max_sessions: u32,
    /// 0 (the default): a run cannot start processes (`subprocess`, `multiprocessing`,
    /// `os.fork` fail with PermissionError). N > 0: it can, with at most N processes and threads
    /// alive at once (the kernel counts both as tasks; N is the run's `pids` ceiling), each run
    /// as PID 1 of a pid namespace of its own, with a private `/dev/shm`, exec only beneath the
    /// interpreter itself, and the rest of the sandbox unchanged (DESIGN §3).
    pub processes: u64,
    /// Per-profile overrides of the global limits.
    pub limits: LimitOverrides,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            python: "python3".into(),
            preload: DEFAULT_PRELOAD.iter().map(|s| s.to_string()).collect(),
            zygotes: 1,
            warm_children: 2,
            warm_idle_ms: 60_000,
            zygote_max_forks: 10_000,
            zygote_max_rss_growth_mb: 256,
            zygote_max_age_s: 3600,
            warmup: DEFAULT_WARMUP.into(),
            max_sessions: 4,
            processes: 0,
            limits: LimitOverrides::default(),
        }
    }
}

/// Optional per-profile limit values; unset ones come from `[limits]`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub output_bytes: Option<u64>,
    pub code_bytes: Option<u64>,
    pub stdin_bytes: Option<u64>,
    pub tmpfs_mb: Option<u64>,
    pub pids: Option<u64>,
    pub nofile: Option<u64>,
    pub max_files: Option<u64>,
    pub files_bytes: Option<u64>,
    pub cpu_seconds: Option<u64>,
}

impl LimitOverrides {
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            output_bytes: self.output_bytes.unwrap_or(base.output_bytes),
            code_bytes: self.code_bytes.unwrap_or(base.code_bytes),
            stdin_bytes: self.stdin_bytes.unwrap_or(base.stdin_bytes),
            tmpfs_mb: self.tmpfs_mb.unwrap_or(base.tmpfs_mb),
            pids: self.pids.unwrap_or(base.pids),
            nofile: self.nofile.unwrap_or(base.nofile),
            max_files: self.max_files.unwrap_or(base.max_files),
            files_bytes: self.files_bytes.unwrap_or(base.files_bytes),
            cpu_seconds: self.cpu_seconds.or(base.cpu_seconds),
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validated()
    }

    /// The file at `path`, or the built-in default when there is none.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None => Config::default().validated(),
        }
    }

    /// Fills in the default profile and checks values that would fail later in obscure ways.
    pub fn validated(mut self) -> Result<Config, ConfigError> {
        if self.profiles.is_empty() {
            self.profiles
                .insert(DEFAULT_PROFILE.to_string(), ProfileConfig::default());
        }
        if self.max_frame_len < 1024 || self.max_frame_len > sandfork_protocol::MAX_FRAME_LEN_LIMIT
        {
            return Err(ConfigError::Invalid(format!(
                "max_frame_len must be between 1024 and {}",
                sandfork_protocol::MAX_FRAME_LEN_LIMIT
            )));
        }
        if self.uid_base == 0 {
            return Err(ConfigError::Invalid(
                "uid_base must not be 0: the jail's root must not be the host's root".into(),
            ));
        }
        if self.queue_per_profile == 0 {
            return Err(ConfigError::Invalid(
                "queue_per_profile must be at least 1".into(),
            ));
        }
        if self.slots == Some(0) {
            return Err(ConfigError::Invalid("slots must be at least 1".into()));
        }
        if let Some(node) = &self.node {
            check_node_name(node).map_err(ConfigError::Invalid)?;
        }
        for (name, profile) in &self.profiles {
            if profile.warm_children > 0 && profile.warm_idle_ms < 100 {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: warm_idle_ms must be at least 100"
                )));
            }
            if profile.zygote_max_forks == 0 {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: zygote_max_forks must be at least 1"
                )));
            }
            if profile.zygote_max_age_s < 10 {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: zygote_max_age_s must be at least 10"
                )));
            }
            if profile.zygotes == 0 {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: zygotes must be at least 1"
                )));
            }
            if profile.processes > MAX_PROCESSES {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: processes must be at most {MAX_PROCESSES}"
                )));
            }
            if profile.processes > 0 && profile.limits.pids.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: set processes or limits.pids, not both (processes is the run's pids ceiling)"
                )));
            }
            let limits = self.profile_limits(profile);
            if limits.timeout_ms == 0 || limits.output_bytes == 0 || limits.tmpfs_mb == 0 {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: timeout_ms, output_bytes and tmpfs_mb must be positive"
                )));
            }
            // A result carries both streams, main()'s value and the output files (each capped
            // at output_bytes) in one frame, with room for the rest of it.
            if 4 * limits.output_bytes + 64 * 1024 > u64::from(self.max_frame_len) {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: 4 × output_bytes ({}) must fit in max_frame_len ({}) with 64 KiB to spare",
                    limits.output_bytes, self.max_frame_len
                )));
            }
            if limits.code_bytes + limits.stdin_bytes + limits.files_bytes + 64 * 1024
                > u64::from(self.max_frame_len)
            {
                return Err(ConfigError::Invalid(format!(
                    "profile {name}: code_bytes + stdin_bytes + files_bytes must fit in max_frame_len ({}) with 64 KiB to spare",
                    self.max_frame_len
                )));
            }
        }
        for profile in self
            .eval
            .profile
            .iter()
            .chain(self.eval.executables.values())
        {
            if !self.profiles.contains_key(profile) {
                return Err(ConfigError::Invalid(format!(
                    "eval: profile {profile:?} is not configured"
                )));
            }
        }
        let sessions = self.sessions;
        if sessions.idle_timeout_s == 0
            || sessions.idle_timeout_s > sessions.max_idle_timeout_s
            || sessions.max_lifetime_s < 10
        {
            return Err(ConfigError::Invalid(
                "sessions: need 0 < idle_timeout_s <= max_idle_timeout_s and max_lifetime_s >= 10"
                    .into(),
            ));
        }
        // Tenants: names, key hashes, uids, policies (the daemon and the shim both load this).
        crate::tenants::validate(&self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(self)
    }

    /// Concurrent-run slots: configured, or two per core.
    pub fn slot_count(&self) -> u32 {
        self.slots.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (2 * cores as u32).max(1)
        })
    }

    /// Identities (uids) needed: one per concurrent run, plus one per warm child and one per
    /// session of every profile.
    pub fn identity_count(&self) -> u32 {
        self.slot_count()
            + self
                .profiles
                .values()
                .map(|p| p.warm_children + p.max_sessions)
                .sum::<u32>()
    }

    /// A profile's preload list with `@stdlib` expanded, without duplicates, in order.
    pub fn preload_modules(profile: &ProfileConfig) -> Vec<String> {
        let mut modules: Vec<String> = Vec::new();
        for entry in &profile.preload {
            let expanded: Vec<String> = if entry == "@stdlib" {
                DEFAULT_PRELOAD.iter().map(|m| m.to_string()).collect()
            } else {
                vec![entry.clone()]
            };
            for module in expanded {
                if !modules.contains(&module) {
                    modules.push(module);
                }
            }
        }
        modules
    }

    /// Effective limits of a profile: `processes`, when set, is its `pids` ceiling.
    pub fn profile_limits(&self, profile: &ProfileConfig) -> Limits {
        let mut limits = profile.limits.apply(self.limits);
        if profile.processes > 0 {
            limits.pids = profile.processes;
        }
        limits
    }
}

/// The default socket path: `/run/sandfork/sandfork.sock` for root, `$XDG_RUNTIME_DIR/sandfork.sock`
/// otherwise; `SANDFORK_SOCKET` overrides both.
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SANDFORK_SOCKET") {
        return PathBuf::from(path);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/sandfork/sandfork.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("sandfork.sock"),
        None => std::env::temp_dir().join(format!("sandfork-{}.sock", nix::unistd::getuid())),
    }
}

/// Checks a node name (the `node` key, `--node`): 1–32 of `a-z`, `0-9`, `-`, so it fits in a
/// session id and a load balancer's pattern without quoting.
pub fn check_node_name(node: &str) -> Result<(), String> {
    let fits = (1..=32).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if fits {
        Ok(())
    } else {
        Err(format!(
            "node {node:?} must be 1 to 32 of a-z, 0-9 and '-' (it goes into session ids)"
        ))
    }
}

#[cfg(test)]
mod tests;
