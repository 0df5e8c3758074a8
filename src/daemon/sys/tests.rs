//! Unit tests of `src/daemon/sys.rs`.

use super::*;

#[test]
fn the_exit_code_of_an_exiting_process_is_read_from_the_kernel() {
    use std::process::Command;
    let wait_zombie = |pid: u32| {
        for _ in 0..500 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if stat.rsplit_once(") ").unwrap().1.starts_with('Z') {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{pid} did not exit");
    };
    // Our own children: readable without CAP_SYS_PTRACE (same uid).
    let mut sleeper = Command::new("sleep").arg("10").spawn().unwrap();
    let pid = sleeper.id() as i32;
    assert_eq!(
        exiting_status(pid),
        None,
        "a running process has no exit code"
    );
    sleeper.kill().unwrap();
    wait_zombie(sleeper.id());
    assert_eq!(exiting_status(pid), Some(libc::SIGKILL));
    sleeper.wait().unwrap();

    let mut exits = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
    wait_zombie(exits.id());
    assert_eq!(exiting_status(exits.id() as i32), Some(7 << 8));
    exits.wait().unwrap();
    assert_eq!(exiting_status(exits.id() as i32), None, "reaped: gone");
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Start below the hard limit (as under systemd's 1,024), with room for the other tests.
    let low = hard.min(512);
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
    assert_eq!(raise_nofile_limit().unwrap(), hard);
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
}

#[tokio::test]
async fn seqpacket_carries_messages_and_fds() {
    let (a, b) = seqpacket_pair().unwrap();
    let (a, b) = (SeqChannel::new(a).unwrap(), SeqChannel::new(b).unwrap());
    let memfd = sealed_memfd("t", b"hello").unwrap();
    a.send(b"one", &[memfd.as_raw_fd()]).await.unwrap();
    a.send(b"two", &[]).await.unwrap();
    let first = b.recv(64, 2).await.unwrap().unwrap();
    assert_eq!(first.data, b"one");
    assert_eq!(first.fds.len(), 1);
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::fs::File::from(first.fds.into_iter().next().unwrap()),
        &mut text,
    )
    .unwrap();
    assert_eq!(text, "hello");
    let second = b.recv(64, 2).await.unwrap().unwrap();
    assert_eq!(second.data, b"two");
    drop(a);
    assert!(b.recv(64, 2).await.unwrap().is_none());
}

#[tokio::test]
async fn oversized_packet_is_an_error() {
    let (a, b) = seqpacket_pair().unwrap();
    let (a, b) = (SeqChannel::new(a).unwrap(), SeqChannel::new(b).unwrap());
    a.send(&[7u8; 100], &[]).await.unwrap();
    assert!(b.recv(10, 0).await.is_err());
}

#[test]
fn sealed_memfd_cannot_be_written() {
    let fd = sealed_memfd("t", b"abc").unwrap();
    let mut file = std::fs::File::from(fd);
    assert!(file.write_all(b"x").is_err());
}
