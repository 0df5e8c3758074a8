//! Seccomp policy: reviewed data in `policy/<arch>.json` (seccompiler's JSON format, a comment on
//! every rule naming who needs it), compiled with seccompiler, plus one hand-written guard.
//!
//! Four filters per architecture:
//! - `zygote`: a denylist (mismatch allow, match kill_process) of what neither the zygote nor
//!   its children ever need: ptrace, bpf, kexec, modules, keyrings, perf, userfaultfd,
//!   io_uring, host clock and power. Children inherit it, so these are the calls that kill.
//! - `child_clone3`: clone3 → ENOSYS, everything else allowed. glibc's pthread_create then falls
//!   back to clone(2), whose flags the allowlist can inspect (clone3 keeps them in memory).
//! - `child`: the allowlist (mismatch EPERM, so Python raises PermissionError) of what a
//!   locked-down CPython running stdlib, numpy and pandas code needs.
//! - `child_processes`: `child` for a profile with `processes` (DESIGN §3): it `extends` `child`
//!   (see [`document`]) and rules clone without namespace flags, exec, wait and session calls.
//!   The run is PID 1 of its own pid namespace and landlock confines what may be executed.
//!
//! Order matters. The kernel runs every installed filter, most recent first, and keeps the
//! highest-precedence action (KILL > TRAP > ERRNO > … > ALLOW); between two ERRNO results the
//! first seen, i.e. the most recently installed, wins. `child` refuses seccomp(2) and the
//! no_new_privs prctl, so it must be installed last: [`child_filters`] returns
//! `[child_clone3, child]`. `child` is then evaluated first, so it must not answer clone3 with
//! its own EPERM (that would be the first ERRNO seen and win): it lists clone3 as allowed, and
//! the only non-allow verdict left for clone3 is child_clone3's ENOSYS.
//!
//! `child` is installed in every child, so its cost matters: [`compile_dispatched`] rebuilds
//! seccompiler's linear chain as a binary search on the syscall number (same verdicts, checked
//! against seccompiler's program on every syscall number in a differential test), which cuts
//! its install from ~400 µs to ~130 µs here.
//!
//! [`zygote_filters`] adds the x32 guard ([`x32_guard`]): seccompiler's architecture check accepts
//! x32 calls (same AUDIT_ARCH as x86_64, syscall number | 0x40000000), which the denylist would
//! then allow under other numbers.

pub use seccompiler::{sock_filter, BpfProgram};
use seccompiler::{BpfMap, TargetArch};

mod dispatch;
mod x32;
pub use dispatch::{check_jumps, compile_dispatched};
pub use x32::x32_guard;

/// The policy file of one architecture.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Architecture the file's syscall names are resolved for.
    pub arch: TargetArch,
    /// File name under `policy/`, for error messages.
    pub file: &'static str,
    /// The JSON itself, embedded at build time.
    pub json: &'static str,
}

/// Every policy file shipped; tests compile all of them on any host.
pub const POLICIES: [Policy; 2] = [
    Policy {
        arch: TargetArch::x86_64,
        file: "policy/x86_64.json",
        json: include_str!("../policy/x86_64.json"),
    },
    Policy {
        arch: TargetArch::aarch64,
        file: "policy/aarch64.json",
        json: include_str!("../policy/aarch64.json"),
    },
];

/// Filter names inside each policy file.
pub const ZYGOTE: &str = "zygote";
/// See the module documentation.
pub const CHILD_CLONE3: &str = "child_clone3";
/// See the module documentation.
pub const CHILD: &str = "child";
/// See the module documentation.
pub const CHILD_PROCESSES: &str = "child_processes";

