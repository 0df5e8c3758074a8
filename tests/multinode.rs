//! Two nodes behind a real nginx configured as the docs say (`deploy/nginx/`): each node a root
//! `sandforkd` with its own `node` name and a `sandfork-http`, all on loopback. Runs spread over
//! both; a session's requests reach the node that holds it (its id names the node); when a node
//! is killed, its sessions answer `session_ended` through the balancer, the other node keeps
//! serving runs and sessions, and the killed node comes back clean.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{send, shim_url, spawn_shim, Answer, SHIM_UID};
use common::{privileged, read_log, runtime, start_daemon_process, test_config, wait_ready};
use serde_json::{json, Value};

const KEY: &str = "sk-multinode-test-key";

/// A node: its daemon and shim, started from the test's thread (they die with it).
struct Node {
    name: &'static str,
    dir: PathBuf,
    daemon: Child,
    shim: Child,
    url: String,
}

impl Node {
    fn start(root: &Path, name: &'static str, uid_base: u32) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let extra = format!(
            "node = \"{name}\"\nuid_base = {uid_base}\nproxy_uids = [{SHIM_UID}]\n\
             [[tenants]]\nname = \"acme\"\napi_key_sha256 = [\"{}\"]\n[tenants.policy]\nmax_sessions = 8\n",
            sandfork::tenants::hash_key(KEY)
        );
        std::fs::write(dir.join("config.toml"), test_config(&dir, &extra)).unwrap();
        let (daemon, shim, url) = Node::processes(&dir);
        Node {
            name,
            dir,
            daemon,
            shim,
            url,
        }
    }

    fn processes(dir: &Path) -> (Child, Child, String) {
        let (config, log) = (dir.join("config.toml"), dir.join("daemon.log"));
        let daemon = start_daemon_process(&config, &log);
        wait_ready(&dir.join("sandfork.sock"), &log, Duration::from_secs(90));
        let shim_log = dir.join("shim.log");
        let shim = spawn_shim(&config, &[], &shim_log, SHIM_UID);
        let url = shim_url(&shim_log);
        (daemon, shim, url)
    }

    /// SIGKILL to both processes, as when the machine is lost.
    fn kill(&mut self) {
        for child in [&mut self.daemon, &mut self.shim] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again with the same config (its shim listens on a new port).
    fn restart(&mut self) {
        let (daemon, shim, url) = Node::processes(&self.dir);
        (self.daemon, self.shim, self.url) = (daemon, shim, url);
    }

    fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap()
    }

    /// Runs this node's daemon finished, from its own /metrics (loopback, not the balancer).
    async fn runs(&self) -> u64 {
        let text = common::http::client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("sandfork_runs_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Node {
    /// A graceful stop, so the daemon removes its cgroups.
    fn drop(&mut self) {
        for child in [&mut self.shim, &mut self.daemon] {
            if child.try_wait().ok().flatten().is_none() {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(15);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// nginx with deploy/nginx/ as written, but for the nodes' loopback addresses and its port.
struct Nginx {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Nginx {
    fn start(root: &Path, nodes: &[&Node]) -> Nginx {
        let dir = root.join("nginx");
        std::fs::create_dir_all(&dir).unwrap();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
        let proxy = dir.join("sandfork-proxy.conf");
        std::fs::copy(deploy.join("sandfork-proxy.conf"), &proxy).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = std::fs::read_to_string(deploy.join("sandfork.conf"))
            .unwrap()
            .replace("/etc/nginx/sandfork-proxy.conf", proxy.to_str().unwrap())
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        for (placeholder, node) in ["10.0.0.1:8080", "10.0.0.2:8080"].iter().zip(nodes) {
            conf = conf.replace(placeholder, &format!("127.0.0.1:{}", node.port()));
        }
        std::fs::write(dir.join("sandfork.conf"), conf).unwrap();
        let mut command = common::nginx_command(&dir, &dir.join("sandfork.conf"));
        command
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        sandfork::daemon::sys::die_with_parent(&mut command, libc::SIGTERM);
        let child = command
            .spawn()
            .expect("nginx (Debian's package; scripts/test installs it)");
        let nginx = Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}{}",
                read_log(&nginx.dir.join("stderr.log")),
                read_log(&nginx.dir.join("error.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(base: &str, path: &str, body: Value) -> Answer {
    common::http::post(base, path, Some(KEY), body).await
}

/// Opens a session through the balancer; returns its id.
async fn open(lb: &str) -> String {
    let opened = post(lb, "/v1/sessions", json!({})).await;
    assert_eq!(opened.status, 201, "{}", opened.body);
    opened.body["session_id"].as_str().unwrap().to_string()
}

async fn cell(lb: &str, id: &str, code: &str) -> Answer {
    post(
        lb,
        &format!("/v1/sessions/{id}/execute"),
        json!({ "code": code }),
    )
    .await
}

/// Closes a session through the balancer.
async fn close(lb: &str, id: &str) {
    let closed = common::http::client()
        .delete(format!("{lb}/v1/sessions/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 204, "closing {id}");
}

/// Which node a session id names: `s_<node>_<hex>`.
fn node_of(id: &str) -> &str {
    id.strip_prefix("s_")
        .and_then(|rest| rest.rsplit_once('_'))
        .map(|(node, _)| node)
        .unwrap_or_else(|| panic!("no node in session id {id}"))
}

fn nginx_installed() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn two_nodes_behind_nginx_share_runs_keep_sessions_and_survive_a_lost_node() {
    if !privileged("two_nodes_behind_nginx_share_runs_keep_sessions_and_survive_a_lost_node") {
        return;
    }
    if !nginx_installed() {
        common::skip::skip(
            "two_nodes_behind_nginx_share_runs_keep_sessions_and_survive_a_lost_node",
            "needs nginx (apt-get install nginx; scripts/test installs it)",
        );
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("sandfork-multinode-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = Node::start(root.path(), "a", 300_000);
    let mut b = Node::start(root.path(), "b", 310_000);
    let nginx = Nginx::start(root.path(), &[&a, &b]);
    let lb = nginx.url.clone();
    runtime().block_on(async {
        // 200 runs through the balancer, 10 at a time: every one answered, spread over both.
        let before = (a.runs().await, b.runs().await);
        let mut answered = 0;
        for batch in 0..20 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..10 {
                let (lb, n) = (lb.clone(), batch * 10 + i);
                tasks.spawn(async move {
                    let answer =
                        post(&lb, "/v1/execute", json!({ "code": format!("print({n})") })).await;
                    (n, answer)
                });
            }
            while let Some(done) = tasks.join_next().await {
                let (n, answer) = done.unwrap();
                assert_eq!(answer.status, 200, "run {n}: {}", answer.body);
                assert_eq!(answer.body["stdout"], format!("{n}\n"), "run {n}");
                answered += 1;
            }
        }
        assert_eq!(answered, 200);
        let on_a = a.runs().await - before.0;
        let on_b = b.runs().await - before.1;
        assert_eq!(
            on_a + on_b,
            200,
            "runs counted by the nodes: a {on_a}, b {on_b}"
        );
        assert!(on_a >= 50 && on_b >= 50, "not spread: a {on_a}, b {on_b}");

        // Sessions opened through the balancer land on both nodes, and each one's cells reach
        // the node that holds it (two cells sharing a variable).
        let mut sessions = Vec::new();
        for _ in 0..4 {
            sessions.push(open(&lb).await);
        }
        let nodes: std::collections::BTreeSet<&str> =
            sessions.iter().map(|id| node_of(id)).collect();
        assert_eq!(
            nodes.into_iter().collect::<Vec<_>>(),
            ["a", "b"],
            "{sessions:?}"
        );
        for (i, id) in sessions.iter().enumerate() {
            let first = cell(&lb, id, &format!("x = {i} * 10")).await;
            assert_eq!(first.status, 200, "{id}: {}", first.body);
            for _ in 0..3 {
                let second = cell(&lb, id, "x + 2").await;
                assert_eq!(second.status, 200, "{id}: {}", second.body);
                assert_eq!(second.body["value"], format!("{}", i * 10 + 2), "{id}");
            }
        }
        // Per-node figures are not served through the balancer.
        let metrics = send(common::http::client().get(format!("{lb}/metrics"))).await;
        assert_eq!(metrics.status, 404);

        // Node b is lost: its sessions end with a clear answer through the balancer, node a
        // keeps its sessions and serves every run.
        b.kill();
        for id in &sessions {
            let answer = cell(&lb, id, "x + 2").await;
            if node_of(id) == b.name {
                assert_eq!(answer.status, 404, "{id}: {}", answer.body);
                assert_eq!(answer.kind(), "session_ended", "{id}: {}", answer.body);
                assert!(
                    answer.body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("node"),
                    "{}",
                    answer.body
                );
            } else {
                assert_eq!(answer.status, 200, "{id}: {}", answer.body);
                assert!(answer.body["value"].as_str().unwrap().ends_with('2'));
            }
        }
        let before_a = a.runs().await;
        for n in 0..20 {
            let answer = post(&lb, "/v1/execute", json!({ "code": format!("print({n})") })).await;
            assert_eq!(answer.status, 200, "run {n} with b lost: {}", answer.body);
            assert_eq!(answer.body["stdout"], format!("{n}\n"));
        }
        assert_eq!(a.runs().await - before_a, 20);
        let opened = open(&lb).await;
        assert_eq!(node_of(&opened), a.name);
        close(&lb, &opened).await;

        // b comes back (on a new port, as a replaced machine would): it starts clean, knows
        // nothing of its old sessions, and serves runs again.
        b.restart();
        let fresh = post(
            &b.url,
            "/v1/execute",
            json!({ "code": "print('b is back')" }),
        )
        .await;
        assert_eq!(fresh.body["stdout"], "b is back\n", "{}", fresh.body);
        let old_b = sessions.iter().find(|id| node_of(id) == b.name).unwrap();
        let gone = post(
            &b.url,
            &format!("/v1/sessions/{old_b}/execute"),
            json!({ "code": "1" }),
        )
        .await;
        assert_eq!(gone.status, 404, "{}", gone.body);
        for id in sessions.iter().filter(|id| node_of(id) == a.name) {
            close(&lb, id).await;
        }
    });
    drop(nginx);
    assert!(
        !read_log(&b.dir.join("daemon.log")).contains("panicked"),
        "{}",
        read_log(&b.dir.join("daemon.log"))
    );
}
