//! The seccomp policy files as reviewed data: each compiles for its architecture, each rule
//! names a real syscall and says who needs it, the child allowlist leaves out what DESIGN §3
//! forbids, `child_processes` differs from `child` only by the calls a run with processes needs,
//! and the aarch64 file mirrors the x86_64 one wherever the syscall exists.

use std::collections::BTreeSet;

use sandfork_lockdown::seccomp::{
    self, Policy, CHILD, CHILD_CLONE3, CHILD_PROCESSES, POLICIES, ZYGOTE,
};
use seccompiler::TargetArch;
use serde_json::{json, Value};

/// What the child must never be allowed (DESIGN §3, §8).
const FORBIDDEN_IN_CHILD: &[&str] = &[
    "socket",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "execve",
    "execveat",
    "fork",
    "vfork",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "unshare",
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "seccomp",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
    "capset",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kcmp",
    "personality",
    "setpriority",
    "sched_setaffinity",
    "sched_setscheduler",
    "sched_setattr",
    "setsid",
    "setpgid",
];

/// What `child_processes` adds to `child`: making, running and waiting for processes, the
/// start-up of an exec'd interpreter, and sessions/process groups inside the run's namespace.
const ADDED_FOR_PROCESSES: &[&str] = &[
    "execve",
    "execveat",
    "fork",
    "vfork",
    "wait4",
    "waitid",
    "set_tid_address",
    "arch_prctl",
    "setsid",
    "setpgid",
];

/// Every CLONE_NEW* flag clone(2) takes.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Syscalls the child may only use with the argument conditions of its rules.
const CONDITIONAL_IN_CHILD: &[&str] = &["clone", "ioctl", "prctl", "socketpair", "prlimit64"];

/// Every filter, in the order of the module documentation.
const FILTERS: [&str; 4] = [ZYGOTE, CHILD_CLONE3, CHILD, CHILD_PROCESSES];

/// The policy as compiled: `extends` resolved.
fn parse(policy: &Policy) -> Value {
    seccomp::document(policy).unwrap_or_else(|e| panic!("{}: {e}", policy.file))
}

/// The policy file as written.
fn raw(policy: &Policy) -> Value {
    serde_json::from_str(policy.json).unwrap_or_else(|e| panic!("{}: {e}", policy.file))
}

fn rules<'a>(doc: &'a Value, filter: &str) -> &'a Vec<Value> {
    doc[filter]["filter"]
        .as_array()
        .unwrap_or_else(|| panic!("no filter {filter}"))
}

fn names(doc: &Value, filter: &str) -> BTreeSet<String> {
    rules(doc, filter)
        .iter()
        .map(|rule| rule["syscall"].as_str().expect("syscall name").to_owned())
        .collect()
}

