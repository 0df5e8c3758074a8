//! `sandfork keygen`: the key alone on the first line, then a config fragment that declares the
//! tenant with the key's hash and never the key. Needs no daemon and no root.

use std::process::Command;

use sandfork::config::Config;
use sandfork::tenants::{hash_key, Tenants};

fn keygen(tenant: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .args(["keygen", "--tenant", tenant])
        .output()
        .expect("sandfork runs")
}

#[test]
fn keygen_prints_a_key_then_a_fragment_declaring_its_tenant() {
    let output = keygen("acme");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (key, fragment) = stdout.split_once('\n').unwrap();
    assert!(
        key.starts_with("sf_") && key.len() > 40,
        "first line: {key:?}"
    );
    assert_eq!(key.trim(), key, "the first line is the key alone");
    assert!(
        !fragment.contains(key),
        "the plain key must not be in the fragment"
    );
    assert!(!fragment.contains(&key["sf_".len()..]));

    // The fragment alone is a config declaring acme with the key's hash.
    let config: Config = toml::from_str(fragment).expect("the fragment is TOML for a Config");
    let config = config.validated().unwrap();
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.tenants[0].name, "acme");
    assert_eq!(config.tenants[0].api_key_sha256, vec![hash_key(key)]);
    let tenants = Tenants::from_config(&config, 0).unwrap();
    assert_eq!(tenants.by_api_key(key).unwrap().name, "acme");

    // Appended to an existing config (ending inside a table), it still loads: the file both
    // sandforkd --config and sandfork-http --config read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandfork.toml");
    let existing = "slots = 2\n[profiles.default]\nzygotes = 1\n";
    std::fs::write(&path, format!("{existing}{fragment}")).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.slots, Some(2));
    let tenants = Tenants::from_config(&config, 0).unwrap();
    assert_eq!(tenants.by_api_key(key).unwrap().name, "acme");

    // Every run makes a new key.
    let again = String::from_utf8(keygen("acme").stdout).unwrap();
    assert_ne!(again.lines().next(), Some(key));
}

#[test]
fn keygen_refuses_a_bad_tenant_name() {
    let output = keygen("no spaces");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("tenant name"));
}
