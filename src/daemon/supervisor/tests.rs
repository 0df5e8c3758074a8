//! Unit tests of `src/daemon/supervisor.rs`.

use super::*;
use crate::daemon::paths::{PROBE_PY, ZYGOTE_PY};

/// The Python files the daemon ships must parse; a slip would otherwise show up only as
/// zygotes that never become ready.
#[test]
fn embedded_python_parses() {
    for (name, source) in [("zygote.py", ZYGOTE_PY), ("probe.py", PROBE_PY)] {
        let mut child = std::process::Command::new("python3")
            .args(["-I", "-c", "import ast, sys; ast.parse(sys.stdin.read())"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed to build and test sandfork");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), source.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "{name} does not parse");
    }
}

#[test]
fn instance_names_are_stable_and_distinct() {
    let a = instance_name(Path::new("/run/sandfork/sandfork.sock"));
    assert_eq!(a, instance_name(Path::new("/run/sandfork/sandfork.sock")));
    assert_ne!(a, instance_name(Path::new("/tmp/other.sock")));
    assert_eq!(a.len(), 12);
}
