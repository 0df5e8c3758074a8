//! The C ABI driven by the real interpreter, as the zygote drives it: tests/python_harness.py
//! loads target/<profile>/libsandfork_lockdown.so with ctypes, calls init, forks children that
//! lock themselves down, and runs a stdlib workload in one of them. Every item must succeed, and
//! the forbidden ones (subprocess, fork, exec, sockets, writes outside the work dir, …) must raise
//! PermissionError. Also measures sandfork_child_lockdown (median of 50 children).
//!
//! The interpreter is `python3`'s `sys.executable` (the pyenv shim resolves to the real one), or
//! `$SANDFORK_TEST_PYTHON` to try another version. Like a zygote, it runs under the zygote
//! seccomp filters and NO_NEW_PRIVS. An interpreter under a directory the slot uid cannot
//! traverse (pyenv under /root, mode 0700) is bind-mounted to a traversable place in a private
//! mount namespace first, as zygote-init bind-mounts it into the jail.

mod common;

use std::ffi::CString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_root, WorkTree, GID, UID};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use sandfork_lockdown::seccomp;
use serde_json::{json, Value};

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_harness.py");
const RESULT_MARKER: &str = "SANDFORK_HARNESS_RESULT ";
const BENCH_RUNS: u64 = 50;
const TIMEOUT: Duration = Duration::from_secs(120);

/// The interpreter to test: its real executable and prefixes.
struct Interpreter {
    executable: PathBuf,
    prefix: PathBuf,
    base_prefix: PathBuf,
}

fn find_interpreter() -> Result<Interpreter, String> {
    let python = std::env::var("SANDFORK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args([
            "-c",
            "import json, sys; print(json.dumps([sys.executable, sys.prefix, sys.base_prefix]))",
        ])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{python} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let [executable, prefix, base_prefix]: [PathBuf; 3] =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("{python}: {e}"))?;
    Ok(Interpreter {
        executable,
        prefix,
        base_prefix,
    })
}

/// The freshest libsandfork_lockdown.so: `cargo test` rebuilds the cdylib in
/// target/<profile>/deps (next to this test executable) but does not copy it up to
/// target/<profile>, which may hold a stale one from an earlier `cargo build`.
/// `$SANDFORK_TEST_LOCKDOWN_LIB` overrides (e.g. a release build, to measure the lockdown cost).
fn find_library() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("SANDFORK_TEST_LOCKDOWN_LIB") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let deps = exe.parent().ok_or("test exe has no directory")?;
    let mut candidates = vec![
        deps.join("libsandfork_lockdown.so"),
        deps.join("../libsandfork_lockdown.so"),
    ];
    if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(Path::new(&target).join("debug/libsandfork_lockdown.so"));
    }
    candidates
        .into_iter()
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((modified, path))
        })
        .max()
        .map(|(_, path)| path)
        .ok_or_else(|| format!("libsandfork_lockdown.so not found near {}", deps.display()))
}

