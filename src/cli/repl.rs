//! `sandfork repl`: an interactive Python prompt whose cells run in one sandboxed session.
//!
//! Input is read like Python's own prompt: `>>> `, then `... ` while the input is unfinished
//! (open brackets or triple quotes, a trailing backslash, or a compound statement, which ends
//! at an empty line). Each complete input is one cell, its output streamed as it is produced
//! and its value echoed. Ctrl-C interrupts the running cell (KeyboardInterrupt in it; the
//! session survives) or, at the prompt, discards the input; Ctrl-D at the prompt closes the
//! session and exits.

use std::io::Write;
use std::path::PathBuf;

use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{
    Caller, Cell, LimitsRequest, OutputStream, Request, Response, SessionOp, SessionOpen,
    SessionReply, Status,
};
use tokio::sync::mpsc;

/// What `sandfork repl` was asked for.
#[derive(Debug, Clone)]
pub struct ReplOptions {
    pub socket: PathBuf,
    pub profile: Option<String>,
    pub tenant: Option<String>,
    pub limits: LimitsRequest,
    pub idle_timeout_s: Option<u64>,
}

/// Why the REPL stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("the session was not opened: {0}")]
    Refused(String),
}

/// Runs the REPL until Ctrl-D (Ok) or a failure; the session is closed on the way out.
pub async fn run(options: ReplOptions) -> Result<(), ReplError> {
    let mut client = Client::connect(&options.socket).await?;
    let caller = Caller {
        tenant: options.tenant.clone(),
        ..Caller::default()
    };
    let open = SessionOp::Open(SessionOpen {
        profile: options.profile.clone(),
        limits: options.limits.clone(),
        idle_timeout_s: options.idle_timeout_s,
    });
    let info = match client.session(caller.clone(), open).await? {
        SessionReply::Opened(info) => info,
        SessionReply::Refused { message, .. } => return Err(ReplError::Refused(message)),
        other => return Err(ReplError::Refused(format!("{other:?}"))),
    };
    eprintln!(
        "sandfork repl: session {} (profile {}). Ctrl-C interrupts a cell, Ctrl-D closes the session.",
        info.session_id, info.profile
    );
    let lines = stdin_lines();
    let outcome = prompt_loop(&mut client, &caller, &info.session_id, lines).await;
    let close = SessionOp::Close {
        session: info.session_id.clone(),
    };
    match client.session(caller, close).await {
        Ok(_) => eprintln!("sandfork repl: session closed"),
        Err(ClientError::Server(frame)) => eprintln!("sandfork repl: {}", frame.message),
        Err(err) => eprintln!("sandfork repl: closing failed: {err}"),
    }
    outcome
}

