//! `sandfork`: the command-line client.
//!
//! Exit codes of `sandfork run`: the program's own exit code for `ok` and `error`; 124 for
//! `timeout`; 128+N when the program was killed by signal N (`killed`, `cpu_limit`,
//! `output_limit`, …); 125 when the run did not happen or the sandbox failed (`rejected`,
//! `internal_error`, daemon unreachable, protocol error).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use sandfork::client::{result_json, Client};
use sandfork::config::default_socket_path;
use sandfork_protocol::{LimitsRequest, RunResult, RunSpec, Status};

/// Exit code when sandfork itself could not run the program.
const EXIT_SANDFORK_FAILED: u8 = 125;
/// Exit code for a wall-clock timeout (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;

#[derive(Debug, Parser)]
#[command(name = "sandfork", version, about = "Client of the sandfork daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Python program in the sandbox
    Run(RunArgs),
    /// Exit 0 once the daemon is ready to run code
    Ping(PingArgs),
}

#[derive(Debug, Args)]
struct SocketArg {
    /// Daemon socket (default: $SANDFORK_SOCKET, else /run/sandfork/sandfork.sock as root or
    /// $XDG_RUNTIME_DIR/sandfork.sock)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl SocketArg {
    fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Profile to run under (default: the daemon's default profile)
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Wall-clock limit in milliseconds (may only lower the profile's)
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// Memory limit in MiB (may only lower the profile's)
    #[arg(long, value_name = "N")]
    memory_mb: Option<u64>,
    /// File whose content becomes the program's stdin (default: empty)
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Print exactly one JSON object with the whole result instead of the program's output
    #[arg(long)]
    json: bool,
    /// The program: a file, or - for standard input
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Arguments for the program (its sys.argv[1:])
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct PingArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Keep trying for this long before giving up (default: one try)
    #[arg(long, value_name = "N", default_value_t = 0)]
    wait_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sandfork: cannot start the runtime: {err}");
            return ExitCode::from(EXIT_SANDFORK_FAILED);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Ping(args) => ping(args).await,
        }
    })
}

async fn run(args: RunArgs) -> ExitCode {
    let code = match read_input(&args.file) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sandfork: cannot read {}: {err}", args.file.display());
            return ExitCode::from(EXIT_SANDFORK_FAILED);
        }
    };
    let stdin = match &args.stdin {
        Some(path) => match read_input(path) {
            Ok(data) => data,
            Err(err) => {
                eprintln!("sandfork: cannot read {}: {err}", path.display());
                return ExitCode::from(EXIT_SANDFORK_FAILED);
            }
        },
        None => Vec::new(),
    };
    let spec = RunSpec {
        profile: args.profile.clone(),
        code,
        stdin,
        argv: args.args.clone(),
        limits: LimitsRequest {
            timeout_ms: args.timeout_ms,
            memory_mb: args.memory_mb,
            output_bytes: None,
        },
    };
    let socket = args.socket.path();
    let result = async {
        let mut client = Client::connect(&socket).await?;
        client.run(spec).await
    }
    .await;
    let result = match result {
        Ok(result) => result,
        Err(err) => {
            eprintln!("sandfork: {err}");
            return ExitCode::from(EXIT_SANDFORK_FAILED);
        }
    };
    if args.json {
        println!("{}", result_json(&result));
    } else {
        let _ = std::io::stdout().write_all(&result.stdout);
        let _ = std::io::stderr().write_all(&result.stderr);
        if let Some(message) = result
            .message
            .as_deref()
            .filter(|_| result.status != Status::Error)
        {
            eprintln!("sandfork: {}: {message}", result.status.as_str());
        }
    }
    ExitCode::from(exit_code(&result))
}

fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data)?;
        Ok(data)
    } else {
        std::fs::read(path)
    }
}

/// Maps a result to this command's exit code (see the module docs).
fn exit_code(result: &RunResult) -> u8 {
    match (result.status, result.exit_code, result.signal) {
        (Status::Ok | Status::Error, Some(code), _) => u8::try_from(code).unwrap_or(1),
        (Status::Timeout, _, _) => EXIT_TIMEOUT,
        (Status::Rejected | Status::InternalError, _, _) => EXIT_SANDFORK_FAILED,
        (_, _, Some(signal)) => 128u8.saturating_add(u8::try_from(signal).unwrap_or(0)),
        _ => EXIT_SANDFORK_FAILED,
    }
}

async fn ping(args: PingArgs) -> ExitCode {
    let socket = args.socket.path();
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    loop {
        let attempt = async {
            let mut client = Client::connect(&socket).await?;
            client.ping().await
        }
        .await;
        let last = match attempt {
            Ok(status) if status.ready => {
                println!("ready");
                return ExitCode::SUCCESS;
            }
            Ok(status) => format!(
                "not ready: {}",
                status
                    .profiles
                    .iter()
                    .map(|p| format!(
                        "{} {}/{} zygotes",
                        p.name, p.zygotes_ready, p.zygotes_wanted
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            eprintln!("sandfork: {last}");
            return ExitCode::from(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
