//! The C ABI's contract: return codes, error strings, the report, and the once-only init.
//!
//! One test function on purpose: the library state is process-global, so the sequence (before
//! init, bad init, good init, second init, children) runs in order in its own test binary.

mod common;

use std::ffi::{c_char, CStr, CString};

use common::{in_child, require_root, WorkTree};
use sandfork_lockdown::ffi::{
    sandfork_child_lockdown, sandfork_lockdown_error, sandfork_lockdown_init,
    sandfork_lockdown_report, CHILD_BAD_PARAMS, CHILD_NOT_INITIALIZED, INIT_ALREADY_DONE,
    INIT_BAD_CONFIG,
};
use serde_json::{json, Value};

fn error() -> String {
    // SAFETY: the library returns a NUL-terminated string that stays valid until the next
    // failing call, and this test is single-threaded.
    unsafe { CStr::from_ptr(sandfork_lockdown_error()) }
        .to_string_lossy()
        .into_owned()
}

fn report() -> Value {
    // SAFETY: static NUL-terminated storage.
    let text = unsafe { CStr::from_ptr(sandfork_lockdown_report()) };
    serde_json::from_str(text.to_str().expect("utf-8")).expect("report json")
}

fn init(json: Option<&str>) -> i32 {
    let json = json.map(|j| CString::new(j).expect("no NUL"));
    let ptr = json.as_ref().map_or(std::ptr::null(), |j| j.as_ptr());
    // SAFETY: NULL or a NUL-terminated string that outlives the call.
    unsafe { sandfork_lockdown_init(ptr) }
}

fn child_lockdown(json: &CStr) -> i32 {
    let ptr: *const c_char = json.as_ptr();
    // SAFETY: a NUL-terminated string that outlives the call.
    unsafe { sandfork_child_lockdown(ptr) }
}

fn params_json(keep: &[i32], work_dir: &std::path::Path) -> CString {
    let mut keep_fds = vec![0, 1, 2];
    keep_fds.extend_from_slice(keep);
    let params = json!({
        "keep_fds": keep_fds, "work_dir": work_dir, "tmpfs_bytes": 1 << 20,
        "uid": common::UID, "gid": common::GID,
        "rlimits": {"cpu_seconds": 15, "fsize_bytes": 1 << 20, "nofile": 64, "nproc": 16,
                    "as_bytes": null},
    });
    CString::new(params.to_string()).expect("no NUL")
}

#[test]
fn c_abi_contract() {
    let tree = WorkTree::new();

    // Before init.
    assert_eq!(report(), json!({"initialized": false}));
    assert_eq!(error(), "");
    let params = params_json(&[], &tree.work_dir);
    assert_eq!(child_lockdown(&params), CHILD_NOT_INITIALIZED);
    assert!(error().contains("sandfork_lockdown_init"), "{}", error());

    // Bad configs.
    assert_eq!(init(None), INIT_BAD_CONFIG);
    assert!(error().contains("NULL"), "{}", error());
    assert_eq!(init(Some("{not json")), INIT_BAD_CONFIG);
    assert!(error().starts_with("init: bad config json"), "{}", error());
    assert_eq!(
        init(Some(r#"{"work_parent": "/x", "typo": 1}"#)),
        INIT_BAD_CONFIG
    );

    // A good config, as the zygote passes it.
    let config = json!({
        "read_exec_paths": ["/usr", "/lib", "/lib64", "/no/such/dir"],
        "read_paths": ["/etc/ld.so.cache", "/dev/urandom"],
        "read_write_paths": ["/dev/null"],
        "work_parent": tree.work_parent,
        "landlock_required": false,
    });
    let rc = init(Some(&config.to_string()));
    assert_eq!(rc, 0, "init: {}", error());
    let report = report();
    println!("report: {report}");
    assert_eq!(report["initialized"], true);
    assert_eq!(report["seccomp_child_filters"], 2);
    assert!(report["landlock_abi"].is_i64());
    assert!(report["landlock_enforced"].is_boolean());
    assert_eq!(report["skipped_paths"], json!(["/no/such/dir"]));
    assert_eq!(init(Some(&config.to_string())), INIT_ALREADY_DONE);

    // Params refused before anything changes.
    assert_eq!(child_lockdown(c"{}"), CHILD_BAD_PARAMS);
    assert!(
        error().starts_with("params: bad params json"),
        "{}",
        error()
    );
    let outside = params_json(&[], std::path::Path::new("/elsewhere/work"));
    assert_eq!(child_lockdown(&outside), CHILD_BAD_PARAMS);

    if !require_root("c_abi_contract (forked children)") {
        return;
    }
    // A child locks down; another fails at step 2 and says where.
    let outcome = in_child(|report_fd| {
        let rc = child_lockdown(&params_json(&[report_fd], &tree.work_dir));
        if rc != 0 {
            return Err(format!("rc {rc}: {}", error()));
        }
        // SAFETY: PR_GET_SECCOMP takes no pointer arguments.
        let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
        common::check(mode == 2, || format!("seccomp mode {mode}"))
    });
    outcome.assert_ok();
    let outcome = in_child(|report_fd| {
        let missing = tree.work_parent.join("missing");
        let rc = child_lockdown(&params_json(&[report_fd], &missing));
        let message = error();
        common::check(
            rc == 2 && message.starts_with("mounts: mounting tmpfs on"),
            || format!("rc {rc}: {message}"),
        )
    });
    outcome.assert_ok();
}
