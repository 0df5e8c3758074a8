//! `sandfork repl` in a real terminal: tmux runs it against a private daemon, the test types
//! into it and reads the screen. Values are echoed, multi-line input works like Python's own
//! prompt, output streams, Ctrl-C interrupts a running cell (the session survives) or discards
//! the input at the prompt, and Ctrl-D closes the session.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{privileged, start_private_daemon, test_config};

/// A tmux server of this test alone (its own socket name), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "repl"];
        args.extend(keys);
        self.tmux(&args);
    }

    fn line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }

    /// Types `text` once the REPL waits at an empty `>>> ` prompt (so the screen reads in order).
    fn cell(&self, text: &str) {
        self.wait("the prompt", |s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::trim_end)
                == Some(">>>")
        });
        self.line(text);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-t", "repl", "-S", "-200"])
    }

    /// Waits until `pred` holds for the screen; panics with the screen otherwise.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

fn count(screen: &str, line: &str) -> usize {
    screen.lines().filter(|l| l.trim_end() == line).count()
}

#[test]
fn the_repl_works_in_a_terminal() {
    if !privileged("the_repl_works_in_a_terminal") {
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        common::skip::skip(
            "the_repl_works_in_a_terminal",
            "tmux is not installed (scripts/test installs it)",
        );
        return;
    }
    let daemon = start_private_daemon("sandfork-repl-", |dir| test_config(dir, ""));
    let tmux = Tmux {
        socket: format!("sandfork-repl-test-{}", std::process::id()),
    };
    let command = format!(
        "{} repl --socket {}; echo EXITED=$?; sleep 60",
        env!("CARGO_BIN_EXE_sandfork"),
        daemon.socket.display()
    );
    tmux.tmux(&[
        "new-session",
        "-d",
        "-s",
        "repl",
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);
    tmux.wait("the prompt", |s| {
        s.contains(">>> ") && s.contains("Ctrl-D closes the session")
    });

    tmux.cell("x = 6 * 7");
    tmux.cell("x");
    tmux.wait("the value", |s| count(s, "42") == 1);

    // Multi-line input, as Python's prompt takes it.
    tmux.cell("def f(n):");
    tmux.wait("the continuation prompt", |s| {
        s.lines().any(|l| l.starts_with("... "))
    });
    tmux.line("    return n + 1");
    tmux.line("");
    tmux.cell("f(99)");
    tmux.wait("f's value", |s| count(s, "100") == 1);

    // Output streams as it is produced.
    tmux.cell("import time");
    tmux.cell("for i in range(3): print('tick', i, flush=True); time.sleep(0.6)");
    let screen = tmux.wait("the first tick", |s| count(s, "tick 0") == 1);
    assert_eq!(
        count(&screen, "tick 2"),
        0,
        "printed before the cell ended:\n{screen}"
    );
    tmux.wait("the last tick", |s| count(s, "tick 2") == 1);

    // Ctrl-C interrupts the running cell; the session survives.
    tmux.cell("while True: time.sleep(0.1)");
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["C-c"]);
    tmux.wait("the interrupt", |s| s.contains("KeyboardInterrupt"));
    tmux.cell("x + 1");
    tmux.wait("the session's state", |s| count(s, "43") == 1);

    // Ctrl-C at the prompt discards the input.
    tmux.cell("'before'");
    tmux.wait("a value", |s| count(s, "'before'") == 1);
    tmux.keys(&["-l", "half typed"]);
    tmux.keys(&["C-c"]);
    tmux.wait("a fresh prompt", |s| {
        s.matches("KeyboardInterrupt").count() >= 2
    });
    tmux.cell("'after'");
    tmux.wait("the next value", |s| count(s, "'after'") == 1);

    // Ctrl-D closes the session and exits 0.
    tmux.keys(&["C-d"]);
    let screen = tmux.wait("the exit", |s| s.contains("EXITED="));
    assert!(screen.contains("session closed"), "{screen}");
    assert!(screen.contains("EXITED=0"), "{screen}");
}
