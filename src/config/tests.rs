//! Unit tests of `src/config.rs`.

use super::*;

#[test]
fn empty_config_gets_default_profile() {
    let config: Config = toml::from_str("").unwrap();
    let config = config.validated().unwrap();
    assert!(config.profiles.contains_key(DEFAULT_PROFILE));
    assert_eq!(config.limits.timeout_ms, 15_000);
}

#[test]
fn profile_overrides_apply() {
    let config: Config = toml::from_str(
        "[limits]\ntimeout_ms = 5000\n[profiles.fast]\npython = \"python3\"\nlimits = { timeout_ms = 100 }\n",
    )
    .unwrap();
    let config = config.validated().unwrap();
    let fast = &config.profiles["fast"];
    assert_eq!(config.profile_limits(fast).timeout_ms, 100);
    assert_eq!(config.profile_limits(fast).output_bytes, 1024 * 1024);
    assert_eq!(config.profile_limits(fast).cpu_seconds(), 2);
}

#[test]
fn stdlib_preload_expands() {
    let profile = ProfileConfig {
        preload: vec!["numpy".into(), "@stdlib".into(), "json".into()],
        ..ProfileConfig::default()
    };
    let modules = Config::preload_modules(&profile);
    assert_eq!(modules[0], "numpy");
    assert_eq!(modules.len(), DEFAULT_PRELOAD.len() + 1);
    assert_eq!(modules.iter().filter(|m| *m == "json").count(), 1);
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    assert!(toml::from_str::<Config>("sockets = 1").is_err());
    let zero_uid: Config = toml::from_str("uid_base = 0").unwrap();
    assert!(zero_uid.validated().is_err());
    let tiny_frame: Config = toml::from_str("max_frame_len = 10").unwrap();
    assert!(tiny_frame.validated().is_err());
    let output_over_frame: Config =
        toml::from_str("max_frame_len = 4000000\n[limits]\noutput_bytes = 1000000").unwrap();
    assert!(output_over_frame.validated().is_err());
}

#[test]
fn a_node_name_must_fit_in_a_session_id() {
    let named: Config = toml::from_str("node = \"web-2\"").unwrap();
    assert_eq!(named.validated().unwrap().node.as_deref(), Some("web-2"));
    for bad in ["", "Web", "a_b", "a/b", "a.b", &"x".repeat(33)] {
        let config: Config = toml::from_str(&format!("node = {bad:?}")).unwrap();
        assert!(config.validated().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn processes_is_off_by_default_and_is_the_pids_ceiling_when_set() {
    let config: Config = toml::from_str(
        "[profiles.procs]\npython = \"python3\"\nprocesses = 16\n[profiles.plain]\npython = \"python3\"\n",
    )
    .unwrap();
    let config = config.validated().unwrap();
    assert_eq!(config.profiles["plain"].processes, 0);
    assert_eq!(config.profile_limits(&config.profiles["plain"]).pids, 64);
    assert_eq!(config.profile_limits(&config.profiles["procs"]).pids, 16);
    for (text, why) in [
        ("processes = 8\nlimits = { pids = 32 }", "not both"),
        ("processes = 5000", "at most 4096"),
    ] {
        let config: Config =
            toml::from_str(&format!("[profiles.bad]\npython = \"python3\"\n{text}\n")).unwrap();
        let err = config.validated().unwrap_err().to_string();
        assert!(err.contains(why), "{text}: {err}");
    }
}

#[test]
fn eval_profiles_must_exist_and_are_optional() {
    // No [eval] and no profile named "default": fine (/eval then uses the daemon's default).
    let config: Config = toml::from_str("[profiles.only]\npython = \"python3\"\n").unwrap();
    assert_eq!(config.validated().unwrap().eval, EvalConfig::default());
    for text in [
        "[eval]\nprofile = \"missing\"\n",
        "[eval.executables]\n\"/usr/bin/python\" = \"missing\"\n",
    ] {
        let config: Config = toml::from_str(text).unwrap();
        let err = config.validated().unwrap_err().to_string();
        assert!(err.contains("eval: profile \"missing\""), "{err}");
    }
}
