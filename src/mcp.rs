//! The Model Context Protocol server: sandfork's runs and sessions as tools an LLM agent calls.
//!
//! One handler, two transports: `sandfork mcp` serves it over stdio for a local agent (acting as
//! the caller's own tenant on the daemon's socket), and `sandfork-http` at `POST /mcp` over MCP's
//! streamable HTTP transport (each request authenticated by its tenant's API key, the daemon
//! asked on that tenant's behalf). Built on the official SDK (`rmcp`): it speaks the protocol,
//! generates the tools' JSON Schemas from the argument types below (their doc comments are the
//! descriptions an agent reads), and carries the HTTP request's parts to the tools.
//!
//! Every tool answers with text for the model and the full result as structured content. A run
//! or cell that did not end `ok`, a refusal (a limit, the rate, a busy session) and a daemon that
//! cannot be reached are *tool errors* with the reason, never protocol errors: the agent sees
//! why, and a session stays usable after a failing cell.

use std::path::PathBuf;
#[cfg(feature = "http")]
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{
    Caller, Cell, FileData, LimitsRequest, RunSpec, SessionOp, SessionOpen, SessionReply,
};
use serde::Deserialize;

use crate::output::{CellOutput, RunOutput};
#[cfg(feature = "http")]
use crate::tenants::Tenants;

/// How the tools learn who is calling.
#[derive(Clone)]
pub enum Identity {
    /// The socket peer's own tenant (`sandfork mcp` over stdio).
    Peer,
    /// The tenant whose API key the HTTP request carries (`POST /mcp` on the shim).
    #[cfg(feature = "http")]
    ApiKey(Arc<Tenants>),
}

/// The MCP server's tools, for one daemon.
#[derive(Clone)]
pub struct SandforkMcp {
    socket: PathBuf,
    /// The profile a tool uses when the agent names none (`None`: the daemon's default).
    profile: Option<String>,
    identity: Identity,
    tool_router: ToolRouter<SandforkMcp>,
}

/// A file for the working directory, as text (what an agent has at hand).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TextFile {
    /// Relative path, `/`-separated, without `..` (e.g. `data/in.csv`).
    pub path: String,
    /// The file's content, as text (UTF-8).
    pub content: String,
}

/// `run_python`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunPython {
    /// Python 3 source code, run once as a script in a fresh, locked-down sandbox (no network,
    /// a private temporary working directory). Print what you want to see: stdout and stderr
    /// come back, with the exit status.
    pub code: String,
    /// Text the program reads on standard input (`input()`, `sys.stdin`).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Files written into the working directory before the code runs.
    #[serde(default)]
    pub files: Vec<TextFile>,
    /// Wall-clock limit in milliseconds; may only lower the server's (15000 by default).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Interpreter profile, e.g. one with numpy and pandas preloaded; `list_profiles` names
    /// them. Default: the server's.
    #[serde(default)]
    pub profile: Option<String>,
}

/// `session_open`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct SessionOpenArgs {
    /// Interpreter profile (`list_profiles`). Default: the server's.
    #[serde(default)]
    pub profile: Option<String>,
    /// Wall-clock limit of each cell in milliseconds; may only lower the server's.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Seconds without a cell after which the session ends (default: the server's, 600).
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
}

/// `session_execute`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SessionExecute {
    /// The session's id, as `session_open` returned it.
    pub session_id: String,
    /// Python source run in the session: variables, imports and files of earlier cells are
    /// still there. The value of a last expression is returned as `value` (as a REPL shows
    /// it).
    pub code: String,
    /// Text this cell reads on standard input.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// `session_close`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SessionClose {
    /// The session's id.
    pub session_id: String,
}

