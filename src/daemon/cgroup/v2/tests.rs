//! Unit tests of `src/daemon/cgroup/v2.rs`.

use super::super::fake::{FakeCgroupFs, FAKE_PID};
use super::super::{CgroupSlots, CgroupVersion};
use super::*;

fn events(oom_kill: u64) -> String {
    format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
}

fn cpu(usec: u64) -> String {
    format!("usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n")
}

#[test]
fn detects_v2_and_its_delegation_state() {
    let fake = FakeCgroupFs::v2(true, true);
    fake.v2_cgroup("system.slice/sandforkd.service", &["memory", "pids"]);
    let detection =
        super::super::detect_on(&fake.host("0::/system.slice/sandforkd.service\n")).unwrap();
    assert_eq!(detection.version, CgroupVersion::V2);
    assert!(detection.usable(), "{detection:?}");
    assert_eq!(
        fake.rel(&detection.hierarchies[0].base),
        "system.slice/sandforkd.service"
    );

    // A cgroup the parent gave no pids controller.
    let fake = FakeCgroupFs::v2(true, true);
    fake.v2_cgroup("user.slice", &["memory"]);
    let detection = super::super::detect_on(&fake.host("0::/user.slice\n")).unwrap();
    assert_eq!(detection.missing.len(), 1);
    assert_eq!(detection.missing[0].0, "pids");
    assert!(CgroupSlots::create_on(&fake.host("0::/user.slice\n"), "t", 1).is_err());
    assert!(!fake.exists("user.slice/sandfork-t"), "nothing is created");
}

#[test]
fn slots_under_the_root_cgroup_prepare_attach_usage_remove() {
    let fake = FakeCgroupFs::v2(true, true);
    let slots = CgroupSlots::create_on(&fake.host("0::/\n"), "t", 2).unwrap();
    assert_eq!(slots.version(), CgroupVersion::V2);
    assert_eq!(fake.get("cgroup.subtree_control"), "memory pids");
    assert_eq!(fake.get("sandfork-t/cgroup.subtree_control"), "memory pids");
    assert_eq!(fake.get("sandfork-t/slot-1/memory.swap.max"), "0");
    let slot = slots.slot(1);

    fake.set("sandfork-t/slot-1/memory.events", &events(4));
    fake.set("sandfork-t/slot-1/cpu.stat", &cpu(1000));
    let resets = fake.writes_to("memory.peak");
    slot.prepare(64 << 20, 32).unwrap();
    assert_eq!(fake.get("sandfork-t/slot-1/memory.max"), "67108864");
    assert_eq!(fake.get("sandfork-t/slot-1/pids.max"), "32");
    assert_eq!(
        fake.writes_to("memory.peak"),
        resets + 1,
        "peak reset per run"
    );

    slot.attach(31337).unwrap();
    assert_eq!(fake.get("sandfork-t/slot-1/cgroup.procs"), "31337\n");
    assert_eq!(slot.pids().unwrap(), vec![31337]);

    fake.set("sandfork-t/slot-1/memory.events", &events(5));
    fake.set("sandfork-t/slot-1/cpu.stat", &cpu(251_000));
    fake.set("sandfork-t/slot-1/memory.peak", "67104768\n");
    assert_eq!(
        slot.usage().unwrap(),
        SlotUsage {
            peak_memory_bytes: Some(67_104_768),
            cpu_ns: 250_000_000,
            oom_killed: true,
        }
    );
    slot.prepare(64 << 20, 32).unwrap();
    assert!(!slot.usage().unwrap().oom_killed, "a new baseline per run");
    assert_eq!(slot.usage().unwrap().cpu_ns, 0);

    fake.clear_procs("sandfork-t/slot-1");
    slots.remove().unwrap();
    assert!(!fake.exists("sandfork-t"));
    assert_eq!(
        fake.get("cgroup.subtree_control"),
        "",
        "controllers this daemon enabled are disabled again"
    );
}