/// Whether a process running as the slot uid can traverse every ancestor of `path`.
fn traversable_by_slot(path: &Path) -> bool {
    path.ancestors().all(|dir| {
        std::fs::metadata(dir).is_ok_and(|meta| {
            let mode = meta.mode();
            mode & 0o001 != 0
                || (meta.uid() == UID && mode & 0o100 != 0)
                || (meta.gid() == GID && mode & 0o010 != 0)
        })
    })
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn numbers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[test]
fn python_zygote_child_runs_the_stdlib_workload() {
    if !require_root("python_zygote_child_runs_the_stdlib_workload") {
        return;
    }
    let python = match find_interpreter() {
        Ok(python) => python,
        Err(reason) => {
            println!("SKIPPED: python_zygote_child_runs_the_stdlib_workload: {reason}");
            return;
        }
    };
    let library = find_library().expect("cdylib built by cargo test");
    let tree = WorkTree::new();

    // Relocate the interpreter if the slot uid could not reach it.
    let mut executable = python.executable.clone();
    let mut bind: Option<(CString, CString)> = None;
    if !traversable_by_slot(&python.base_prefix) || !traversable_by_slot(&python.prefix) {
        if python.prefix != python.base_prefix {
            println!(
                "SKIPPED: python_zygote_child_runs_the_stdlib_workload: virtualenv {} under a \
                 directory uid {UID} cannot traverse",
                python.prefix.display()
            );
            return;
        }
        let relative = python
            .executable
            .strip_prefix(&python.prefix)
            .expect("sys.executable inside sys.prefix");
        let target = tree.root.path().join("python");
        std::fs::create_dir(&target).expect("mkdir bind target");
        executable = target.join(relative);
        bind = Some((
            CString::new(python.prefix.as_os_str().as_encoded_bytes()).expect("prefix"),
            CString::new(target.as_os_str().as_encoded_bytes()).expect("target"),
        ));
    }

    let spec = json!({
        "init": {
            "read_paths": ["/etc/ld.so.cache", "/dev/urandom", "/dev/random", "/dev/zero"],
            "read_write_paths": ["/dev/null"],
            "work_parent": tree.work_parent,
            "landlock_required": true,
        },
        "child": {
            "work_dir": tree.work_dir,
            "tmpfs_bytes": 64u64 << 20,
            "uid": UID,
            "gid": GID,
            "rlimits": {"cpu_seconds": 15, "fsize_bytes": 64u64 << 20, "nofile": 256,
                        "nproc": 64, "as_bytes": null},
        },
        "bench_runs": BENCH_RUNS,
    });

    let zygote_filters = seccomp::zygote_filters().expect("zygote filters");
    let mut command = Command::new(&executable);
    command
        .arg("-I")
        .arg(HARNESS)
        .arg(&library)
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook runs in the forked child before exec and only makes syscalls (unshare,
    // mount, prctl, seccomp) on data prepared before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some((source, target)) = &bind {
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                mount(
                    Some(source.as_c_str()),
                    target.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
            }
            for program in &zygote_filters {
                seccomp::apply(program).map_err(|_| std::io::Error::last_os_error())?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn the interpreter");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("the harness did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let Some(line) = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_MARKER))
    else {
        panic!("no result from the harness ({status}):\n{stdout}\n{stderr}");
    };
    let out: Value = serde_json::from_str(line).expect("harness JSON");
    println!("interpreter {} ({})", out["executable"], out["python"]);
    println!("library {}", library.display());
    assert_eq!(out["init_rc"], 0, "init failed: {}", out["init_error"]);
    println!("report: {}", out["report"]);
    assert_eq!(out["report"]["landlock_enforced"], true);

    let bench = &out["bench"];
    assert_eq!(bench["failures"], json!([]), "bench children failed");
    let mut lockdown_ns = numbers(&bench["lockdown_ns"]);
    let mut roundtrip_ns = numbers(&bench["fork_lockdown_exit_ns"]);
    assert_eq!(lockdown_ns.len() as u64, BENCH_RUNS);
    println!(
        "sandfork_child_lockdown: median {} µs over {} children (fork + lockdown + exit + wait: \
         median {} µs)",
        median(&mut lockdown_ns) / 1000,
        BENCH_RUNS,
        median(&mut roundtrip_ns) / 1000,
    );

    let workload = &out["workload"];
    assert_eq!(
        workload["lockdown"]["lockdown_rc"], 0,
        "child lockdown failed: {}",
        workload["lockdown"]
    );
    let skipped = out["skipped"].as_object().cloned().unwrap_or_default();
    for (item, reason) in &skipped {
        println!(
            "SKIPPED: workload item {item}: {}",
            reason.as_str().unwrap_or("")
        );
    }
    let results = workload["results"].as_array().cloned().unwrap_or_default();
    let failures: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    for result in &results {
        println!("  {}", result);
    }
    assert!(
        workload["status"] == json!({"exit": 0}),
        "workload child ended {} during item {}\nstderr:\n{stderr}",
        workload["status"],
        workload["last_started"]
    );
    assert!(
        failures.is_empty(),
        "workload items failed: {failures:#?}\nstderr:\n{stderr}"
    );
    let expected = out["items"].as_array().map_or(0, Vec::len) - skipped.len();
    assert_eq!(
        results.len(),
        expected,
        "some workload items did not report"
    );
    assert!(
        status.success(),
        "harness exited {status}\nstderr:\n{stderr}"
    );
}
