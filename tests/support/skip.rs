//! The one skip rule of every test suite in the workspace (included with `#[path]` by each
//! crate's test helpers): a test that cannot run here says `SKIPPED: <test>: <reason>` and
//! returns; with `CI` set in the environment it fails instead, because on the CI machine
//! nothing may skip.

/// Records that `test` cannot run for `reason`: prints SKIPPED, or panics under CI.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run on CI: {reason}");
    }
    println!("SKIPPED: {test}: {reason}");
}
