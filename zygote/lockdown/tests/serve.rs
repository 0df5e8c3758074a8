//! The zygote's fork loop, driven the way the supervisor drives it: a spawn is answered with
//! `spawned` (and a pidfd) and, when the child ends, `exit` with its status; a malformed spawn
//! with `spawn_failed`; garbage is skipped; `shutdown` and a closed channel stop the loop.
//!
//! The loop runs on the test's thread and forks from it; each forked child only checks the
//! message it got and `_exit`s.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use sandfork_lockdown::serve::{serve, Served};
use serde_json::{json, Value};

/// What the forked child exits with when the message it got is right.
const CHILD_OK: i32 = 7;

fn channel() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

fn send_raw(chan: &OwnedFd, data: &[u8], fds: &[RawFd]) {
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(chan.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("sendmsg");
}

fn send(chan: &OwnedFd, message: &Value, fds: &[RawFd]) {
    send_raw(chan, message.to_string().as_bytes(), fds);
}

fn receive(chan: &OwnedFd) -> (Value, Vec<OwnedFd>) {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        chan.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: just received; owned by nobody else.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    (serde_json::from_slice(&buf[..len]).expect("json"), fds)
}

/// A spawn as the supervisor writes it.
fn spawn_message(id: u64) -> Value {
    json!({"op": "spawn", "id": id, "uid": 1, "gid": 1, "tmpfs_bytes": 1 << 20,
           "rlimits": {"cpu_seconds": 1, "fsize_bytes": 1 << 20, "nofile": 16, "nproc": 4,
                       "as_bytes": null}})
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("/dev/null").into()
}

/// Runs the loop here; in a forked child, exits with [`CHILD_OK`] if its message carried `id`
/// and three descriptors.
fn run_zygote(chan: OwnedFd, id: u64) {
    match serve(chan.as_fd()) {
        Ok(Served::Stop) => {}
        Ok(Served::Child(request, fds)) => {
            let message: Value =
                serde_json::from_str(&sandfork_lockdown::serve::child_message(&request, fds))
                    .unwrap_or_default();
            let fds = message["fds"].as_array().map_or(0, Vec::len);
            let code = if message["id"] == id && fds == 3 {
                CHILD_OK
            } else {
                99
            };
            // SAFETY: the forked child of a multi-threaded test process ends here.
            unsafe { libc::_exit(code) }
        }
        Err(err) => panic!("serve: {err}"),
    }
}

#[test]
fn spawns_reports_the_exit_and_stops_on_shutdown() {
    let (zygote_end, supervisor_end) = channel();
    let supervisor = std::thread::spawn(move || {
        let chan = supervisor_end;
        let fds = [dev_null(), dev_null(), dev_null()];
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        send(&chan, &spawn_message(41), &raw);
        let (spawned, pidfds) = receive(&chan);
        assert_eq!(spawned["op"], "spawned", "{spawned}");
        assert_eq!(spawned["id"], 41);
        assert!(spawned["pid"].as_i64().unwrap_or(0) > 0, "{spawned}");
        assert!(spawned["rss_kb"].as_i64().unwrap_or(0) > 0, "{spawned}");
        assert_eq!(pidfds.len(), 1, "a pidfd comes with spawned");

        let (exit, _) = receive(&chan);
        assert_eq!(exit["op"], "exit", "{exit}");
        assert_eq!(exit["id"], 41);
        assert_eq!(exit["pid"], spawned["pid"]);
        assert_eq!(exit["exit_code"], CHILD_OK, "{exit}");
        assert_eq!(exit["signal"], Value::Null);
        assert!(exit["utime"].is_f64() && exit["stime"].is_f64(), "{exit}");

        // One descriptor instead of three: refused, nothing forked.
        send(&chan, &spawn_message(42), &raw[..1]);
        let (failed, _) = receive(&chan);
        assert_eq!(failed["op"], "spawn_failed", "{failed}");
        assert_eq!(failed["id"], 42);
        assert!(failed["error"]
            .as_str()
            .unwrap_or("")
            .contains("expected 3 fds"));

        // Garbage and unknown ops are skipped; the loop still answers afterwards.
        send_raw(&chan, b"not json", &[]);
        send(&chan, &json!({"op": "dance"}), &[]);
        send(&chan, &spawn_message(43), &[]);
        let (failed, _) = receive(&chan);
        assert_eq!(failed["id"], 43, "{failed}");

        send(&chan, &json!({"op": "shutdown"}), &[]);
    });
    run_zygote(zygote_end, 41);
    supervisor.join().expect("supervisor thread");
}

#[test]
fn a_closed_channel_stops_the_loop() {
    let (zygote_end, supervisor_end) = channel();
    drop(supervisor_end);
    assert!(matches!(serve(zygote_end.as_fd()), Ok(Served::Stop)));
}
