//! `sandfork`: the command-line client.
//!
//! Exit codes of `sandfork run`: the program's own exit code for `ok` and `error`; 124 for
//! `timeout`; 128+N when the program was killed by signal N (`killed`, `cpu_limit`,
//! `output_limit`, …); 125 when the run did not happen or the sandbox failed (`rejected`,
//! `internal_error`, daemon unreachable, protocol error).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use sandfork::config::default_socket_path;
use sandfork_protocol::client::Client;
use sandfork_protocol::LimitsRequest;

use sandfork::cli::run::EXIT_SANDFORK_FAILED;

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
    /// An interactive Python prompt over one sandboxed session (Ctrl-C interrupts a cell,
    /// Ctrl-D closes the session)
    Repl(ReplArgs),
    /// Serve the sandbox to an AI agent as MCP tools over stdio (run_python, session_open,
    /// session_execute, session_close, list_profiles), as the caller's own tenant
    Mcp(McpArgs),
    /// Exit 0 once the daemon is ready to run code
    Ping(PingArgs),
    /// Measure round trips through the daemon (bounded load; optional python3 -c baseline)
    Bench(BenchArgs),
    /// Print a new API key for a tenant, then the config fragment declaring it (with the key's
    /// SHA-256 only) to append to the config file
    Keygen(KeygenArgs),
    /// Check which isolation layers this host offers, one line each; exit 0 when full isolation
    /// is available, 1 when a layer is missing, 2 when the config cannot be read
    Doctor(DoctorArgs),
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
    /// Run on behalf of this tenant (only proxy uids may; see README "Tenants and keys")
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// Cap on captured stdout, and on stderr, each in bytes (may only lower the profile's)
    #[arg(long, value_name = "N")]
    output_bytes: Option<u64>,
    /// File whose content becomes the program's stdin (default: empty)
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// A local file written into the run's directory first, at PATH (default: its file name);
    /// repeatable
    #[arg(long = "file", value_name = "LOCAL[:PATH]")]
    file: Vec<String>,
    /// Call the program's main() and print its return value as JSON (after its own output)
    #[arg(long)]
    function: bool,
    /// Write the files the program left in its directory under DIR (relative paths only;
    /// never through a symlink)
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// An argument for the program, before the trailing ARGS (repeatable; for values that
    /// look like flags)
    #[arg(long, value_name = "VALUE", allow_hyphen_values = true)]
    arg: Vec<String>,
    /// Print exactly one JSON object with the whole result instead of the program's output
    #[arg(long, conflicts_with = "stream")]
    json: bool,
    /// Print the program's output as it is produced, not when the run ends
    #[arg(long)]
    stream: bool,
    /// The program: a file, or - for standard input
    #[arg(value_name = "FILE")]
    program: PathBuf,
    /// Arguments for the program (its sys.argv[1:])
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct ReplArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Profile of the session (default: the daemon's default profile)
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Wall-clock limit of each cell in milliseconds (may only lower the profile's)
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// Memory limit of the whole session in MiB (may only lower the profile's)
    #[arg(long, value_name = "N")]
    memory_mb: Option<u64>,
    /// Seconds without a cell after which the session ends (default: the daemon's)
    #[arg(long, value_name = "N")]
    idle_timeout_s: Option<u64>,
    /// Open the session on behalf of this tenant (only proxy uids may)
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
}

#[derive(Debug, Args)]
struct McpArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Profile of the tools' runs and sessions when the agent names none (default: the
    /// daemon's default profile)
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
}

#[derive(Debug, Args)]
struct PingArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Keep trying for this long before giving up (default: one try)
    #[arg(long, value_name = "N", default_value_t = 0)]
    wait_ms: u64,
}

/// `sandfork bench`: exits 0 when every run was `ok` with the expected stdout, 1 otherwise, 125
/// when the benchmark could not start (daemon unreachable, no interpreter for the baseline). The
/// last line of stdout is `p50_ms=… p90_ms=… p99_ms=… rps=… errors=…` (+ ` baseline_p50_ms=…
/// ratio=…`, + ` socket_p50_ms=… http_overhead_p50_ms=…` and ` shim_cpu_per_run_ms=…` over
/// HTTP, + ` floor_p50_ms=… cpu_per_run_ms=… floor_cpu_ms=…` with --floor); docs/BENCHMARKS.md
/// explains the rest.
#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Profile to run under (default: the daemon's default profile)
    #[arg(long, value_name = "P")]
    profile: Option<String>,
    /// Python source every request runs
    #[arg(long, value_name = "CODE", default_value = sandfork::cli::bench::DEFAULT_CODE)]
    code: String,
    /// Runs to send in total
    #[arg(long, value_name = "N", default_value_t = sandfork::cli::bench::DEFAULT_REQUESTS,
          value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Runs in flight at once, one connection each
    #[arg(long, value_name = "C", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Also time `python -I -B -X utf8 -c CODE` per request (min(N, 100) runs, one at a time);
    /// its stdout becomes the expected output
    #[arg(long)]
    baseline: bool,
    /// Open loop: start runs at this many per second in all (run i is due at i/R s; a run sent
    /// late for want of a free connection is timed from when it was due); default: closed
    /// loop, each connection sends its next run at once
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Interpreter for the baseline, resolved to its sys.executable (default: python3)
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Hard limit on the whole benchmark, in seconds; runs without a result by then are errors
    #[arg(long, value_name = "S", default_value_t = sandfork::cli::bench::DEFAULT_DEADLINE.as_secs())]
    deadline_s: u64,
    /// Session mode: the N requests are cells, in one live session per connection (C at most
    /// the profile's max_sessions); the same load through fork-per-run, opening a session and
    /// the first streamed byte are measured too
    #[arg(long)]
    session: bool,
    /// Send the runs through the HTTP shim at this URL (POST /v1/execute; http:// only); with
    /// --socket too, the same load goes over the socket first and the summary adds the shim's
    /// overhead
    #[arg(
        long,
        value_name = "URL",
        requires = "api_key",
        conflicts_with = "session"
    )]
    url: Option<String>,
    /// The API key for --url (default: $SANDFORK_API_KEY)
    #[arg(
        long,
        value_name = "KEY",
        env = "SANDFORK_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// With --url: a new TCP connection per run, instead of one kept alive per connection
    #[arg(long, requires = "url")]
    new_connection: bool,
    /// After the load, as many floor runs (the zygote forks a child that exits at once, same
    /// channels) over the socket; the summary adds their p50 and the CPU per run of both (the
    /// machine's, less the bench's own and the idle background: run it on the daemon's host,
    /// on a quiet machine)
    #[arg(long, conflicts_with = "session")]
    floor: bool,
}

