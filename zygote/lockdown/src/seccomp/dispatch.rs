//! Binary-search dispatch for a seccompiler allowlist.
//!
//! seccompiler emits one linear chain of syscall-number comparisons. For the child allowlist
//! (~130 syscalls, ~800 instructions) installing it costs ~420 µs per child on the design VM:
//! the kernel JITs every instruction, then runs the filter once per syscall number to fill its
//! constant-action cache, each run walking the chain. This module keeps seccompiler's output for
//! everything it compiles, the architecture check and each syscall's argument conditions,
//! and replaces only the chain walk with a binary search on the syscall number, making a child's
//! install several times cheaper.
//!
//! How: every syscall's rules are compiled by seccompiler as a one-syscall filter of the same
//! actions. Its tail after `LD nr` (`JEQ nr`, the rules, the returns) is a self-contained block
//! whose jumps all stay inside it; entered with `A == nr`, it behaves as that syscall's part of
//! the full filter. The search tree compares `A` (never modifies it) and jumps to a block, to the
//! match action for syscalls without conditions, or to the mismatch action.
//! `tests::dispatch_matches_seccompiler` checks the result against seccompiler's own program on
//! every syscall number and on boundary argument values.

use std::collections::BTreeMap;

use seccompiler::SeccompAction;
use serde_json::{json, Map, Value};

use super::{sock_filter, BpfProgram, Policy, SeccompError};

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_CLASS_MASK: u16 = 0x07;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = BPF_JMP; // BPF_JMP | BPF_JA (0)
const BPF_JEQ_K: u16 = BPF_JMP | 0x10;
const BPF_JGE_K: u16 = BPF_JMP | 0x30;
const BPF_RET_K: u16 = 0x06;
/// `BPF_MAXINSNS`.
const MAX_INSNS: usize = 4096;
/// Length of seccompiler's prefix: load arch, compare, kill, load nr.
const PREFIX_LEN: usize = 4;
/// A leaf of the search tree holds at most this many syscall numbers, compared linearly.
const LEAF_SIZE: usize = 3;

/// Where a syscall number leads.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The filter's match action (a syscall without argument conditions).
    Match,
    /// The block of a syscall with conditions (index into the block list).
    Block(usize),
}

/// A program under construction: instructions plus `JA` fixups to blocks.
struct Emitter {
    insns: Vec<sock_filter>,
    /// (index of a JA, block it must reach)
    fixups: Vec<(usize, usize)>,
    match_ret: u32,
    mismatch_ret: u32,
}

impl Emitter {
    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> usize {
        self.insns.push(sock_filter { code, jt, jf, k });
        self.insns.len() - 1
    }

    fn emit_target(&mut self, target: Target) {
        match target {
            Target::Match => {
                self.push(BPF_RET_K, 0, 0, self.match_ret);
            }
            Target::Block(block) => {
                let at = self.push(BPF_JA, 0, 0, 0);
                self.fixups.push((at, block));
            }
        }
    }

    /// Search `entries` (sorted by number): nodes split on `JGE pivot`, leaves compare linearly.
    fn emit_tree(&mut self, entries: &[(u32, Target)]) {
        if entries.len() <= LEAF_SIZE {
            for &(nr, target) in entries {
                // Equal: the next instruction (the target); otherwise skip it.
                self.push(BPF_JEQ_K, 0, 1, nr);
                self.emit_target(target);
            }
            self.push(BPF_RET_K, 0, 0, self.mismatch_ret);
            return;
        }
        let mid = entries.len() / 2;
        // nr >= pivot: take the JA to the right half; otherwise skip it into the left half.
        self.push(BPF_JGE_K, 0, 1, entries[mid].0);
        let to_right = self.push(BPF_JA, 0, 0, 0);
        self.emit_tree(&entries[..mid]);
        self.insns[to_right].k = jump_offset(to_right, self.insns.len());
        self.emit_tree(&entries[mid..]);
    }
}

fn jump_offset(from: usize, to: usize) -> u32 {
    u32::try_from(to - from - 1).unwrap_or(u32::MAX)
}

fn invalid(file: &'static str, reason: String) -> SeccompError {
    SeccompError::Dispatch { file, reason }
}

