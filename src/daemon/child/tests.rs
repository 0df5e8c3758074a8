//! Unit tests of `src/daemon/child/mod.rs`.

use super::*;
use crate::daemon::zygotes::handle::EXIT_LOCKDOWN_FAILED;

fn exit(code: Option<i32>, signal: Option<i32>, cpu: f64) -> ExitReport {
    ExitReport {
        exit_code: code,
        signal,
        utime: cpu,
        ..ExitReport::default()
    }
}

#[test]
fn classification_names_every_ending() {
    let limits = Limits::default();
    let cases = [
        (exit(Some(0), None, 0.0), None, Status::Ok),
        (exit(Some(3), None, 0.0), None, Status::Error),
        (exit(None, Some(libc::SIGXCPU), 1.0), None, Status::CpuLimit),
        (
            exit(None, Some(libc::SIGKILL), 99_999.0),
            None,
            Status::CpuLimit,
        ),
        (exit(None, Some(libc::SIGKILL), 0.1), None, Status::Killed),
        (exit(None, Some(libc::SIGSYS), 0.0), None, Status::Killed),
        (
            exit(None, Some(libc::SIGKILL), 0.0),
            Some(Status::Timeout),
            Status::Timeout,
        ),
        (
            exit(Some(0), None, 0.0),
            Some(Status::OutputLimit),
            Status::OutputLimit,
        ),
        // After "ready" every exit code is the program's own, even the zygote's setup codes.
        (
            exit(Some(EXIT_LOCKDOWN_FAILED), None, 0.0),
            None,
            Status::Error,
        ),
    ];
    for (info, stopped, want) in cases {
        assert_eq!(
            classify(&info, stopped, Some(false), b"", &limits).0,
            want,
            "{info:?} {stopped:?}"
        );
    }
    let out_of_memory =
        b"Traceback (most recent call last):\n  File \"main.py\", line 1\nMemoryError\n";
    let exit1 = exit(Some(1), None, 0.1);
    // Without a memory cgroup (rootless) a final MemoryError is all there is to go on.
    assert_eq!(
        classify(&exit1, None, None, out_of_memory, &limits).0,
        Status::MemoryLimit
    );
    assert_eq!(
        classify(&exit1, None, None, b"ValueError: x\n", &limits).0,
        Status::Error
    );
    // With one, its OOM counter is the only word: printing the word is just output.
    assert_eq!(
        classify(&exit1, None, Some(false), out_of_memory, &limits).0,
        Status::Error
    );
    // The cgroup's OOM kill wins over the signal it used.
    let killed = exit(None, Some(libc::SIGKILL), 0.1);
    assert_eq!(
        classify(&killed, None, Some(true), b"", &limits).0,
        Status::MemoryLimit
    );
    // A program that merely prints the word, then exits 0, is fine.
    assert_eq!(
        classify(
            &exit(Some(0), None, 0.0),
            None,
            None,
            b"MemoryError\n",
            &limits
        )
        .0,
        Status::Ok
    );
}
