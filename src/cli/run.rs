//! `sandfork run`: one program in a fresh sandbox, from the command line — what `POST
//! /v1/execute` can do: script or function mode, input files, returned files written to a
//! directory, limits, streaming, and one JSON object with `--json`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{FileData, LimitsRequest, Mode, OutputStream, RunResult, RunSpec, Status};

use crate::output::RunOutput;

/// Exit code when sandfork itself could not run the program.
pub const EXIT_SANDFORK_FAILED: u8 = 125;
/// Exit code for a wall-clock timeout (as timeout(1)).
pub const EXIT_TIMEOUT: u8 = 124;

/// What to run and how, as the flags said.
#[derive(Debug, Default)]
pub struct RunOptions {
    pub socket: PathBuf,
    pub profile: Option<String>,
    pub limits: LimitsRequest,
    pub tenant: Option<String>,
    /// The program: a file, or `-` for standard input.
    pub program: PathBuf,
    /// A file whose content is the program's stdin.
    pub stdin: Option<PathBuf>,
    /// `sys.argv[1:]`.
    pub args: Vec<String>,
    /// `--file LOCAL[:PATH]`, as given.
    pub files: Vec<String>,
    /// Call `main()` and print its value as JSON.
    pub function: bool,
    /// Write the returned files under this directory.
    pub out_dir: Option<PathBuf>,
    pub json: bool,
    pub stream: bool,
}

/// Runs the program; returns the command's exit code (README, "sandfork run").
pub async fn run(options: RunOptions) -> u8 {
    let spec = match spec(&options) {
        Ok(spec) => spec,
        Err(why) => return failed(&options, "invalid_input", &why),
    };
    let stream = options.stream;
    let result = async {
        let mut client = Client::connect(&options.socket).await?;
        if stream {
            let print = |stream, data: &[u8]| {
                let _ = match stream {
                    OutputStream::Stdout => write_flush(&mut std::io::stdout(), data),
                    OutputStream::Stderr => write_flush(&mut std::io::stderr(), data),
                };
            };
            return client
                .stream_run(spec, print)
                .await
                .map(|(result, _)| result);
        }
        client.run(spec).await
    }
    .await;
    let result = match result {
        Ok(result) => result,
        Err(ClientError::Server(frame)) => {
            return failed(&options, frame.kind.as_str(), &frame.message)
        }
        Err(err) => return failed(&options, "daemon_unavailable", &err.to_string()),
    };
    let written = match &options.out_dir {
        Some(dir) => write_files(dir, &result.files),
        None => Ok(()),
    };
    if options.json {
        let output = RunOutput::new(result.clone(), options.function);
        println!("{}", serde_json::to_string(&output).unwrap_or_default());
    } else {
        let _ = std::io::stdout().write_all(&result.stdout);
        let _ = std::io::stderr().write_all(&result.stderr);
        if let Some(value) = result.result.as_deref().filter(|_| options.function) {
            // main()'s value, after what the program printed, as one line of JSON.
            let _ = writeln!(std::io::stdout(), "{value}");
        }
        if let Some(message) = result
            .message
            .as_deref()
            .filter(|_| result.status != Status::Error)
        {
            eprintln!("sandfork: {}: {message}", result.status.as_str());
        }
    }
    if let Err(why) = written {
        eprintln!("sandfork: --out-dir: {why}");
        return EXIT_SANDFORK_FAILED;
    }
    exit_code(&result)
}