#[tool_router]
impl SandforkMcp {
    /// The tools against the daemon at `socket`.
    pub fn new(socket: PathBuf, profile: Option<String>, identity: Identity) -> SandforkMcp {
        SandforkMcp {
            socket,
            profile,
            identity,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Run Python code once in a fresh sandbox and return its output. Nothing is \
                       kept afterwards; use session_open for state kept between calls."
    )]
    async fn run_python(
        &self,
        Parameters(args): Parameters<RunPython>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = match self.caller(&ctx) {
            Ok(caller) => caller,
            Err(failed) => return Ok(failed),
        };
        let spec = RunSpec {
            profile: args.profile.or_else(|| self.profile.clone()),
            code: args.code.into_bytes(),
            stdin: args.stdin.map(String::into_bytes).unwrap_or_default(),
            limits: LimitsRequest {
                timeout_ms: args.timeout_ms,
                ..LimitsRequest::default()
            },
            files: text_files(args.files),
            tenant: caller.tenant,
            request_id: caller.request_id,
            client_addr: caller.client_addr,
            ..RunSpec::default()
        };
        let result = async {
            let mut client = Client::connect(&self.socket).await?;
            client.run(spec).await
        }
        .await;
        Ok(match result {
            Ok(result) => {
                let ok = result.status == sandfork_protocol::Status::Ok;
                let text = describe(&result.stdout, &result.stderr, &result, None);
                answer(text, json(RunOutput::new(result, false)), ok)
            }
            Err(err) => failure(&err),
        })
    }

    #[tool(
        description = "Open a Python session: one sandboxed interpreter that keeps its variables, \
                       imports and files from one session_execute to the next. Returns \
                       session_id. Close it with session_close when done."
    )]
    async fn session_open(
        &self,
        Parameters(args): Parameters<SessionOpenArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = SessionOp::Open(SessionOpen {
            profile: args.profile.or_else(|| self.profile.clone()),
            limits: LimitsRequest {
                timeout_ms: args.timeout_ms,
                ..LimitsRequest::default()
            },
            idle_timeout_s: args.idle_timeout_s,
        });
        Ok(match self.session(&ctx, op).await {
            Ok(SessionReply::Opened(info)) => {
                let text = format!(
                    "session {} is open (profile {}; it ends after {} s without a cell)",
                    info.session_id, info.profile, info.idle_timeout_s
                );
                let value = serde_json::json!({
                    "session_id": info.session_id,
                    "profile": info.profile,
                    "idle_timeout_s": info.idle_timeout_s,
                    "expires_at_ms": info.expires_at_ms,
                });
                answer(text, value, true)
            }
            Ok(SessionReply::Refused { message, rejection }) => {
                refused(&format!("{}: {message}", rejection.kind))
            }
            Ok(other) => refused(&format!("unexpected answer {other:?}")),
            Err(failed) => failed,
        })
    }

    #[tool(
        description = "Run Python code in an open session (see session_open). Earlier cells' \
                       variables are there; the value of the last expression comes back as \
                       `value`, with stdout and stderr."
    )]
    async fn session_execute(
        &self,
        Parameters(args): Parameters<SessionExecute>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = match self.caller(&ctx) {
            Ok(caller) => caller,
            Err(failed) => return Ok(failed),
        };
        let cell = Cell {
            code: args.code.into_bytes(),
            stdin: args.stdin.map(String::into_bytes).unwrap_or_default(),
            ..Cell::default()
        };
        let result = async {
            let mut client = Client::connect(&self.socket).await?;
            client
                .execute_cell(caller, &args.session_id, cell, |_, _| {})
                .await
        }
        .await;
        Ok(match result {
            Ok((result, extra)) => {
                let ok = result.status == sandfork_protocol::Status::Ok;
                let text = describe(
                    &result.stdout,
                    &result.stderr,
                    &result,
                    extra.value.as_deref(),
                );
                answer(text, json(CellOutput::new(result, extra, false)), ok)
            }
            Err(err) => failure(&err),
        })
    }

    #[tool(description = "Close a session: its interpreter and files are gone.")]
    async fn session_close(
        &self,
        Parameters(args): Parameters<SessionClose>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = SessionOp::Close {
            session: args.session_id.clone(),
        };
        Ok(match self.session(&ctx, op).await {
            Ok(_) => answer(
                format!("session {} is closed", args.session_id),
                serde_json::json!({ "session_id": args.session_id, "closed": true }),
                true,
            ),
            Err(failed) => failed,
        })
    }

    #[tool(
        description = "List the interpreter profiles (e.g. one with numpy and pandas) and \
                       whether each is ready."
    )]
    async fn list_profiles(&self) -> Result<CallToolResult, ErrorData> {
        let status = async {
            let mut client = Client::connect(&self.socket).await?;
            client.status().await
        }
        .await;
        Ok(match status {
            Ok((status, sessions)) => {
                let profiles: Vec<serde_json::Value> = status
                    .profiles
                    .iter()
                    .map(|p| {
                        let pool = sessions.iter().find(|s| s.profile == p.name);
                        serde_json::json!({
                            "name": p.name,
                            "ready": p.zygotes_ready > 0,
                            "sessions_live": pool.map_or(0, |s| s.live),
                            "sessions_max": pool.map_or(0, |s| s.max),
                        })
                    })
                    .collect();
                let names: Vec<&str> = status.profiles.iter().map(|p| p.name.as_str()).collect();
                answer(
                    format!("profiles: {}", names.join(", ")),
                    serde_json::json!({ "profiles": profiles }),
                    true,
                )
            }
            Err(err) => failure(&err),
        })
    }
}