/// A request rate: a positive, finite number of runs per second (at most a million).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e6 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate between 0 and 1000000 runs per second"
        )),
    }
}

impl BenchArgs {
    fn config(self) -> sandfork::cli::bench::BenchConfig {
        sandfork::cli::bench::BenchConfig {
            socket: self.socket.path(),
            profile: self.profile,
            code: self.code,
            requests: self.requests,
            concurrency: self.concurrency,
            baseline: self.baseline,
            rate: self.rate,
            python: self.python,
            deadline: Duration::from_secs(self.deadline_s),
            session: self.session,
            socket_too: self.url.is_some() && self.socket.socket.is_some(),
            floor: self.floor,
            http: self.url.map(|url| sandfork::cli::bench::http::HttpTarget {
                url,
                api_key: self.api_key.unwrap_or_default(),
                new_connection: self.new_connection,
            }),
        }
    }
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// The tenant's name (1 to 64 letters, digits, '.', '_' or '-')
    #[arg(long, value_name = "NAME")]
    tenant: String,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Daemon config whose uid range and profiles to check (default: the built-in config)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
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
            Command::Repl(args) => repl(args).await,
            Command::Mcp(args) => mcp(args).await,
            Command::Ping(args) => ping(args).await,
            Command::Bench(args) => {
                let config = args.config();
                match sandfork::cli::bench::run(&config).await {
                    Ok(report) => {
                        report
                            .describe(&config)
                            .iter()
                            .for_each(|l| println!("{l}"));
                        report
                            .error_examples()
                            .for_each(|e| eprintln!("sandfork: {e}"));
                        println!("{}", report.summary());
                        ExitCode::from(u8::from(report.errors() > 0))
                    }
                    Err(err) => {
                        eprintln!("sandfork: bench: {err}");
                        ExitCode::from(EXIT_SANDFORK_FAILED)
                    }
                }
            }
            Command::Keygen(args) => keygen(args),
            Command::Doctor(args) => {
                ExitCode::from(sandfork::daemon::doctor::cli(args.config.as_deref()))
            }
        }
    })
}

async fn run(args: RunArgs) -> ExitCode {
    let mut argv = args.arg;
    argv.extend(args.args);
    let options = sandfork::cli::run::RunOptions {
        socket: args.socket.path(),
        profile: args.profile,
        limits: LimitsRequest {
            timeout_ms: args.timeout_ms,
            memory_mb: args.memory_mb,
            output_bytes: args.output_bytes,
        },
        tenant: args.tenant,
        program: args.program,
        stdin: args.stdin,
        args: argv,
        files: args.file,
        function: args.function,
        out_dir: args.out_dir,
        json: args.json,
        stream: args.stream,
    };
    ExitCode::from(sandfork::cli::run::run(options).await)
}

async fn repl(args: ReplArgs) -> ExitCode {
    let options = sandfork::cli::repl::ReplOptions {
        socket: args.socket.path(),
        profile: args.profile,
        tenant: args.tenant,
        limits: LimitsRequest {
            timeout_ms: args.timeout_ms,
            memory_mb: args.memory_mb,
            output_bytes: None,
        },
        idle_timeout_s: args.idle_timeout_s,
    };
    match sandfork::cli::repl::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sandfork: repl: {err}");
            ExitCode::from(EXIT_SANDFORK_FAILED)
        }
    }
}

async fn mcp(args: McpArgs) -> ExitCode {
    use rmcp::ServiceExt;
    let tools = sandfork::mcp::SandforkMcp::new(
        args.socket.path(),
        args.profile,
        sandfork::mcp::Identity::Peer,
    );
    let served = match tools.serve(rmcp::transport::stdio()).await {
        Ok(served) => served
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sandfork: mcp: {err}");
            ExitCode::from(EXIT_SANDFORK_FAILED)
        }
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

/// `sandfork keygen`: the key alone on the first line, then the TOML fragment declaring the
/// tenant with the key's hash (`sandfork keygen --tenant acme | tail -n +2 >> sandfork.toml`).
fn keygen(args: KeygenArgs) -> ExitCode {
    if let Err(err) = sandfork::tenants::check_name(&args.tenant) {
        eprintln!("sandfork: {err}");
        return ExitCode::from(2);
    }
    let key = sandfork::tenants::generate_key();
    let fragment = sandfork::tenants::keygen_fragment(&args.tenant, &key);
    match write!(std::io::stdout().lock(), "{key}\n{fragment}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sandfork: cannot write the key: {err}");
            ExitCode::from(EXIT_SANDFORK_FAILED)
        }
    }
}
