//! The jail spec: the one JSON argument the supervisor passes to zygote-init, and its validation.
//!
//! Parsing is strict (`deny_unknown_fields`, every field required but `Bind::dest`) and
//! validation is pure, so both run before zygote-init touches any kernel state. The supervisor
//! builds it (`src/pool.rs`), zygote-init parses it: this is its only definition.

use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most lines the kernel accepts in one uid_map/gid_map write.
pub const MAX_ID_MAPPINGS: usize = 340;
/// Longest hostname `sethostname` accepts (HOST_NAME_MAX).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Everything zygote-init needs to build one zygote's jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// uid ranges of the new user namespace: 0 is the zygote, 1..K the run slots.
    pub uid_map: Vec<IdMapping>,
    /// gid ranges of the new user namespace, same layout as `uid_map`.
    pub gid_map: Vec<IdMapping>,
    /// Hostname inside the new UTS namespace, so user code cannot learn the host's.
    pub hostname: String,
    /// Descriptors (>= 3) the zygote inherits: the control socket first. All others are closed.
    pub keep_fds: Vec<RawFd>,
    /// Size cap of the tmpfs that becomes `/`; it only holds mount points, dirs and symlinks.
    pub root_size_bytes: u64,
    /// Host files and directories the interpreter needs, bound read-only.
    pub binds: Vec<Bind>,
    /// Symlinks created in the new root (the ELF interpreter chain on merged-/usr hosts).
    pub symlinks: Vec<Symlink>,
    /// Host device nodes bound into the new root (no mknod in a user namespace).
    pub devices: Vec<PathBuf>,
    /// Empty directories (0755) created in the new root, e.g. the per-run tmpfs mount point.
    pub dirs: Vec<PathBuf>,
    /// Working directory of the zygote inside the new root.
    pub cwd: PathBuf,
    /// Install the zygote seccomp filters; off only for debugging a filter.
    pub seccomp: bool,
    /// The program that replaces zygote-init as PID 1 of the jail.
    pub exec: ExecSpec,
}

/// One line of a uid_map or gid_map: `count` ids from `inside` map to `outside` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMapping {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host (in zygote-init's own user namespace).
    pub outside: u32,
    /// Length of the range; > 0.
    pub count: u32,
}

/// A read-only bind mount of a host path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// Host path (opened before the user namespace exists, so /root is fine).
    pub path: PathBuf,
    /// Where it appears in the new root; defaults to `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<PathBuf>,
}

impl Bind {
    /// The path inside the new root.
    pub fn dest(&self) -> &Path {
        self.dest.as_deref().unwrap_or(&self.path)
    }
}

/// A symlink `path -> target` in the new root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    /// Absolute path of the link inside the new root.
    pub path: PathBuf,
    /// Link contents, stored verbatim (relative targets resolve inside the new root).
    pub target: PathBuf,
}

/// The final `execve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Absolute path of the interpreter inside the new root (the real binary, not a shim).
    pub path: PathBuf,
    /// argv, including `argv[0]`.
    pub argv: Vec<String>,
    /// The complete environment, as (name, value) pairs; nothing is inherited.
    pub env: Vec<(String, String)>,
}

