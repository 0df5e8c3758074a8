//! Unit tests of `src/daemon/zygotes/handle.rs`.

use sandfork_ipc::lockdown::RlimitParams;
use sandfork_ipc::zygote::{ExitReport, FromZygote, SpawnRequest, ToZygote};

use super::*;
use crate::daemon::zygotes::testing::{fake_zygote, kill};

fn request(id: u64) -> SpawnRequest {
    SpawnRequest {
        id,
        uid: 1,
        gid: 1,
        tmpfs_bytes: 1 << 20,
        rlimits: RlimitParams {
            cpu_seconds: 1,
            fsize_bytes: 1 << 20,
            nofile: 16,
            nproc: 4,
            as_bytes: None,
        },
        own_pid_namespace: false,
        floor: false,
    }
}

fn three_fds() -> [OwnedFd; 3] {
    let (a, b) = sys::pipe().unwrap();
    let c = std::fs::File::open("/dev/null").unwrap().into();
    [a, b, c]
}

async fn say(peer: &SeqChannel, message: &FromZygote, fds: &[RawFd]) {
    let bytes = sandfork_ipc::encode(message).unwrap();
    peer.send(&bytes, fds).await.unwrap();
}

#[tokio::test]
async fn a_spawn_reaches_the_zygote_and_its_events_come_back_to_that_run() {
    let (zygote, theirs, init) = fake_zygote("z#0");
    let peer = SeqChannel::new(theirs).unwrap();
    let fds = three_fds();
    let mut events = zygote
        .spawn(request(5), [&fds[0], &fds[1], &fds[2]])
        .await
        .unwrap();
    let mut other = zygote
        .spawn(request(6), [&fds[0], &fds[1], &fds[2]])
        .await
        .unwrap();
    for id in [5, 6] {
        let packet = peer.recv(MAX_ZYGOTE_EVENT, 8).await.unwrap().unwrap();
        assert_eq!(packet.fds.len(), SPAWN_FDS);
        let message: ToZygote = sandfork_ipc::decode(&packet.data, MAX_ZYGOTE_EVENT).unwrap();
        assert_eq!(message, ToZygote::Spawn(request(id)));
    }
    assert_eq!(zygote.live_children(), 2);

    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pidfd = PidFd::open(child.id()).unwrap();
    let spawned = FromZygote::Spawned {
        id: 5,
        pid: 42,
        rss_kb: 1000,
    };
    say(&peer, &spawned, &[pidfd.as_raw_fd()]).await;
    assert!(matches!(
        events.recv().await,
        Some(ChildEvent::Spawned { pid: 42, .. })
    ));
    let exit = FromZygote::Exit(ExitReport {
        id: 5,
        pid: 42,
        exit_code: Some(3),
        ..ExitReport::default()
    });
    say(&peer, &exit, &[]).await;
    match events.recv().await {
        Some(ChildEvent::Exited(report)) => assert_eq!(report.exit_code, Some(3)),
        other => panic!("expected the exit, got {other:?}"),
    }
    assert!(
        events.recv().await.is_none(),
        "the run's events end with its exit"
    );
    assert_eq!(zygote.live_children(), 1, "run 6 is still waiting");
    // Run 6 heard nothing of run 5.
    assert!(other.try_recv().is_err());
    // The peak RSS the zygote reported counts towards recycling.
    let policy = RecyclePolicy {
        max_forks: 100,
        max_rss_growth_kb: 500,
        max_age: Duration::from_secs(3600),
    };
    assert!(zygote.wants_recycling(&policy).unwrap().contains("RSS"));
    let _ = child.kill();
    let _ = child.wait();
    zygote.stop().await;
    kill(init);
}

#[tokio::test]
async fn a_zygote_that_says_something_else_is_stopped_and_its_runs_told() {
    let (zygote, theirs, _init) = fake_zygote("z#1");
    let peer = SeqChannel::new(theirs).unwrap();
    let fds = three_fds();
    let mut events = zygote
        .spawn(request(1), [&fds[0], &fds[1], &fds[2]])
        .await
        .unwrap();
    peer.send(br#"{"op":"spawned","id":1}"#, &[]).await.unwrap();
    assert!(
        events.recv().await.is_none(),
        "the run learns its zygote is gone"
    );
    tokio::time::timeout(Duration::from_secs(5), zygote.died())
        .await
        .expect("the zygote's process is killed");
    assert!(!zygote.is_alive());
    assert!(matches!(
        zygote.spawn(request(2), [&fds[0], &fds[1], &fds[2]]).await,
        Err(ZygoteError::Gone)
    ));
}

#[tokio::test]
async fn forks_count_towards_recycling_and_a_draining_zygote_forks_no_more() {
    let (zygote, theirs, init) = fake_zygote("z#2");
    let _peer = SeqChannel::new(theirs).unwrap();
    let fds = three_fds();
    let policy = RecyclePolicy {
        max_forks: 2,
        max_rss_growth_kb: u64::MAX,
        max_age: Duration::from_secs(3600),
    };
    for id in 0..2 {
        assert_eq!(zygote.wants_recycling(&policy), None);
        let _events = zygote
            .spawn(request(id), [&fds[0], &fds[1], &fds[2]])
            .await
            .unwrap();
    }
    assert_eq!(zygote.wants_recycling(&policy).as_deref(), Some("2 forks"));
    zygote.start_draining();
    assert!(!zygote.accepts_children());
    assert!(zygote.is_alive(), "draining: the running children finish");
    assert!(matches!(
        zygote.spawn(request(9), [&fds[0], &fds[1], &fds[2]]).await,
        Err(ZygoteError::Gone)
    ));
    zygote.stop().await;
    kill(init);
}

#[tokio::test]
async fn a_zygote_past_its_age_wants_recycling() {
    let (zygote, theirs, init) = fake_zygote("z#3");
    let _peer = SeqChannel::new(theirs).unwrap();
    let young = RecyclePolicy {
        max_forks: 100,
        max_rss_growth_kb: u64::MAX,
        max_age: Duration::from_secs(3600),
    };
    assert_eq!(zygote.wants_recycling(&young), None);
    let old = RecyclePolicy {
        max_age: Duration::ZERO,
        ..young
    };
    assert!(zygote.wants_recycling(&old).unwrap().contains("s old"));
    zygote.stop().await;
    kill(init);
}
