//! The README's synopsis blocks are what the binaries accept: for each command, the flags its
//! block shows are exactly the flags its `--help` lists (issue 13, defect 5). No privileges.

use std::collections::BTreeSet;
use std::process::Command;

const README: &str = include_str!("../README.md");

/// The `--flags` in `text`.
fn flags(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let mut end = start + 2;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'-') {
            end += 1;
        }
        if end > start + 2 && bytes[start + 2].is_ascii_lowercase() {
            found.insert(text[start..end].to_string());
        }
        i = end;
    }
    found
}

/// The README's synopsis of `command`: the fenced block without a language tag (examples have
/// one, `sh` or `toml`) whose first line is the command and its options.
fn synopsis(command: &str) -> String {
    let mut blocks = README.split("```");
    let mut found = None;
    while let (Some(_prose), Some(block)) = (blocks.next(), blocks.next()) {
        let Some(body) = block.strip_prefix('\n') else {
            continue;
        };
        let first = body.lines().next().unwrap_or("");
        let rest = first.strip_prefix(command).unwrap_or("x");
        if rest.is_empty() || rest.starts_with(' ') {
            assert!(found.is_none(), "two synopses of {command:?}");
            found = Some(body.to_string());
        }
    }
    found.unwrap_or_else(|| panic!("no synopsis of {command:?} in the README"))
}

fn help(binary: &str, subcommand: Option<&str>) -> String {
    let path = match binary {
        "sandforkd" => env!("CARGO_BIN_EXE_sandforkd"),
        "sandfork" => env!("CARGO_BIN_EXE_sandfork"),
        "sandfork-http" => env!("CARGO_BIN_EXE_sandfork-http"),
        other => panic!("unknown binary {other}"),
    };
    let mut command = Command::new(path);
    command.args(subcommand).arg("--help");
    let output = command.output().expect("the binary runs");
    assert!(
        output.status.success(),
        "{binary} {subcommand:?} --help failed"
    );
    String::from_utf8(output.stdout).expect("utf-8 help")
}

#[test]
fn every_synopsis_matches_its_commands_help() {
    let commands: [(&str, Option<&str>); 9] = [
        ("sandforkd", None),
        ("sandfork-http", None),
        ("sandfork", Some("run")),
        ("sandfork", Some("repl")),
        ("sandfork", Some("mcp")),
        ("sandfork", Some("ping")),
        ("sandfork", Some("bench")),
        ("sandfork", Some("keygen")),
        ("sandfork", Some("doctor")),
    ];
    for (binary, subcommand) in commands {
        let name = match subcommand {
            Some(sub) => format!("{binary} {sub}"),
            None => binary.to_string(),
        };
        let documented = flags(&synopsis(&name));
        let mut accepted = flags(&help(binary, subcommand));
        accepted.remove("--help");
        accepted.remove("--version");
        assert_eq!(documented, accepted, "README synopsis vs `{name} --help`");
    }
}
