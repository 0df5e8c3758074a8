//! `sandforkd`: the supervisor daemon. Foreground, logs to stderr.
//!
//! Start-up: config → mode (root: full; otherwise rootless, if unprivileged user namespaces
//! work, with a warning per lost protection) → runtime files → probe profiles → start zygotes →
//! bind the socket (or take the one systemd passed: socket activation) → tell systemd it is
//! ready (`Type=notify`) → serve until SIGTERM/SIGINT → stop accepting, let runs finish within
//! the grace period, kill the rest, remove the socket (unless systemd owns it), exit 0.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use sandfork::config::{default_socket_path, Config};
use sandfork::daemon::paths::Paths;
use sandfork::daemon::rootless;
use sandfork::daemon::server;
use sandfork::daemon::supervisor::{StartError, Supervisor};
use tokio::net::UnixListener;
use tracing::{info, warn};

/// Runs untrusted Python from pre-initialized, namespaced zygotes.
#[derive(Debug, Parser)]
#[command(name = "sandforkd", version)]
struct Args {
    /// TOML configuration file (default: built-in configuration)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Unix socket to listen on (default: the config's `socket`, else /run/sandfork/sandfork.sock
    /// as root or $XDG_RUNTIME_DIR/sandfork.sock; SANDFORK_SOCKET overrides the default)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// This machine's name among several behind one load balancer: session ids carry it
    /// (`s_<node>_<hex>`) so the balancer can route on them (default: the config's `node`;
    /// SANDFORK_NODE overrides the config)
    #[arg(long, value_name = "NAME", env = "SANDFORK_NODE")]
    node: Option<String>,
}

fn main() -> anyhow::Result<()> {
    sandfork::daemon::sys::pin_malloc_mmap_threshold();
    let args = Args::parse();
    // First, before any other thread exists: this unsets LISTEN_FDS and LISTEN_PID.
    let inherited = sandfork::daemon::sys::inherited_listener()
        .context("taking the socket systemd passed (LISTEN_FDS)")?;
    let mut config = Config::load_or_default(args.config.as_deref())?;
    if let Some(node) = &args.node {
        sandfork::config::check_node_name(node).map_err(anyhow::Error::msg)?;
        config.node = Some(node.clone());
    }
    sandfork::service::init(config.log_format);
    match sandfork::daemon::sys::raise_nofile_limit() {
        Ok(nofile) => info!(nofile, "open files limit"),
        Err(err) => warn!(cause = %err, "could not raise the open files limit"),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(args, config, inherited))
}

/// A socket systemd passed, and its path.
type Inherited = (std::os::unix::net::UnixListener, PathBuf);

