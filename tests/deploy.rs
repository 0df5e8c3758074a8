//! The deployment files are what they claim: every Kubernetes manifest validates against the
//! Kubernetes API's own schemas (kubernetes-validate, strict: unknown fields fail), the router's
//! nginx config in the cluster is the one tests/multinode.rs runs (same proxy settings, same
//! session route) and nginx accepts it, and the EC2 user data matches cloud-init's schema.
//! The tools come from scripts/tools-venv (SANDFORK_TOOLS_PYTHON); nginx and cloud-init's schema
//! from Debian's packages.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KUBERNETES_VERSION: &str = "1.30.0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn kubernetes_validate(python: &Path, files: &[PathBuf]) -> Output {
    Command::new(python.parent().unwrap().join("kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("kubernetes-validate")
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let Some(python) = common::tools_python("kubernetes_manifests_validate_strictly") else {
        return;
    };
    let files = manifests();
    let kinds = [
        "namespace",
        "configmap",
        "statefulset",
        "service",
        "deployment",
        "poddisruptionbudget",
        "horizontalpodautoscaler",
        "ingress",
    ];
    let output = kubernetes_validate(&python, &files);
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    for kind in kinds {
        assert!(
            report.contains(&format!("resource {kind}/")),
            "no {kind}: {report}"
        );
    }
    // A misspelt field is caught: the check can fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let statefulset = std::fs::read_to_string(repo().join("deploy/kubernetes/20-statefulset.yaml"))
        .unwrap()
        .replace("podManagementPolicy:", "podManagmentPolicy:");
    std::fs::write(&bad, statefulset).unwrap();
    let output = kubernetes_validate(&python, &[bad]);
    assert!(!output.status.success(), "{}", text(&output));
}

/// Writes each `data` entry of the ConfigMap `name` in `file` to `dir`.
fn config_map_files(python: &Path, file: &Path, name: &str, dir: &Path) {
    let script = "import sys, yaml, pathlib\n\
        for doc in yaml.safe_load_all(open(sys.argv[1])):\n\
        \x20   if doc and doc['kind'] == 'ConfigMap' and doc['metadata']['name'] == sys.argv[2]:\n\
        \x20       for key, value in doc['data'].items():\n\
        \x20           pathlib.Path(sys.argv[3], key).write_text(value)\n";
    let output = Command::new(python)
        .args(["-c", script])
        .arg(file)
        .arg(name)
        .arg(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn the_clusters_router_is_the_tested_nginx_config() {
    let Some(python) = common::tools_python("the_clusters_router_is_the_tested_nginx_config")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    config_map_files(
        &python,
        &repo().join("deploy/kubernetes/30-router.yaml"),
        "sandfork-router",
        dir.path(),
    );
    let proxy = std::fs::read_to_string(dir.path().join("sandfork-proxy.inc")).unwrap();
    let vm_proxy =
        std::fs::read_to_string(repo().join("deploy/nginx/sandfork-proxy.conf")).unwrap();
    assert_eq!(
        proxy, vm_proxy,
        "the cluster's proxy settings drifted from deploy/nginx/"
    );
    let router = std::fs::read_to_string(dir.path().join("sandfork.conf")).unwrap();
    let vm = std::fs::read_to_string(repo().join("deploy/nginx/sandfork.conf")).unwrap();
    // The same session route, the same refusal of /metrics, the same answer for a lost node.
    for shared in [
        r#""~^/v1/sessions/s_(?<node>[a-z0-9-]+)_[0-9a-f]{32}(/.*)?$" $node;"#,
        "location ~ ^/v1/sessions/s_ {",
        "error_page 502 504 = @sandfork_session_lost;",
        "location = /metrics {",
        r#"return 404 '{"error": {"kind": "session_ended", "message": "the node holding this session does not answer: the session ended with it"}}\n';"#,
    ] {
        assert!(router.contains(shared), "the router lacks {shared}");
        assert!(vm.contains(shared), "deploy/nginx lacks {shared}");
    }
    if !common::privileged("the_clusters_router_is_the_tested_nginx_config") {
        return;
    }
    // nginx accepts it, with the cluster's DNS and include path replaced by local ones.
    let conf = dir.path().join("router.conf");
    std::fs::write(
        &conf,
        router
            .replace(
                "resolver kube-dns.kube-system.svc.cluster.local",
                "resolver 127.0.0.1",
            )
            .replace(
                "/etc/nginx/conf.d/sandfork-proxy.inc",
                dir.path().join("sandfork-proxy.inc").to_str().unwrap(),
            ),
    )
    .unwrap();
    let output = common::nginx_command(dir.path(), &conf)
        .arg("-t")
        .output()
        .expect("nginx");
    assert!(output.status.success(), "{}", text(&output));
}

/// cloud-init's JSON schema, from Debian's cloud-init package (downloaded, not installed).
fn cloud_init_schema() -> PathBuf {
    let dir = repo().join("target/cloud-init");
    let schema = dir.join(
        "root/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json",
    );
    if schema.exists() {
        return schema;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let download = Command::new("apt-get")
        .args(["-qq", "download", "cloud-init"])
        .current_dir(&dir)
        .output()
        .expect("apt-get");
    assert!(download.status.success(), "{}", text(&download));
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the cloud-init package");
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root"))
        .output()
        .unwrap();
    assert!(unpack.status.success(), "{}", text(&unpack));
    schema
}

#[test]
fn ec2_user_data_matches_cloud_inits_schema() {
    let Some(python) = common::tools_python("ec2_user_data_matches_cloud_inits_schema") else {
        return;
    };
    if !common::privileged("ec2_user_data_matches_cloud_inits_schema") {
        return;
    }
    let schema = cloud_init_schema();
    // The schema, and every top-level key known to it (it allows unknown ones, so a misspelt
    // key would pass it silently).
    let script = "import json, sys, yaml, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        text = open(sys.argv[2]).read()\n\
        assert text.startswith('#cloud-config\\n'), 'no #cloud-config header'\n\
        doc = yaml.safe_load(text)\n\
        errors = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]\n\
        raw = open(sys.argv[1]).read()\n\
        errors += ['unknown key ' + k for k in doc if '\"' + k + '\"' not in raw]\n\
        print('\\n'.join(errors))\n\
        sys.exit(1 if errors else 0)\n";
    let check = |file: &Path| {
        Command::new(&python)
            .args(["-c", script])
            .arg(&schema)
            .arg(file)
            .output()
            .unwrap()
    };
    let output = check(&repo().join("deploy/aws/user-data.yaml"));
    assert!(output.status.success(), "{}", text(&output));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let user_data = std::fs::read_to_string(repo().join("deploy/aws/user-data.yaml"))
        .unwrap()
        .replace("runcmd:", "run_cmd:");
    std::fs::write(&bad, user_data).unwrap();
    assert!(!check(&bad).status.success());
}