impl SandforkMcp {
    /// Who the daemon is asked for: over HTTP the key's tenant (every request carries its key;
    /// the route refused those without one), over stdio the socket peer itself.
    #[allow(clippy::result_large_err)] // the error is the tool's answer, returned at once
    #[cfg_attr(not(feature = "http"), allow(unused_variables))] // ctx: the HTTP request's parts
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, CallToolResult> {
        let request_id = Some(crate::service::new_request_id("m"));
        match &self.identity {
            Identity::Peer => Ok(Caller {
                request_id,
                ..Caller::default()
            }),
            #[cfg(feature = "http")]
            Identity::ApiKey(tenants) => {
                // The SDK hands each tool the HTTP request's parts (the `http` crate's, which
                // axum re-exports).
                let parts = ctx.extensions.get::<axum::http::request::Parts>();
                let tenant = parts
                    .and_then(|p| crate::http::auth::authenticate(tenants, &p.headers).ok())
                    .ok_or_else(|| refused("unauthorized: the request carries no valid API key"))?;
                Ok(Caller {
                    tenant: Some(tenant),
                    request_id,
                    client_addr: None,
                })
            }
        }
    }

    /// A session operation other than a cell, its failure already the tool's answer.
    async fn session(
        &self,
        ctx: &RequestContext<RoleServer>,
        op: SessionOp,
    ) -> Result<SessionReply, CallToolResult> {
        let caller = self.caller(ctx)?;
        let reply = async {
            let mut client = Client::connect(&self.socket).await?;
            client.session(caller, op).await
        }
        .await;
        reply.map_err(|err| failure(&err))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandforkMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sandfork", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs Python in locked-down sandboxes (no network, a private temporary \
                 directory, limits on time, memory and output). run_python for one-off code; \
                 session_open, session_execute and session_close for state kept between calls."
                    .to_string(),
            )
    }
}

fn text_files(files: Vec<TextFile>) -> Vec<FileData> {
    files
        .into_iter()
        .map(|f| FileData {
            path: f.path,
            content: f.content.into_bytes(),
        })
        .collect()
}

fn json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// What the model reads: the output, the value, and how it ended when not `ok` (a refusal with
/// its kind).
fn describe(
    stdout: &[u8],
    stderr: &[u8],
    result: &sandfork_protocol::RunResult,
    value: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    if !stdout.is_empty() {
        parts.push(String::from_utf8_lossy(stdout).into_owned());
    }
    if !stderr.is_empty() {
        parts.push(format!("[stderr]\n{}", String::from_utf8_lossy(stderr)));
    }
    if let Some(value) = value {
        parts.push(format!("[value] {value}"));
    }
    if result.status != sandfork_protocol::Status::Ok {
        let why = result.message.as_deref().unwrap_or("");
        let status = match &result.rejection {
            Some(rejection) => format!("rejected ({})", rejection.kind),
            None => result.status.as_str().to_string(),
        };
        parts.push(format!("[status] {status}: {why}"));
    }
    if parts.is_empty() {
        return "(no output)".into();
    }
    let mut text = String::new();
    for part in parts {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&part);
    }
    text
}

/// A tool's answer: text for the model, the full JSON as structured content.
fn answer(text: String, value: serde_json::Value, ok: bool) -> CallToolResult {
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(text)];
    result.is_error = Some(!ok);
    result
}

/// A tool error with the reason.
fn refused(why: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(why.to_string())])
}

/// A daemon that refused the request or cannot be reached, as a tool error.
fn failure(err: &ClientError) -> CallToolResult {
    match err {
        ClientError::Server(frame) => refused(&format!("{}: {}", frame.kind, frame.message)),
        other => refused(&format!("the sandbox is unavailable: {other}")),
    }
}
