//! The C ABI of `libsandfork_lockdown.so`, loaded once by the Python zygote with ctypes.
//!
//! ```c
//! int32_t sandfork_lockdown_init(const char *config_json);   /* 0 or an INIT_* code */
//! int32_t sandfork_child_lockdown(const char *params_json);  /* 0, a step 1-7, or 100-102 */
//! const char *sandfork_lockdown_error(void);                 /* last failure, NUL-terminated */
//! const char *sandfork_lockdown_report(void);                /* JSON, see crate::Report */
//! int32_t sandfork_serve(int32_t ctrl_fd);      /* 0 stop, 1 in a new child, 2 channel broke */
//! const char *sandfork_child_message(void);     /* in a child: its spawn message, with "fds" */
//! ```
//!
//! State is process-global and inherited by forked children: the [`Lockdown`] (a `OnceLock`,
//! read-only after init apart from its atomic ruleset fd) and the report. The last error lives
//! behind a mutex that only these functions take, and the zygote calls them from one thread, so
//! a child never inherits it locked.
//!
//! No panic crosses the boundary: each entry point runs under `catch_unwind` and turns a panic
//! into an error code and message.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

use crate::{ChildParams, InitConfig, Lockdown, ParamsError};

/// init: the config JSON is missing, not UTF-8 or does not match [`InitConfig`].
pub const INIT_BAD_CONFIG: i32 = 1;
/// init: the landlock ruleset could not be built, or landlock is required and missing.
pub const INIT_LANDLOCK: i32 = 2;
/// init: the child seccomp policy does not compile.
pub const INIT_SECCOMP: i32 = 3;
/// init: called a second time in this process.
pub const INIT_ALREADY_DONE: i32 = 4;
/// init: internal error (a panic, caught).
pub const INIT_PANIC: i32 = 5;

/// child: the params JSON is bad or the params are refused (nothing was changed).
pub const CHILD_BAD_PARAMS: i32 = 100;
/// child: `sandfork_lockdown_init` was not called (successfully) in this process.
pub const CHILD_NOT_INITIALIZED: i32 = 101;
/// child: internal error (a panic, caught); the child is in an unknown state and must exit.
pub const CHILD_PANIC: i32 = 102;

static LOCKDOWN: OnceLock<Lockdown> = OnceLock::new();
static REPORT: OnceLock<CString> = OnceLock::new();
static LAST_ERROR: Mutex<Option<CString>> = Mutex::new(None);
/// Set once, in a child [`sandfork_serve`] forked.
static CHILD_MESSAGE: OnceLock<CString> = OnceLock::new();

/// serve: the supervisor said shutdown or closed the channel.
pub const SERVE_STOP: i32 = 0;
/// serve: this process is a child forked for a spawn; see [`sandfork_child_message`].
pub const SERVE_CHILD: i32 = 1;
/// serve: the channel broke (or a panic, caught); the zygote must exit.
pub const SERVE_FAILED: i32 = 2;

const NO_ERROR: &CStr = c"";
const NOT_INITIALIZED_REPORT: &CStr = c"{\"initialized\": false}";

fn set_error(message: &str) {
    // Interior NULs cannot be represented; they never occur in our messages, but be total.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    let mut slot = LAST_ERROR
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    *slot = Some(message);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Run `body`; a panic becomes `panic_code` with its message stored.
fn guarded(panic_code: i32, body: impl FnOnce() -> Result<(), (i32, String)>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err((code, message))) => {
            set_error(&message);
            code
        }
        Err(panic) => {
            set_error(&format!("internal error: {}", panic_message(&*panic)));
            panic_code
        }
    }
}

/// Read a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid for the call.
unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, String> {
    if ptr.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-NULL, and NUL-terminated and valid for the call per this function's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes
        .to_str()
        .map_err(|err| format!("{what} is not UTF-8: {err}"))
}

/// Once per zygote, before it preloads modules: compile the child seccomp programs and build
/// (but do not enforce) the landlock ruleset. Returns 0 or an `INIT_*` code with
/// [`sandfork_lockdown_error`] set.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string valid for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn sandfork_lockdown_init(config_json: *const c_char) -> i32 {
    guarded(INIT_PANIC, || {
        if LOCKDOWN.get().is_some() {
            return Err((INIT_ALREADY_DONE, "init: already initialized".into()));
        }
        // SAFETY: forwarded from this function's contract.
        let json = unsafe { str_arg(config_json, "config_json") }
            .map_err(|message| (INIT_BAD_CONFIG, format!("init: {message}")))?;
        let config: InitConfig = serde_json::from_str(json)
            .map_err(|err| (INIT_BAD_CONFIG, format!("init: bad config json: {err}")))?;
        let lockdown = Lockdown::prepare(&config).map_err(|err| {
            let code = match err {
                crate::InitError::Landlock(_) => INIT_LANDLOCK,
                crate::InitError::Seccomp(_) => INIT_SECCOMP,
            };
            (code, format!("init: {err}"))
        })?;
        let report = serde_json::to_string(lockdown.report())
            .map_err(|err| (INIT_PANIC, format!("init: report: {err}")))
            .and_then(|json| {
                CString::new(json).map_err(|err| (INIT_PANIC, format!("init: report: {err}")))
            })?;
        LOCKDOWN
            .set(lockdown)
            .map_err(|_| (INIT_ALREADY_DONE, "init: already initialized".to_owned()))?;
        // Set only after LOCKDOWN, which a second init can no longer pass.
        let _ = REPORT.set(report);
        Ok(())
    })
}