#[test]
fn without_resettable_peak_or_swap_the_rest_still_works() {
    let fake = FakeCgroupFs::v2(false, true);
    fake.fail_writes("memory.peak", libc::EINVAL); // Linux 5.19 .. 6.11
    let slots = CgroupSlots::create_on(&fake.host("0::/\n"), "t", 2).unwrap();
    assert!(
        slots.describe().contains("no per-run peak"),
        "{}",
        slots.describe()
    );
    assert!(!fake.exists("sandfork-t/slot-0/memory.swap.max"));
    slots.slot(0).prepare(1 << 30, 8).unwrap();
    let usage = slots.slot(0).usage().unwrap();
    assert_eq!(usage.peak_memory_bytes, None);

    let fake = FakeCgroupFs::v2(true, false); // before 5.19: no memory.peak at all
    let slots = CgroupSlots::create_on(&fake.host("0::/\n"), "t", 1).unwrap();
    slots.slot(0).prepare(1 << 30, 8).unwrap();
    assert_eq!(slots.slot(0).usage().unwrap().peak_memory_bytes, None);
}

#[test]
fn a_daemon_alone_in_its_cgroup_moves_into_a_leaf_and_back() {
    let fake = FakeCgroupFs::v2(true, true);
    let service = "system.slice/sandforkd.service";
    fake.v2_cgroup(service, &["memory", "pids"]);
    fake.set(&format!("{service}/cgroup.procs"), &format!("{FAKE_PID}\n"));
    let host = fake.host(&format!("0::/{service}\n"));
    let slots = CgroupSlots::create_on(&host, "t", 2).unwrap();
    assert_eq!(fake.get(&format!("{service}/cgroup.procs")), "");
    assert_eq!(
        fake.get(&format!("{service}/sandfork-t/supervisor/cgroup.procs")),
        format!("{FAKE_PID}\n")
    );
    assert_eq!(
        fake.get(&format!("{service}/cgroup.subtree_control")),
        "memory pids"
    );
    assert!(fake.exists(&format!("{service}/sandfork-t/slot-1/memory.max")));
    slots.slot(0).prepare(64 << 20, 8).unwrap();

    slots.remove().unwrap();
    assert_eq!(
        fake.get(&format!("{service}/cgroup.procs")),
        format!("{FAKE_PID}\n"),
        "the daemon is back"
    );
    assert_eq!(fake.get(&format!("{service}/cgroup.subtree_control")), "");
    assert!(!fake.exists(&format!("{service}/sandfork-t")));
}

#[test]
fn other_processes_in_the_daemons_cgroup_are_refused() {
    let fake = FakeCgroupFs::v2(true, true);
    let scope = "user.slice/session-1.scope";
    fake.v2_cgroup(scope, &["memory", "pids"]);
    fake.set(
        &format!("{scope}/cgroup.procs"),
        &format!("{FAKE_PID}\n1234\n"),
    );
    let err = CgroupSlots::create_on(&fake.host(&format!("0::/{scope}\n")), "t", 1).unwrap_err();
    assert!(
        matches!(err, CgroupError::InternalProcesses { ref pids, .. } if pids == &[1234]),
        "{err}"
    );
    assert!(!fake.exists(&format!("{scope}/sandfork-t")), "cleaned up");
    assert!(fake
        .get(&format!("{scope}/cgroup.procs"))
        .contains(&FAKE_PID.to_string()));
}

#[test]
fn a_stale_tree_is_removed_unless_it_holds_processes() {
    let fake = FakeCgroupFs::v2(true, true);
    let host = fake.host("0::/\n");
    std::mem::forget(CgroupSlots::create_on(&host, "t", 3).unwrap());
    fake.set("sandfork-t/slot-1/cgroup.procs", "555\n");
    let err = CgroupSlots::create_on(&host, "t", 3).unwrap_err();
    assert!(
        matches!(err, CgroupError::StaleBusy { ref pids, .. } if pids == &[555]),
        "{err}"
    );
    assert!(!fake.exists("sandfork-t/slot-0") && !fake.exists("sandfork-t/slot-2"));
    fake.clear_procs("sandfork-t/slot-1");
    let slots = CgroupSlots::create_on(&host, "t", 1).unwrap();
    assert!(!fake.exists("sandfork-t/slot-1"));
    drop(slots);
    assert!(!fake.exists("sandfork-t"));
}
