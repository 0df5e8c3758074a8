//! The Python client package (clients/python) against a live service: its pytest suite runs
//! with a root daemon of its own and `sandfork-http` as nobody in front of it, over the socket
//! and over HTTP, blocking and asyncio (the package installed into the venv of
//! `scripts/clients-venv` with `pip install ./clients/python`, as a user would). Then the
//! README's "Python client" examples run as written, pointed at this stack.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::http::Stack;
use common::{clients_python, privileged};

const KEY: &str = "sf_test_pyclient_alpha_0123";
const OTHER_KEY: &str = "sf_test_pyclient_beta_0123";
/// One run per 100 s after the first: the second is `rate_limited` with a Retry-After.
const NARROW_KEY: &str = "sf_test_pyclient_narrow_0123";

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        Stack::start(
            "sandfork-pyclient-",
            &[
                ("alpha", KEY, ""),
                ("beta", OTHER_KEY, ""),
                ("narrow", NARROW_KEY, "rate_per_sec = 0.01\nburst = 1"),
            ],
        )
    })
}

fn python_with_stack(python: &Path) -> Command {
    let stack = stack();
    let mut command = Command::new("timeout");
    command
        .arg("300")
        .arg(python)
        .env("SANDFORK_SOCKET", &stack.socket)
        .env("SANDFORK_URL", &stack.base)
        .env("SANDFORK_API_KEY", KEY)
        .env("SANDFORK_OTHER_API_KEY", OTHER_KEY)
        .env("SANDFORK_NARROW_API_KEY", NARROW_KEY)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

fn succeeds(mut command: Command, what: &str) -> String {
    let output = command.output().expect(what);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_python_client_passes_its_tests_against_a_live_service() {
    const TEST: &str = "the_python_client_passes_its_tests_against_a_live_service";
    if !privileged(TEST) {
        return;
    }
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let mut pytest = python_with_stack(&python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python"));
    let report = succeeds(pytest, "pytest clients/python/tests");
    println!("{report}");
    assert!(
        !report.contains("skipped"),
        "no client test may skip here:\n{report}"
    );
}

/// The README's examples under "Python client", each run as written except for where the
/// service is: the socket comes from `SANDFORK_SOCKET`, and the HTTP examples' URL and key file
/// (scripts/serve's) are replaced with this stack's.
#[test]
fn the_readme_python_examples_run_as_written() {
    const TEST: &str = "the_readme_python_examples_run_as_written";
    if !privileged(TEST) {
        return;
    }
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### Python client\n")
        .nth(1)
        .expect("the README has a \"Python client\" section");
    let section = section.split("\n## ").next().unwrap();
    let section = section.split("\n### ").next().unwrap();
    let examples: Vec<&str> = section
        .split("```python\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    assert!(
        examples.len() >= 3,
        "too few Python examples: {}",
        examples.len()
    );
    let key_file = std::env::temp_dir().join("sandfork-pyclient-example.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    for example in examples {
        let code = example
            .replace("http://127.0.0.1:8080", &stack().base)
            .replace("target/serve/example.key", key_file.to_str().unwrap());
        let mut run = python_with_stack(&python);
        run.arg("-c").arg(&code);
        let out = succeeds(run, &format!("the README example:\n{example}"));
        // Every example shows what it prints in `# ` comments after a print: check them.
        let expected: Vec<&str> = example
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("# -> "))
            .collect();
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(
            got, expected,
            "the README example printed otherwise:\n{example}"
        );
    }
}