/// Compile a one-rule filter: tells whether `rule` names a syscall of `arch` and is well formed.
fn compile_rule(rule: &Value, arch: TargetArch) -> Result<(), String> {
    let doc = json!({"probe": {"mismatch_action": "allow", "match_action": "kill_process",
                               "filter": [rule]}});
    seccompiler::compile_from_json(doc.to_string().as_bytes(), arch)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn every_policy_file_compiles_for_its_arch() {
    for policy in &POLICIES {
        let map = seccomp::compile(policy).unwrap_or_else(|e| panic!("{e}"));
        for filter in FILTERS {
            assert!(
                map.contains_key(filter),
                "{}: no filter {filter}",
                policy.file
            );
        }
        assert_eq!(
            map.len(),
            FILTERS.len(),
            "{}: unexpected filters",
            policy.file
        );
    }
}

#[test]
fn every_rule_compiles_alone_and_has_a_comment() {
    for policy in &POLICIES {
        let doc = raw(policy);
        for filter in FILTERS {
            for rule in rules(&doc, filter) {
                if let Err(e) = compile_rule(rule, policy.arch) {
                    panic!(
                        "{} {filter}: rule {rule} does not compile: {e}",
                        policy.file
                    );
                }
                let comment = rule["comment"].as_str().unwrap_or_default();
                assert!(
                    comment.len() > 5,
                    "{} {filter}: {rule} needs a comment",
                    policy.file
                );
                for condition in rule["args"].as_array().into_iter().flatten() {
                    assert!(
                        condition["comment"].as_str().is_some_and(|c| !c.is_empty()),
                        "{} {filter}: condition {condition} needs a comment",
                        policy.file
                    );
                }
            }
        }
    }
}

#[test]
fn filters_have_the_documented_actions() {
    for policy in &POLICIES {
        let doc = parse(policy);
        let actions = |filter: &str| {
            (
                doc[filter]["mismatch_action"].clone(),
                doc[filter]["match_action"].clone(),
            )
        };
        assert_eq!(
            actions(ZYGOTE),
            (json!("allow"), json!("kill_process")),
            "{}",
            policy.file
        );
        assert_eq!(
            actions(CHILD_CLONE3),
            (json!("allow"), json!({"errno": 38})),
            "{}",
            policy.file
        );
        for child in [CHILD, CHILD_PROCESSES] {
            assert_eq!(
                actions(child),
                (json!({"errno": 1}), json!("allow")),
                "{} {child}",
                policy.file
            );
        }
        assert_eq!(
            names(&doc, CHILD_CLONE3),
            BTreeSet::from(["clone3".to_owned()])
        );
        // clone3 must be allowed by `child` (installed last, evaluated first) or its EPERM
        // would be the first ERRNO seen and win over child_clone3's ENOSYS.
        assert!(names(&doc, CHILD).contains("clone3"), "{}", policy.file);
        assert!(
            names(&doc, CHILD_PROCESSES).contains("clone3"),
            "{}",
            policy.file
        );
    }
}

#[test]
fn child_processes_is_child_plus_process_calls_and_clone_without_namespaces() {
    for policy in &POLICIES {
        let doc = parse(policy);
        let child = names(&doc, CHILD);
        let processes = names(&doc, CHILD_PROCESSES);
        assert!(child.is_subset(&processes), "{}", policy.file);
        let added: BTreeSet<&str> = processes.difference(&child).map(String::as_str).collect();
        let exists = |name: &&str| {
            compile_rule(&json!({"syscall": name, "comment": "probe"}), policy.arch).is_ok()
        };
        let expected: BTreeSet<&str> = ADDED_FOR_PROCESSES.iter().copied().filter(exists).collect();
        assert_eq!(added, expected, "{}", policy.file);
        // The variant names only what differs: no rule of child repeated verbatim.
        let written = rules(&raw(policy), CHILD_PROCESSES).clone();
        for rule in &written {
            assert!(
                !rules(&doc, CHILD).contains(rule),
                "{}: {rule} is child's own rule",
                policy.file
            );
        }
        // clone: one rule, every namespace flag masked and required clear, CLONE_THREAD free.
        let clones: Vec<&Value> = rules(&doc, CHILD_PROCESSES)
            .iter()
            .filter(|rule| rule["syscall"] == "clone")
            .collect();
        assert_eq!(clones.len(), 1, "{}", policy.file);
        let condition = &clones[0]["args"][0];
        assert_eq!(condition["index"], 0);
        assert_eq!(condition["val"], 0);
        assert_eq!(
            condition["op"]["masked_eq"].as_u64(),
            Some(CLONE_NAMESPACE_FLAGS),
            "{}",
            policy.file
        );
    }
}

#[test]
fn child_allowlist_leaves_out_the_forbidden_calls() {
    for policy in &POLICIES {
        let doc = parse(policy);
        let allowed = names(&doc, CHILD);
        let leaked: Vec<_> = FORBIDDEN_IN_CHILD
            .iter()
            .filter(|name| allowed.contains(**name))
            .collect();
        let with_processes = names(&doc, CHILD_PROCESSES);
        let leaked_with_processes: Vec<_> = FORBIDDEN_IN_CHILD
            .iter()
            .filter(|name| !ADDED_FOR_PROCESSES.contains(name))
            .filter(|name| with_processes.contains(**name))
            .collect();
        assert!(
            leaked_with_processes.is_empty(),
            "{}: child_processes allows {leaked_with_processes:?}",
            policy.file
        );
        assert!(
            leaked.is_empty(),
            "{}: child allows {leaked:?}",
            policy.file
        );
        let killed = names(&doc, ZYGOTE);
        let both: Vec<_> = allowed.intersection(&killed).collect();
        assert!(
            both.is_empty(),
            "{}: allowed in child yet killed: {both:?}",
            policy.file
        );
    }
}

#[test]
fn argument_checked_syscalls_have_no_unconditional_rule() {
    for policy in &POLICIES {
        let doc = parse(policy);
        for filter in [CHILD, CHILD_PROCESSES] {
            let child = rules(&doc, filter);
            let conditional: BTreeSet<&str> = child
                .iter()
                .filter(|rule| rule.get("args").is_some())
                .filter_map(|rule| rule["syscall"].as_str())
                .collect();
            for name in CONDITIONAL_IN_CHILD {
                assert!(
                    conditional.contains(name),
                    "{} {filter}: {name} must be conditional",
                    policy.file
                );
            }
            // seccompiler silently drops a bare rule when the same syscall also has conditional
            // ones; a bare rule here would read as "allowed" to a reviewer and not be.
            for rule in child {
                let name = rule["syscall"].as_str().unwrap_or_default();
                assert!(
                    rule.get("args").is_some() || !conditional.contains(name),
                    "{} {filter}: {name} has both a bare and a conditional rule",
                    policy.file
                );
            }
        }
    }
}

#[test]
fn aarch64_mirrors_x86_64_where_the_syscall_exists() {
    let x86 = raw(&POLICIES[0]);
    let arm = raw(&POLICIES[1]);
    assert_eq!(POLICIES[0].arch, TargetArch::x86_64);
    assert_eq!(POLICIES[1].arch, TargetArch::aarch64);
    for filter in FILTERS {
        let expected: Vec<&Value> = rules(&x86, filter)
            .iter()
            .filter(|rule| compile_rule(rule, TargetArch::aarch64).is_ok())
            .collect();
        let actual: Vec<&Value> = rules(&arm, filter).iter().collect();
        assert_eq!(actual, expected, "aarch64 {filter} differs from x86_64");
    }
}

#[test]
fn host_programs_come_in_installation_order() {
    let Ok(policy) = seccomp::host_policy() else {
        println!("SKIPPED: host_programs_come_in_installation_order: no policy for this arch");
        return;
    };
    let mut map = seccomp::compile(policy).expect("compile");
    for (processes, last) in [(false, CHILD), (true, CHILD_PROCESSES)] {
        let child = seccomp::child_filters(processes).expect("child filters");
        assert_eq!(child.len(), 2);
        assert_eq!(Some(&child[0]), map.get(CHILD_CLONE3));
        let dispatched = seccomp::compile_dispatched(policy, last).expect("dispatch");
        assert_eq!(child[1], dispatched);
    }
    let zygote = seccomp::zygote_filters().expect("zygote filters");
    let expected_zygote = map.remove(ZYGOTE).expect("zygote");
    if policy.arch == TargetArch::x86_64 {
        assert_eq!(zygote, [seccomp::x32_guard(), expected_zygote]);
    } else {
        assert_eq!(zygote, [expected_zygote]);
    }
}