/// Check that every jump of `prog` lands inside it and that it ends in a return: what the
/// kernel's filter checker would otherwise refuse at install time.
pub fn check_jumps(prog: &[sock_filter]) -> Result<(), String> {
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return Err(format!("{} instructions", prog.len()));
    }
    for (i, insn) in prog.iter().enumerate() {
        if insn.code & BPF_CLASS_MASK != BPF_JMP {
            continue;
        }
        let furthest = if insn.code == BPF_JA {
            usize::try_from(insn.k).unwrap_or(usize::MAX)
        } else {
            usize::from(insn.jt.max(insn.jf))
        };
        if i.saturating_add(1).saturating_add(furthest) >= prog.len() {
            return Err(format!("jump at {i} leaves the program"));
        }
    }
    match prog.last() {
        Some(last) if last.code == BPF_RET_K => Ok(()),
        _ => Err("the program does not end with a return".into()),
    }
}

/// Compile `filter` of `policy` with a binary-search dispatch (see the module documentation).
pub fn compile_dispatched(
    policy: &Policy,
    filter: &'static str,
) -> Result<BpfProgram, SeccompError> {
    let doc: Value = super::document(policy)?;
    let spec = doc.get(filter).ok_or(SeccompError::MissingFilter {
        file: policy.file,
        filter,
    })?;
    let rules = spec["filter"].as_array().cloned().unwrap_or_default();

    // One one-syscall filter per syscall name, same actions, rules in file order.
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for rule in rules {
        let name = rule["syscall"].as_str().unwrap_or_default().to_owned();
        groups.entry(name).or_default().push(rule);
    }
    let mut per_syscall = Map::new();
    for (name, rules) in &groups {
        per_syscall.insert(
            name.clone(),
            json!({"mismatch_action": spec["mismatch_action"], "match_action": spec["match_action"],
                   "filter": rules}),
        );
    }
    let compiled = seccompiler::compile_from_json(
        Value::Object(per_syscall).to_string().as_bytes(),
        policy.arch,
    )
    .map_err(|source| SeccompError::Compile {
        file: policy.file,
        source,
    })?;
    // The complete filter as seccompiler builds it: its prefix and actions are reused as is.
    let mut whole = super::compile(policy)?;
    let whole = whole.remove(filter).ok_or(SeccompError::MissingFilter {
        file: policy.file,
        filter,
    })?;
    let prefix = whole
        .get(..PREFIX_LEN)
        .ok_or_else(|| invalid(policy.file, "no architecture check".into()))?;
    let action = |key: &str| -> Result<u32, SeccompError> {
        serde_json::from_value::<SeccompAction>(spec[key].clone())
            .map(u32::from)
            .map_err(|e| invalid(policy.file, format!("{filter}.{key}: {e}")))
    };
    let match_ret = action("match_action")?;
    let mismatch_ret = action("mismatch_action")?;

    let mut entries = Vec::with_capacity(groups.len());
    let mut blocks: Vec<BpfProgram> = Vec::new();
    for (name, rules) in &groups {
        let prog = compiled
            .get(name)
            .ok_or_else(|| invalid(policy.file, format!("{name} did not compile")))?;
        let block = prog
            .get(PREFIX_LEN..)
            .filter(|block| block.first().is_some_and(|insn| insn.code == BPF_JEQ_K))
            .ok_or_else(|| invalid(policy.file, format!("{name}: unexpected layout")))?;
        check_jumps(block).map_err(|e| invalid(policy.file, format!("{name}: {e}")))?;
        let nr = block[0].k;
        let conditional = rules.iter().any(|rule| rule.get("args").is_some());
        let target = if conditional {
            blocks.push(block.to_vec());
            Target::Block(blocks.len() - 1)
        } else {
            Target::Match
        };
        entries.push((nr, target));
    }
    entries.sort_by_key(|(nr, _)| *nr);

    let mut emitter = Emitter {
        insns: prefix.to_vec(),
        fixups: Vec::new(),
        match_ret,
        mismatch_ret,
    };
    emitter.emit_tree(&entries);
    let mut starts = Vec::with_capacity(blocks.len());
    for block in &blocks {
        starts.push(emitter.insns.len());
        emitter.insns.extend_from_slice(block);
    }
    for (at, block) in std::mem::take(&mut emitter.fixups) {
        emitter.insns[at].k = jump_offset(at, starts[block]);
    }
    check_jumps(&emitter.insns).map_err(|e| invalid(policy.file, e))?;
    Ok(emitter.insns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{compile, CHILD, CHILD_CLONE3, POLICIES, ZYGOTE};

    /// A `struct seccomp_data`.
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn word(&self, offset: u32) -> u32 {
            match offset {
                0 => self.nr,
                4 => self.arch,
                16..=63 if offset & 3 == 0 => {
                    let arg = self.args[(offset as usize - 16) / 8];
                    if offset & 7 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load from offset {offset}"),
            }
        }
    }

    /// The subset of classic BPF that seccompiler and this module emit.
    fn run(prog: &[sock_filter], data: &Data) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = &prog[pc];
            pc += 1;
            match insn.code {
                0x20 => a = data.word(insn.k), // LD W ABS
                0x54 => a &= insn.k,           // ALU AND K
                0x05 => pc += insn.k as usize, // JA
                0x06 => return insn.k,         // RET K
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match insn.code {
                        0x15 => a == insn.k,
                        0x25 => a > insn.k,
                        0x35 => a >= insn.k,
                        _ => a & insn.k != 0,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                code => panic!("opcode {code:#x}"),
            }
        }
    }

    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;

    /// Interesting argument values: the policy's constants and masks, their neighbours, and
    /// values differing only in the upper 32 bits.
    fn argument_values(json: &Value) -> Vec<u64> {
        let mut constants = vec![0u64, 1, u64::from(u32::MAX), 1 << 32, u64::MAX];
        let mut visit = |v: &Value| {
            if let Some(n) = v.as_u64() {
                constants.push(n);
            }
        };
        for filter in json.as_object().into_iter().flat_map(|o| o.values()) {
            for rule in filter["filter"].as_array().into_iter().flatten() {
                for cond in rule["args"].as_array().into_iter().flatten() {
                    visit(&cond["val"]);
                    visit(&cond["op"]["masked_eq"]);
                }
            }
        }
        let mut values = Vec::new();
        for c in constants {
            values.extend([
                c,
                c.wrapping_add(1),
                c.wrapping_sub(1),
                c | 1 << 32,
                !c,
                c | 0x8000,
            ]);
        }
        values.sort_unstable();
        values.dedup();
        values
    }

    #[test]
    fn dispatch_matches_seccompiler() {
        for policy in &POLICIES {
            let json: Value = serde_json::from_str(policy.json).unwrap();
            let linear = compile(policy).unwrap();
            let native = match policy.arch {
                seccompiler::TargetArch::x86_64 => AUDIT_ARCH_X86_64,
                _ => AUDIT_ARCH_AARCH64,
            };
            let values = argument_values(&json);
            for filter in [ZYGOTE, CHILD_CLONE3, CHILD] {
                let fast = compile_dispatched(policy, filter).unwrap();
                let slow = &linear[filter];
                check_jumps(&fast).unwrap();
                let mut numbers: Vec<u32> = (0..1100).collect();
                numbers.extend((0..600).map(|n| 0x4000_0000 | n));
                numbers.push(u32::MAX);
                let mut cases = 0u64;
                for arch in [
                    native,
                    AUDIT_ARCH_X86_64 ^ AUDIT_ARCH_AARCH64 ^ native,
                    0x4000_0003,
                ] {
                    for &nr in &numbers {
                        let mut probe = |args: [u64; 6]| {
                            let data = Data { nr, arch, args };
                            assert_eq!(
                                run(&fast, &data),
                                run(slow, &data),
                                "{} {filter}: nr {nr} arch {arch:#x} args {args:x?}",
                                policy.file
                            );
                            cases += 1;
                        };
                        probe([0; 6]);
                        if nr < 600 && arch == native {
                            for index in 0..6 {
                                for &value in &values {
                                    let mut args = [0; 6];
                                    args[index] = value;
                                    probe(args);
                                }
                            }
                        }
                    }
                }
                assert!(
                    fast.len() < slow.len() || filter != CHILD,
                    "{} {filter}: dispatch is not shorter ({} vs {})",
                    policy.file,
                    fast.len(),
                    slow.len()
                );
                println!(
                    "{} {filter}: {} vs {} instructions, {cases} cases",
                    policy.file,
                    fast.len(),
                    slow.len()
                );
            }
        }
    }
}