/// In a freshly forked, single-threaded child of the zygote: run lockdown steps 1–7. Returns 0,
/// the failed step (1–7), [`CHILD_BAD_PARAMS`], [`CHILD_NOT_INITIALIZED`] or [`CHILD_PANIC`],
/// with [`sandfork_lockdown_error`] set. On failure the caller must `_exit` immediately.
///
/// # Safety
/// `params_json` is NULL or a NUL-terminated string valid for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn sandfork_child_lockdown(params_json: *const c_char) -> i32 {
    guarded(CHILD_PANIC, || {
        let lockdown = LOCKDOWN.get().ok_or((
            CHILD_NOT_INITIALIZED,
            "sandfork_lockdown_init was not called in this process".to_owned(),
        ))?;
        // SAFETY: forwarded from this function's contract.
        let json = unsafe { str_arg(params_json, "params_json") }
            .map_err(|message| (CHILD_BAD_PARAMS, format!("params: {message}")))?;
        let params = ChildParams::from_json(json)
            .map_err(|err: ParamsError| (CHILD_BAD_PARAMS, format!("params: {err}")))?;
        lockdown
            .enforce(&params)
            .map_err(|err| (err.step(), err.to_string()))
    })
}

/// The last failure as a NUL-terminated string ("" if none). The pointer stays valid until the
/// next failing call into this library.
#[no_mangle]
pub extern "C" fn sandfork_lockdown_error() -> *const c_char {
    let slot = LAST_ERROR
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    // The CString's heap buffer does not move when the guard is dropped; it is only freed when
    // a later failure replaces it.
    slot.as_deref().unwrap_or(NO_ERROR).as_ptr()
}

/// JSON describing what init found (see [`crate::Report`]); `{"initialized": false}` before a
/// successful init. Static storage.
#[no_mangle]
pub extern "C" fn sandfork_lockdown_report() -> *const c_char {
    REPORT
        .get()
        .map_or(NOT_INITIALIZED_REPORT, CString::as_c_str)
        .as_ptr()
}

/// The zygote's loop (see [`crate::serve`]), once it has sent "ready": returns
/// [`SERVE_STOP`], [`SERVE_CHILD`] in each forked child (which must call
/// `PyOS_AfterFork_Child()` at once, then read [`sandfork_child_message`]), or
/// [`SERVE_FAILED`] with [`sandfork_lockdown_error`] set.
///
/// # Safety
/// `ctrl_fd` is an open SEQPACKET socket that stays open for the call, and the calling process
/// is single-threaded.
#[no_mangle]
pub unsafe extern "C" fn sandfork_serve(ctrl_fd: i32) -> i32 {
    // SAFETY: open for the duration of the call, per this function's contract.
    let ctrl = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctrl_fd) };
    match catch_unwind(AssertUnwindSafe(|| crate::serve::serve(ctrl))) {
        Ok(Ok(crate::serve::Served::Stop)) => SERVE_STOP,
        Ok(Ok(crate::serve::Served::Child(request, fds))) => {
            let message = crate::serve::child_message(&request, fds);
            let message = CString::new(message).unwrap_or_default();
            let _ = CHILD_MESSAGE.set(message);
            SERVE_CHILD
        }
        Ok(Err(err)) => {
            set_error(&format!("serve: {err}"));
            SERVE_FAILED
        }
        Err(panic) => {
            set_error(&format!(
                "serve: internal error: {}",
                panic_message(&*panic)
            ));
            SERVE_FAILED
        }
    }
}

/// In a child [`sandfork_serve`] forked: the spawn message as JSON, with `"fds"` (the child's
/// channel, stdout and stderr write ends, now the caller's). `""` anywhere else. Static storage.
#[no_mangle]
pub extern "C" fn sandfork_child_message() -> *const c_char {
    CHILD_MESSAGE
        .get()
        .map_or(NO_ERROR, CString::as_c_str)
        .as_ptr()
}