/// Lines of standard input, read on a thread of their own (`None`: end of input).
fn stdin_lines() -> mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || loop {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => {
                let _ = tx.send(None);
                return;
            }
            Ok(_) => {
                let line = line.trim_end_matches(['\n', '\r']).to_string();
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn prompt_loop(
    client: &mut Client,
    caller: &Caller,
    session: &str,
    mut lines: mpsc::UnboundedReceiver<Option<String>>,
) -> Result<(), ReplError> {
    let mut input = Input::default();
    loop {
        print_flush(if input.is_empty() { ">>> " } else { "... " });
        tokio::select! {
            line = lines.recv() => match line.flatten() {
                None => {
                    println!();
                    return Ok(());
                }
                Some(line) => {
                    input.push(line);
                    if input.is_complete() {
                        let code = input.take();
                        if code.trim().is_empty() {
                            continue;
                        }
                        if execute(client, caller, session, code).await? == Continue::No {
                            return Ok(());
                        }
                    }
                }
            },
            _ = tokio::signal::ctrl_c() => {
                println!("\nKeyboardInterrupt");
                input = Input::default();
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Continue {
    Yes,
    No,
}

/// Runs one cell, streaming its output; Ctrl-C meanwhile interrupts it.
async fn execute(
    client: &mut Client,
    caller: &Caller,
    session: &str,
    code: String,
) -> Result<Continue, ReplError> {
    let id = client.next_id();
    let cell = Cell {
        code: code.into_bytes(),
        stream: true,
        ..Cell::default()
    };
    let op = SessionOp::Execute {
        session: session.to_string(),
        cell,
    };
    client
        .send(&Request::Session {
            id,
            caller: caller.clone(),
            op,
        })
        .await?;
    loop {
        let frame = tokio::select! {
            frame = client.recv() => frame?,
            _ = tokio::signal::ctrl_c() => {
                let interrupt = Request::Session {
                    id: client.next_id(),
                    caller: caller.clone(),
                    op: SessionOp::Interrupt { session: session.to_string() },
                };
                client.send(&interrupt).await?;
                continue;
            }
        };
        match frame {
            Response::Output {
                id: got,
                stream,
                data,
            } if got == id => match stream {
                OutputStream::Stdout => write_flush(&mut std::io::stdout(), &data),
                OutputStream::Stderr => write_flush(&mut std::io::stderr(), &data),
            },
            Response::Done {
                id: got,
                result,
                extra,
            } if got == id => {
                let _ = std::io::stdout().write_all(&result.stdout);
                let _ = std::io::stderr().write_all(&result.stderr);
                if let Some(value) = &extra.value {
                    println!("{value}");
                }
                if !matches!(result.status, Status::Ok | Status::Error) || extra.session_ended {
                    let message = result.message.as_deref().unwrap_or("");
                    eprintln!("sandfork: {}: {message}", result.status.as_str());
                }
                if extra.session_ended {
                    return Ok(Continue::No);
                }
                return Ok(Continue::Yes);
            }
            Response::Error {
                id: Some(got),
                error,
            } if got == id => {
                eprintln!("sandfork: {}: {}", error.kind, error.message);
                let fatal = matches!(
                    error.kind,
                    sandfork_protocol::ErrorKind::SessionEnded
                        | sandfork_protocol::ErrorKind::SessionNotFound
                );
                return Ok(if fatal { Continue::No } else { Continue::Yes });
            }
            _ => continue, // the interrupt's acknowledgement, and the like
        }
    }
}

fn print_flush(text: &str) {
    write_flush(&mut std::io::stdout(), text.as_bytes());
}

fn write_flush(out: &mut dyn Write, data: &[u8]) {
    let _ = out.write_all(data);
    let _ = out.flush();
}

/// The lines of one input, as Python's prompt collects them.
#[derive(Debug, Default)]
pub struct Input {
    lines: Vec<String>,
}

impl Input {
    pub fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The input so far, and a fresh start.
    pub fn take(&mut self) -> String {
        let mut code = std::mem::take(&mut self.lines).join("\n");
        code.push('\n');
        code
    }

    /// Whether the input is a whole statement: brackets and triple quotes closed, no trailing
    /// backslash, and — for a compound statement (a line ending in `:`) — an empty last line.
    pub fn is_complete(&self) -> bool {
        let Some(last) = self.lines.last() else {
            return true;
        };
        let text = self.lines.join("\n");
        let scan = scan(&text);
        if scan.depth > 0 || scan.in_triple || last.ends_with('\\') {
            return false;
        }
        if scan.opens_block {
            return last.trim().is_empty() && self.lines.len() > 1;
        }
        true
    }
}

#[derive(Debug, Default)]
struct Scan {
    /// Open brackets at the end.
    depth: i32,
    /// Inside a triple-quoted string at the end.
    in_triple: bool,
    /// Some line, outside brackets and strings, ends with `:` (a compound statement).
    opens_block: bool,
}

/// A light tokenizer: strings (single, triple, escapes), comments, bracket depth, and
/// whether a logical line ends with a colon.
fn scan(text: &str) -> Scan {
    let chars: Vec<char> = text.chars().collect();
    let mut scan = Scan::default();
    let mut quote: Option<(char, bool)> = None; // (quote char, triple)
    let mut last_significant: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some((q, triple)) = quote {
            if c == '\\' {
                i += 2;
                continue;
            }
            if c == '\n' && !triple {
                quote = None; // an unterminated string: the compiler will say so
            } else if c == q && (!triple || chars.get(i + 1..i + 3) == Some(&[q, q][..])) {
                quote = None;
                i += if triple { 3 } else { 1 };
                last_significant = Some(q);
                continue;
            }
            i += 1;
            continue;
        }
        match c {
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '\'' | '"' => {
                let triple = chars.get(i + 1..i + 3) == Some(&[c, c][..]);
                quote = Some((c, triple));
                i += if triple { 3 } else { 1 };
                continue;
            }
            '(' | '[' | '{' => scan.depth += 1,
            ')' | ']' | '}' => scan.depth -= 1,
            '\n' if scan.depth <= 0 && last_significant == Some(':') => {
                scan.opens_block = true;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_significant = Some(c);
        }
        i += 1;
    }
    if scan.depth <= 0 && last_significant == Some(':') && quote.is_none() {
        scan.opens_block = true;
    }
    scan.in_triple = matches!(quote, Some((_, true)));
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(lines: &[&str]) -> bool {
        let mut input = Input::default();
        for line in lines {
            input.push(line.to_string());
        }
        input.is_complete()
    }

    #[test]
    fn simple_statements_are_complete_at_once() {
        assert!(complete(&["x = 1"]));
        assert!(complete(&["print('a: b')"]));
        assert!(complete(&["d = {'a': 1}"]));
        assert!(complete(&["x = 1  # a comment:"]));
        assert!(complete(&["s = '''one line'''"]));
    }

    #[test]
    fn open_brackets_strings_and_backslashes_continue() {
        assert!(!complete(&["f(1,"]));
        assert!(complete(&["f(1,", "  2)"]));
        assert!(!complete(&["s = '''start"]));
        assert!(complete(&["s = '''start", "end'''"]));
        assert!(!complete(&["x = 1 + \\"]));
        assert!(complete(&["x = 1 + \\", "2"]));
        assert!(
            !complete(&["d = {", "'a':"]),
            "a colon inside brackets is not a block"
        );
        assert!(complete(&["d = {", "'a': 1}"]));
    }

    #[test]
    fn compound_statements_end_at_an_empty_line() {
        assert!(!complete(&["def f(n):"]));
        assert!(!complete(&["def f(n):", "    return n"]));
        assert!(complete(&["def f(n):", "    return n", ""]));
        assert!(!complete(&[
            "for i in range(3):",
            "    if i:",
            "        print(i)"
        ]));
        assert!(complete(&[
            "for i in range(3):",
            "    if i:",
            "        print(i)",
            ""
        ]));
        assert!(!complete(&["class A:  # comment"]));
    }

    #[test]
    fn take_joins_the_lines() {
        let mut input = Input::default();
        input.push("def f():".into());
        input.push("    return 1".into());
        assert_eq!(input.take(), "def f():\n    return 1\n");
        assert!(input.is_empty());
    }
}