async fn serve(args: Args, config: Config, inherited: Option<Inherited>) -> anyhow::Result<()> {
    // Root: the full sandbox. Anyone else: rootless mode, if user namespaces allow it.
    let rootless = rootless::is_rootless();
    if rootless {
        rootless::check_user_namespaces()?;
        info!(
            uid = nix::unistd::geteuid().as_raw(),
            "rootless mode: not root, so every run has this uid and no cgroups are used"
        );
        for loss in rootless::rootless_losses() {
            warn!("rootless: {loss}");
        }
        for (name, profile) in config.profiles.iter().filter(|(_, p)| p.processes > 0) {
            warn!(
                "rootless: profile {name}: {}",
                rootless::processes_setting(profile.processes, true)
            );
        }
    }
    let configured = args
        .socket
        .or_else(|| config.socket.clone())
        .unwrap_or_else(default_socket_path);
    // Socket activation: systemd's socket (sandforkd.socket's ListenStream) is the one served.
    let socket = match &inherited {
        Some((_, path)) => {
            if *path != configured {
                warn!(
                    passed = %path.display(),
                    configured = %configured.display(),
                    "systemd passed a socket at another path than the configured one; serving the passed one"
                );
            }
            path.clone()
        }
        None => configured,
    };
    // Whose the socket file is: ours to remove at exit, or systemd's (it removes it).
    let owns_socket = inherited.is_none();
    let runtime_dir = config
        .runtime_dir
        .clone()
        .unwrap_or_else(Paths::default_runtime_dir);
    let mut paths = Paths::discover(runtime_dir)?;
    paths.instance = sandfork::daemon::supervisor::instance_name(&socket);
    let interpreters_hint = || {
        format!(
            "rootless mode runs every profile's interpreter as uid {}: it, its libraries and \
             the runtime dir must be readable by that user (a pyenv under /root is not; \
             /usr/bin/python3 is)",
            nix::unistd::geteuid()
        )
    };
    info!(
        socket = %socket.display(),
        activated = !owns_socket,
        zygote_init = %paths.zygote_init.display(),
        runtime_dir = %paths.runtime_dir.display(),
        slots = config.slot_count(),
        "starting"
    );
    // Signals are handled from here on: a SIGTERM during start-up (a slow probe, zygotes that
    // do not come up) must still stop the daemon cleanly, not kill it with its cgroups behind.
    let shutdown = sandfork::service::shutdown_signal()?;
    tokio::pin!(shutdown);
    let listener = match inherited {
        Some((listener, _)) => {
            UnixListener::from_std(listener).context("serving the socket systemd passed")?
        }
        None => bind(&socket).await?,
    };
    let remove_socket = |socket: &Path| {
        if owns_socket {
            remove_socket(socket);
        }
    };
    // The same per-layer summary `sandfork doctor` prints.
    let doctor_config = config.clone();
    if let Ok(report) =
        tokio::task::spawn_blocking(move || sandfork::daemon::doctor::check(&doctor_config)).await
    {
        for line in sandfork::daemon::doctor::summary_lines(&report) {
            if report.full_isolation {
                info!(target: "sandfork::daemon::doctor", "{line}");
            } else {
                warn!(target: "sandfork::daemon::doctor", "{line}");
            }
        }
    }
    let starting = Supervisor::start(&config, paths);
    let supervisor = tokio::select! {
        started = starting => match started {
            Err(err @ StartError::Profile { .. }) if rootless => {
                remove_socket(&socket);
                return Err(anyhow::Error::new(err).context(interpreters_hint()));
            }
            Err(err) => {
                remove_socket(&socket);
                return Err(err.into());
            }
            Ok(supervisor) => supervisor,
        },
        _ = &mut shutdown => {
            remove_socket(&socket);
            info!("stopped during start-up");
            return Ok(());
        }
    };
    let stopped_early = tokio::select! {
        ready = supervisor.wait_ready(Duration::from_secs(120)) => {
            if ready {
                info!(status = ?supervisor.status(), "ready");
            } else {
                warn!(status = ?supervisor.status(), "not every profile has a zygote yet; serving anyway");
            }
            notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(
                if ready { "serving" } else { "serving; not every profile has a zygote yet" },
            )]);
            false
        }
        _ = &mut shutdown => true,
    };
    if !stopped_early {
        server::run(listener, std::sync::Arc::clone(&supervisor), shutdown).await;
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
    supervisor.shutdown().await;
    remove_socket(&socket);
    info!("stopped");
    Ok(())
}

/// Tells systemd (`NOTIFY_SOCKET`, set for `Type=notify` services; nothing without it).
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!(cause = %err, "could not notify systemd");
    }
}

fn remove_socket(socket: &Path) {
    if let Err(err) = std::fs::remove_file(socket) {
        warn!(socket = %socket.display(), cause = %err, "could not remove the socket");
    }
}

/// Binds the socket, replacing a stale one (left by a crash) but never a live daemon's.
async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            bail!("{} is in use by a running daemon", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
        info!(socket = %socket.display(), "removed a stale socket");
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    // Anyone may connect: every request is identified by SO_PEERCRED and a uid that maps to no
    // tenant is refused (permission_denied).
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("setting permissions of {}", socket.display()))?;
    Ok(listener)
}