/// The request the options describe, or why they describe none.
fn spec(options: &RunOptions) -> Result<RunSpec, String> {
    let code = read_input(&options.program)
        .map_err(|e| format!("cannot read {}: {e}", options.program.display()))?;
    let stdin = match &options.stdin {
        Some(path) => {
            read_input(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let files = options
        .files
        .iter()
        .map(|arg| input_file(arg))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunSpec {
        profile: options.profile.clone(),
        code,
        stdin,
        argv: options.args.clone(),
        limits: options.limits.clone(),
        mode: if options.function {
            Mode::Function
        } else {
            Mode::Script
        },
        files,
        tenant: options.tenant.clone(),
        ..RunSpec::default()
    })
}

/// `--file LOCAL[:PATH]`: the local file, at `PATH` in the run's directory (default: its file
/// name). An argument naming an existing file is LOCAL alone, even with a colon in it.
fn input_file(arg: &str) -> Result<FileData, String> {
    let (local, path) = match arg.rsplit_once(':') {
        Some((local, path)) if !Path::new(arg).exists() => (local, Some(path)),
        _ => (arg, None),
    };
    let path = match path {
        Some(path) => path.to_string(),
        None => Path::new(local)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("--file {arg}: give the path in the sandbox as LOCAL:PATH"))?
            .to_string(),
    };
    let content =
        std::fs::read(local).map_err(|e| format!("--file {arg}: cannot read {local}: {e}"))?;
    Ok(FileData { path, content })
}

/// Writes the returned files under `dir`, each only where its relative path says: a path that
/// is absolute, has `..`, or would pass through a symlink or a non-directory is refused, and no
/// file is written through a symlink. All that can be written is; the first refusal is
/// returned.
pub fn write_files(dir: &Path, files: &[FileData]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut first_error = None;
    for file in files {
        if let Err(why) = write_file(dir, file) {
            eprintln!("sandfork: --out-dir: {why}");
            first_error.get_or_insert(why);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn write_file(dir: &Path, file: &FileData) -> Result<(), String> {
    let relative = Path::new(&file.path);
    let parts: Vec<&std::ffi::OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(part) => Ok(part),
            _ => Err(format!(
                "{:?}: not a plain relative path; not written",
                file.path
            )),
        })
        .collect::<Result<_, _>>()?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(format!("{:?}: empty path; not written", file.path));
    };
    let mut at = dir.to_path_buf();
    for part in parents {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{:?}: {} is not a directory (or is a symlink); not written",
                    file.path,
                    at.display()
                ))
            }
            Err(_) => std::fs::create_dir(&at)
                .map_err(|e| format!("{:?}: cannot create {}: {e}", file.path, at.display()))?,
        }
    }
    at.push(name);
    let mut out: File = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&at)
        .map_err(|e| format!("{:?}: cannot write {}: {e}", file.path, at.display()))?;
    out.write_all(&file.content)
        .map_err(|e| format!("{:?}: cannot write {}: {e}", file.path, at.display()))
}

/// A run that did not happen: the reason on stderr, or with `--json` as the HTTP API's error
/// object (`{"error": {"kind", "message"}}`).
fn failed(options: &RunOptions, kind: &str, message: &str) -> u8 {
    if options.json {
        let error = serde_json::json!({ "error": { "kind": kind, "message": message } });
        println!("{error}");
    } else {
        eprintln!("sandfork: {message}");
    }
    EXIT_SANDFORK_FAILED
}

pub fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data)?;
        Ok(data)
    } else {
        std::fs::read(path)
    }
}

fn write_flush(out: &mut dyn Write, data: &[u8]) -> std::io::Result<()> {
    out.write_all(data)?;
    out.flush()
}

/// Maps a result to the command's exit code (README, "sandfork run").
pub fn exit_code(result: &RunResult) -> u8 {
    match (result.status, result.exit_code, result.signal) {
        (Status::Ok | Status::Error, Some(code), _) => u8::try_from(code).unwrap_or(1),
        (Status::Timeout, _, _) => EXIT_TIMEOUT,
        // SIGKILL's 137 whether the cgroup's OOM killer sent it or (rootless) the run died of a
        // MemoryError at its address-space limit; and for output over the cap, whether the
        // supervisor's SIGKILL stopped the program or it ended on its own just before.
        (Status::MemoryLimit | Status::OutputLimit, _, _) => 128 + 9,
        (Status::Rejected | Status::InternalError, _, _) => EXIT_SANDFORK_FAILED,
        (_, _, Some(signal)) => 128u8.saturating_add(u8::try_from(signal).unwrap_or(0)),
        _ => EXIT_SANDFORK_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> FileData {
        FileData {
            path: path.into(),
            content: content.as_bytes().to_vec(),
        }
    }

    #[test]
    fn returned_files_land_inside_the_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("target"), out.join("name")).unwrap();
        let files = [
            file("a/b/c.txt", "deep"),
            file("top.txt", "top"),
            file("../escape.txt", "no"),
            file("/etc/escape.txt", "no"),
            file("link/through.txt", "no"),
            file("name", "no"),
            file("", "no"),
        ];
        let err = write_files(&out, &files).unwrap_err();
        assert!(err.contains("escape"), "{err}");
        assert_eq!(
            std::fs::read_to_string(out.join("a/b/c.txt")).unwrap(),
            "deep"
        );
        assert_eq!(std::fs::read_to_string(out.join("top.txt")).unwrap(), "top");
        assert!(!dir.path().join("escape.txt").exists());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing went through a link"
        );
        assert!(std::fs::symlink_metadata(out.join("name"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn file_arguments_name_the_local_file_and_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("data.csv");
        std::fs::write(&local, "x").unwrap();
        let plain = input_file(local.to_str().unwrap()).unwrap();
        assert_eq!(
            (plain.path.as_str(), plain.content.as_slice()),
            ("data.csv", &b"x"[..])
        );
        let renamed = input_file(&format!("{}:in/d.csv", local.display())).unwrap();
        assert_eq!(renamed.path, "in/d.csv");
        let colon = dir.path().join("a:b");
        std::fs::write(&colon, "y").unwrap();
        assert_eq!(input_file(colon.to_str().unwrap()).unwrap().path, "a:b");
        assert!(input_file("/nonexistent/file")
            .unwrap_err()
            .contains("cannot read"));
    }
}
