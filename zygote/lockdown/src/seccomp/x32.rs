//! A hand-written classic-BPF guard against the x32 ABI and foreign architectures.
//!
//! On x86_64, x32 system calls arrive with `AUDIT_ARCH_X86_64` and the syscall number ORed with
//! `__X32_SYSCALL_BIT` (0x40000000). seccompiler's architecture check lets them through, and a
//! denylist keyed on x86_64 numbers would never match them. This kernel has no x32 compiled in,
//! production kernels may. The guard kills any such call, and any call from another audit
//! architecture (i386 via `int 0x80`).
//!
//! Building the program needs no unsafe code; it is installed with [`super::apply`].

use super::{sock_filter, BpfProgram};

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
pub const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets into struct seccomp_data.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The guard program (7 instructions).
pub fn x32_guard() -> BpfProgram {
    vec![
        // A = seccomp_data.arch
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        // x86_64: skip the kill below
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        // A = seccomp_data.nr
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        // x32 bit set: fall through to the kill; clear: jump to allow
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_ends_in_a_return() {
        let prog = x32_guard();
        // Each jump lands inside the program and the program ends with a return.
        for (i, insn) in prog.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < prog.len());
            }
        }
        assert_eq!(prog.last().map(|insn| insn.code), Some(BPF_RET_K));
    }
}