/// Why a spec was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("spec is not valid JSON for this schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{field}: path {path:?} is not absolute")]
    RelativePath { field: &'static str, path: PathBuf },
    #[error("{field}: path {path:?} contains '..'")]
    ParentComponent { field: &'static str, path: PathBuf },
    #[error("{field}: path {path:?} is the root itself")]
    IsRoot { field: &'static str, path: PathBuf },
    #[error("{field}: {what} contains a NUL byte")]
    Nul { field: &'static str, what: String },
    #[error("{which}: no mappings")]
    EmptyMap { which: &'static str },
    #[error("{which}: more than {MAX_ID_MAPPINGS} mappings")]
    TooManyMappings { which: &'static str },
    #[error("{which}[{index}]: count must be > 0")]
    ZeroCount { which: &'static str, index: usize },
    #[error("{which}[{index}]: range overflows u32")]
    MapOverflow { which: &'static str, index: usize },
    #[error(
        "{which}: rootless, the only possible map is our own id: \
         [{{\"inside\": 0, \"outside\": {id}, \"count\": 1}}]"
    )]
    RootlessMap { which: &'static str, id: u32 },
    #[error("keep_fds: {fd} is below 3 (stdio is always kept)")]
    KeepFdTooLow { fd: RawFd },
    #[error("hostname: must be 1..={MAX_HOSTNAME_LEN} bytes, got {len}")]
    HostnameLength { len: usize },
    #[error("root_size_bytes: must be > 0")]
    ZeroRootSize,
    #[error("exec.argv: empty (argv[0] is required)")]
    EmptyArgv,
    #[error("exec.env: name {name:?} is empty or contains '='")]
    EnvName { name: String },
}

impl JailSpec {
    /// Parses and validates the JSON argument.
    pub fn parse(json: &str) -> Result<JailSpec, SpecError> {
        let spec: JailSpec = serde_json::from_str(json)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every invariant the later steps rely on.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_map("uid_map", &self.uid_map)?;
        check_map("gid_map", &self.gid_map)?;
        if self.hostname.is_empty() || self.hostname.len() > MAX_HOSTNAME_LEN {
            return Err(SpecError::HostnameLength {
                len: self.hostname.len(),
            });
        }
        check_nul("hostname", &self.hostname)?;
        if let Some(&fd) = self.keep_fds.iter().find(|&&fd| fd < 3) {
            return Err(SpecError::KeepFdTooLow { fd });
        }
        if self.root_size_bytes == 0 {
            return Err(SpecError::ZeroRootSize);
        }
        for bind in &self.binds {
            check_path("binds.path", &bind.path)?;
            check_inside_path("binds.dest", bind.dest())?;
        }
        for link in &self.symlinks {
            check_inside_path("symlinks.path", &link.path)?;
            check_nul("symlinks.target", &link.target.to_string_lossy())?;
        }
        for device in &self.devices {
            check_inside_path("devices", device)?;
        }
        for dir in &self.dirs {
            check_inside_path("dirs", dir)?;
        }
        check_path("cwd", &self.cwd)?;
        self.exec.validate()
    }

    /// Rootless (zygote-init not running as root): an unprivileged process may write only a
    /// one-line map of its own effective id, so the spec must say exactly that. Checked here so
    /// a supervisor that built a root-mode spec fails at step 1 with the reason, not at step 3
    /// with EPERM.
    pub fn validate_rootless(&self, euid: u32, egid: u32) -> Result<(), SpecError> {
        for (which, map, id) in [
            ("uid_map", &self.uid_map, euid),
            ("gid_map", &self.gid_map, egid),
        ] {
            let own = IdMapping {
                inside: 0,
                outside: id,
                count: 1,
            };
            if map.as_slice() != [own] {
                return Err(SpecError::RootlessMap { which, id });
            }
        }
        Ok(())
    }
}

impl ExecSpec {
    fn validate(&self) -> Result<(), SpecError> {
        check_path("exec.path", &self.path)?;
        if self.argv.is_empty() {
            return Err(SpecError::EmptyArgv);
        }
        for arg in &self.argv {
            check_nul("exec.argv", arg)?;
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                return Err(SpecError::EnvName { name: name.clone() });
            }
            check_nul("exec.env", name)?;
            check_nul("exec.env", value)?;
        }
        Ok(())
    }
}

fn check_map(which: &'static str, map: &[IdMapping]) -> Result<(), SpecError> {
    if map.is_empty() {
        return Err(SpecError::EmptyMap { which });
    }
    if map.len() > MAX_ID_MAPPINGS {
        return Err(SpecError::TooManyMappings { which });
    }
    for (index, line) in map.iter().enumerate() {
        if line.count == 0 {
            return Err(SpecError::ZeroCount { which, index });
        }
        let end_inside = line.inside.checked_add(line.count - 1);
        let end_outside = line.outside.checked_add(line.count - 1);
        if end_inside.is_none() || end_outside.is_none() {
            return Err(SpecError::MapOverflow { which, index });
        }
    }
    Ok(())
}

/// Absolute, free of `..` and NUL.
fn check_path(field: &'static str, path: &Path) -> Result<(), SpecError> {
    check_nul(field, &path.to_string_lossy())?;
    if !path.is_absolute() {
        return Err(SpecError::RelativePath {
            field,
            path: path.to_owned(),
        });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::ParentComponent {
            field,
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// A path created inside the new root: like `check_path`, and not `/` itself.
fn check_inside_path(field: &'static str, path: &Path) -> Result<(), SpecError> {
    check_path(field, path)?;
    if path.file_name().is_none() {
        return Err(SpecError::IsRoot {
            field,
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn check_nul(field: &'static str, text: &str) -> Result<(), SpecError> {
    if text.contains('\0') {
        return Err(SpecError::Nul {
            field,
            what: format!("{:?}", text.replace('\0', "\\0")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> &'static str {
        r#"{
          "uid_map": [{"inside": 0, "outside": 200000, "count": 33}],
          "gid_map": [{"inside": 0, "outside": 200000, "count": 33}],
          "hostname": "sandfork",
          "keep_fds": [3],
          "root_size_bytes": 16777216,
          "binds": [{"path": "/root/.pyenv/versions/3.11.7"}, {"path": "/usr/lib/x86_64-linux-gnu"},
                    {"path": "/etc/ld.so.cache"}, {"path": "/run/sandfork/runtime", "dest": "/sandfork"}],
          "symlinks": [{"path": "/lib64", "target": "usr/lib64"},
                       {"path": "/usr/lib64/ld-linux-x86-64.so.2",
                        "target": "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}],
          "devices": ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"],
          "dirs": ["/sandbox/work"],
          "cwd": "/sandbox",
          "seccomp": true,
          "exec": {"path": "/root/.pyenv/versions/3.11.7/bin/python3.11",
                   "argv": ["python3", "-I", "-X", "utf8", "/sandfork/zygote.py"],
                   "env": [["PATH", "/usr/bin:/bin"], ["OPENBLAS_NUM_THREADS", "1"]]}
        }"#
    }

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value: serde_json::Value = serde_json::from_str(example()).unwrap();
        edit(&mut value);
        value.to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let spec = JailSpec::parse(example()).unwrap();
        assert_eq!(spec.binds[3].dest(), Path::new("/sandfork"));
        assert_eq!(
            spec.binds[0].dest(),
            Path::new("/root/.pyenv/versions/3.11.7")
        );
        assert_eq!(
            spec.exec.env[1],
            ("OPENBLAS_NUM_THREADS".into(), "1".into())
        );
        // Round trip: what a supervisor serializes is what zygote-init reads.
        let again = JailSpec::parse(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn unknown_and_missing_fields_are_rejected() {
        let unknown = with(|v| v["mounts"] = serde_json::json!([]));
        assert!(matches!(JailSpec::parse(&unknown), Err(SpecError::Json(_))));
        let missing = with(|v| {
            v.as_object_mut().unwrap().remove("cwd");
        });
        assert!(matches!(JailSpec::parse(&missing), Err(SpecError::Json(_))));
        let nested = with(|v| v["binds"][0]["ro"] = true.into());
        assert!(matches!(JailSpec::parse(&nested), Err(SpecError::Json(_))));
    }

    #[test]
    fn paths_must_be_absolute_and_free_of_dotdot() {
        let relative = with(|v| v["binds"][0]["path"] = "usr/lib".into());
        assert!(matches!(
            JailSpec::parse(&relative),
            Err(SpecError::RelativePath {
                field: "binds.path",
                ..
            })
        ));
        let dotdot = with(|v| v["dirs"][0] = "/sandbox/../etc".into());
        assert!(matches!(
            JailSpec::parse(&dotdot),
            Err(SpecError::ParentComponent { field: "dirs", .. })
        ));
        let exec = with(|v| v["exec"]["path"] = "python3".into());
        assert!(matches!(
            JailSpec::parse(&exec),
            Err(SpecError::RelativePath {
                field: "exec.path",
                ..
            })
        ));
        let root = with(|v| v["binds"][0]["dest"] = "/".into());
        assert!(matches!(
            JailSpec::parse(&root),
            Err(SpecError::IsRoot {
                field: "binds.dest",
                ..
            })
        ));
        let nul = with(|v| v["cwd"] = "/a\u{0}b".into());
        assert!(matches!(
            JailSpec::parse(&nul),
            Err(SpecError::Nul { field: "cwd", .. })
        ));
    }

    #[test]
    fn maps_need_positive_counts_without_overflow() {
        let zero = with(|v| v["uid_map"][0]["count"] = 0.into());
        assert!(matches!(
            JailSpec::parse(&zero),
            Err(SpecError::ZeroCount {
                which: "uid_map",
                index: 0
            })
        ));
        let empty = with(|v| v["gid_map"] = serde_json::json!([]));
        assert!(matches!(
            JailSpec::parse(&empty),
            Err(SpecError::EmptyMap { which: "gid_map" })
        ));
        let overflow = with(|v| v["gid_map"][0]["outside"] = u32::MAX.into());
        assert!(matches!(
            JailSpec::parse(&overflow),
            Err(SpecError::MapOverflow {
                which: "gid_map",
                ..
            })
        ));
        // The last id of a range may be u32::MAX itself.
        let edge = with(|v| {
            v["uid_map"][0]["outside"] = (u32::MAX - 32).into();
        });
        assert!(JailSpec::parse(&edge).is_ok());
    }

    #[test]
    fn rootless_specs_map_exactly_our_own_ids() {
        let own = with(|v| {
            v["uid_map"] = serde_json::json!([{"inside": 0, "outside": 1000, "count": 1}]);
            v["gid_map"] = serde_json::json!([{"inside": 0, "outside": 1001, "count": 1}]);
        });
        let spec = JailSpec::parse(&own).unwrap();
        spec.validate_rootless(1000, 1001).unwrap();
        assert!(matches!(
            spec.validate_rootless(1001, 1001),
            Err(SpecError::RootlessMap {
                which: "uid_map",
                id: 1001
            })
        ));
        assert!(matches!(
            spec.validate_rootless(1000, 1000),
            Err(SpecError::RootlessMap {
                which: "gid_map",
                ..
            })
        ));
        // The root-mode range (jail root and slots) cannot be written without privilege.
        let range = JailSpec::parse(example()).unwrap();
        let err = range.validate_rootless(200_000, 200_000).unwrap_err();
        assert!(err.to_string().contains("\"count\": 1"), "{err}");
    }

    #[test]
    fn the_rest_is_checked_too() {
        let stdio = with(|v| v["keep_fds"] = serde_json::json!([3, 1]));
        assert!(matches!(
            JailSpec::parse(&stdio),
            Err(SpecError::KeepFdTooLow { fd: 1 })
        ));
        let host = with(|v| v["hostname"] = "x".repeat(65).into());
        assert!(matches!(
            JailSpec::parse(&host),
            Err(SpecError::HostnameLength { len: 65 })
        ));
        let argv = with(|v| v["exec"]["argv"] = serde_json::json!([]));
        assert!(matches!(JailSpec::parse(&argv), Err(SpecError::EmptyArgv)));
        let env = with(|v| v["exec"]["env"][0][0] = "A=B".into());
        assert!(matches!(
            JailSpec::parse(&env),
            Err(SpecError::EnvName { .. })
        ));
        let size = with(|v| v["root_size_bytes"] = 0.into());
        assert!(matches!(
            JailSpec::parse(&size),
            Err(SpecError::ZeroRootSize)
        ));
    }
}