/// Compiling or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// No policy file for the architecture this library was built for.
    #[error("no seccomp policy for architecture {arch}")]
    UnsupportedArch { arch: &'static str },
    /// The policy does not compile (unknown syscall name, bad JSON, identical actions…).
    #[error("{file} does not compile: {source}")]
    Compile {
        file: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    /// The policy compiles but lacks one of the three filters.
    #[error("{file} has no filter named {filter:?}")]
    MissingFilter {
        file: &'static str,
        filter: &'static str,
    },
    /// A filter `extends` one that does not exist, or is not shaped as a filter.
    #[error("{file}: {reason}")]
    Extends { file: &'static str, reason: String },
    /// The binary-search dispatch could not be built from seccompiler's output.
    #[error("{file}: building the dispatch: {reason}")]
    Dispatch { file: &'static str, reason: String },
    /// seccomp(SECCOMP_SET_MODE_FILTER) or the no_new_privs prctl before it failed.
    #[error("installing a {len}-instruction filter: {source}")]
    Apply {
        len: usize,
        #[source]
        source: seccompiler::Error,
    },
}

/// The policy for the architecture this library runs on.
pub fn host_policy() -> Result<&'static Policy, SeccompError> {
    let arch = std::env::consts::ARCH;
    let target = TargetArch::try_from(arch).map_err(|_| SeccompError::UnsupportedArch { arch })?;
    POLICIES
        .iter()
        .find(|policy| policy.arch == target)
        .ok_or(SeccompError::UnsupportedArch { arch })
}

/// The policy file as seccompiler reads it: every filter with `"extends": "<base>"` becomes
/// the base filter's actions and rules, less the base's rules for each syscall this filter
/// names, plus this filter's rules. One reviewed list stays the source of both child filters,
/// and a variant says only where it differs.
pub fn document(policy: &Policy) -> Result<serde_json::Value, SeccompError> {
    use serde_json::Value;
    let fail = |reason: String| SeccompError::Extends {
        file: policy.file,
        reason,
    };
    let mut doc: Value =
        serde_json::from_str(policy.json).map_err(|e| fail(format!("json: {e}")))?;
    let Some(filters) = doc.as_object_mut() else {
        return Err(fail("the document is not an object".into()));
    };
    let variants: Vec<(String, String)> = filters
        .iter()
        .filter_map(|(name, filter)| {
            let base = filter.get("extends")?.as_str()?;
            Some((name.clone(), base.to_string()))
        })
        .collect();
    let is_variant = |name: &str| variants.iter().any(|(variant, _)| variant == name);
    for (name, base_name) in &variants {
        let base = filters
            .get(base_name)
            .filter(|_| !is_variant(base_name))
            .ok_or_else(|| fail(format!("{name} extends {base_name:?}, no plain filter")))?
            .clone();
        let rules = |filter: &Value| filter["filter"].as_array().cloned().unwrap_or_default();
        let own = rules(&filters[name]);
        let named: Vec<&Value> = own.iter().map(|rule| &rule["syscall"]).collect();
        let mut merged: Vec<Value> = rules(&base)
            .into_iter()
            .filter(|rule| !named.contains(&&rule["syscall"]))
            .collect();
        merged.extend(own.iter().cloned());
        let expanded = serde_json::json!({
            "mismatch_action": base["mismatch_action"],
            "match_action": base["match_action"],
            "filter": merged,
        });
        filters.insert(name.clone(), expanded);
    }
    Ok(doc)
}

/// Compile every filter of `policy`.
pub fn compile(policy: &Policy) -> Result<BpfMap, SeccompError> {
    let doc = document(policy)?;
    seccompiler::compile_from_json(doc.to_string().as_bytes(), policy.arch).map_err(|source| {
        SeccompError::Compile {
            file: policy.file,
            source,
        }
    })
}

fn take(
    map: &mut BpfMap,
    policy: &Policy,
    filter: &'static str,
) -> Result<BpfProgram, SeccompError> {
    map.remove(filter).ok_or(SeccompError::MissingFilter {
        file: policy.file,
        filter,
    })
}

/// The zygote's programs, in installation order: the x32 guard (x86_64 only), then `zygote`.
/// zygote-init installs them after PR_SET_NO_NEW_PRIVS, before exec'ing Python.
pub fn zygote_filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let policy = host_policy()?;
    let mut map = compile(policy)?;
    let mut programs = Vec::with_capacity(2);
    if policy.arch == TargetArch::x86_64 {
        programs.push(x32_guard());
    }
    programs.push(take(&mut map, policy, ZYGOTE)?);
    Ok(programs)
}

/// The child's programs, in installation order: `child_clone3`, then `child` — or
/// `child_processes` for a profile that lets a run start processes (see the module
/// documentation for why this order makes clone3 fail with ENOSYS). The last one gets a
/// binary-search dispatch ([`compile_dispatched`]): same verdicts as seccompiler's linear
/// chain, a fraction of the per-child install cost.
pub fn child_filters(processes: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let policy = host_policy()?;
    let mut map = compile(policy)?;
    let last = if processes { CHILD_PROCESSES } else { CHILD };
    Ok(vec![
        take(&mut map, policy, CHILD_CLONE3)?,
        compile_dispatched(policy, last)?,
    ])
}

/// Install one program on the calling thread. Sets PR_SET_NO_NEW_PRIVS first (a no-op when it is
/// already set), so it works both before and after the caller set it.
pub fn apply(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(|source| SeccompError::Apply {
        len: prog.len(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &'static str) -> Policy {
        Policy {
            arch: TargetArch::x86_64,
            file: "test.json",
            json,
        }
    }

    #[test]
    fn a_variant_replaces_the_rules_of_the_syscalls_it_names_and_keeps_the_rest() {
        let doc = document(&policy(
            r#"{"base": {"mismatch_action": {"errno": 1}, "match_action": "allow", "filter": [
                   {"syscall": "read"}, {"syscall": "clone", "args": [1]}]},
                "variant": {"extends": "base", "comment": "c", "filter": [
                   {"syscall": "clone", "args": [2]}, {"syscall": "execve"}]}}"#,
        ))
        .unwrap();
        assert_eq!(
            doc["variant"],
            serde_json::json!({"mismatch_action": {"errno": 1}, "match_action": "allow",
                "filter": [{"syscall": "read"}, {"syscall": "clone", "args": [2]},
                           {"syscall": "execve"}]})
        );
        assert_eq!(doc["base"]["filter"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_variant_of_a_missing_or_variant_filter_is_an_error() {
        for json in [
            r#"{"v": {"extends": "nothing", "filter": []}}"#,
            r#"{"a": {"mismatch_action": "allow", "match_action": "kill_process", "filter": []},
                "b": {"extends": "a", "filter": []}, "c": {"extends": "b", "filter": []}}"#,
        ] {
            assert!(
                matches!(document(&policy(json)), Err(SeccompError::Extends { .. })),
                "{json}"
            );
        }
    }
}
