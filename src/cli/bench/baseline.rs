//! The baseline measured in the same invocation: a fresh `python3 -c` per request, the same
//! interpreter and flags the profile uses.

use super::*;

/// The real executable behind `python` (a command on PATH, a shim or a path), as the interpreter
/// itself reports it in isolated mode — the same resolution the daemon's probe does, so the
/// baseline starts the interpreter the profile runs.
pub fn resolve_python(python: &Path) -> Result<PathBuf, BenchError> {
    let output = std::process::Command::new(python)
        .args(["-I", "-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::PythonSpawn {
            python: python.to_owned(),
            source,
        })?;
    let executable = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || executable.is_empty() {
        return Err(BenchError::PythonProbe {
            python: python.to_owned(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(PathBuf::from(executable))
}

/// `python -I -B -X utf8 -c CODE`: one baseline run, with the zygote's flags, stdin empty, both
/// outputs captured.
pub fn baseline_command(python: &Path, code: &str) -> std::process::Command {
    let mut command = std::process::Command::new(python);
    command
        .args(BASELINE_FLAGS)
        .arg("-c")
        .arg(code)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the baseline `runs` times, one after the other, until done or `deadline`.
pub(super) async fn run_baseline(
    python: &Path,
    code: &str,
    runs: u64,
    deadline: Instant,
) -> Baseline {
    let mut baseline = Baseline {
        python: python.to_owned(),
        runs,
        failures: 0,
        latency: latency_histogram(),
        stdout: None,
        error_examples: Vec::new(),
    };
    fn fail(baseline: &mut Baseline, message: String) {
        baseline.failures += 1;
        if baseline.error_examples.len() < MAX_ERROR_EXAMPLES {
            baseline.error_examples.push(format!("baseline: {message}"));
        }
    }
    for done in 0..runs {
        let mut command = tokio::process::Command::from(baseline_command(python, code));
        command.kill_on_drop(true);
        let started = Instant::now();
        let output = match tokio::time::timeout_at(deadline, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => {
                fail(&mut baseline, format!("cannot start: {err}"));
                continue;
            }
            Err(_) => {
                let left = runs - done;
                baseline.failures += left - 1;
                fail(
                    &mut baseline,
                    format!("deadline: {left} runs did not finish"),
                );
                break;
            }
        };
        record(&mut baseline.latency, started.elapsed());
        if !output.status.success() {
            let message = format!("{}: stderr {}", output.status, quote(&output.stderr));
            fail(&mut baseline, message);
            continue;
        }
        match &baseline.stdout {
            None => baseline.stdout = Some(output.stdout),
            Some(expected) if *expected == output.stdout => {}
            Some(expected) => {
                let message = format!(
                    "stdout differs: expected {}, got {}",
                    quote(expected),
                    quote(&output.stdout)
                );
                fail(&mut baseline, message);
            }
        }
    }
    baseline
}
