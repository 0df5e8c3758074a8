//! Unit tests of `src/daemon/cgroup/v1.rs`.

use super::super::fake::FakeCgroupFs;
use super::super::{CgroupSlots, CgroupVersion};
use super::*;

/// This VM's layout: memory in a sub-cgroup, pids and cpuacct at their roots, cpu and
/// cpuacct mounted separately.
fn vm_like(memsw: bool) -> FakeCgroupFs {
    let fake = FakeCgroupFs::v1(&["memory", "pids", "cpuacct", "cpu"], memsw);
    fake.mkdir_p("memory/process_api/abc");
    fake
}

const VM_PROC: &str = "8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

#[test]
fn detects_each_hierarchy_under_the_own_cgroup() {
    let fake = vm_like(true);
    let detection = super::super::detect_on(&fake.host(VM_PROC)).unwrap();
    assert_eq!(detection.version, CgroupVersion::V1);
    assert!(detection.usable(), "{detection:?}");
    let bases: Vec<_> = detection
        .hierarchies
        .iter()
        .map(|h| (h.controllers.clone(), fake.rel(&h.base)))
        .collect();
    assert_eq!(
        bases,
        vec![
            (vec!["memory"], "memory/process_api/abc".to_string()),
            (vec!["pids"], "pids".to_string()),
            (vec!["cpuacct"], "cpuacct".to_string()),
        ]
    );
    assert!(detection.notes[0].contains("swap accounting on"));
}

#[test]
fn co_mounted_cpu_cpuacct_is_found_through_its_joint_name() {
    let fake = FakeCgroupFs::v1(&["memory", "pids", "cpu,cpuacct"], false);
    let proc = "8:pids:/\n4:memory:/\n2:cpu,cpuacct:/\n";
    let detection = super::super::detect_on(&fake.host(proc)).unwrap();
    assert!(detection.usable(), "{detection:?}");
    assert_eq!(fake.rel(&detection.hierarchies[2].base), "cpu,cpuacct");
}

#[test]
fn a_missing_controller_is_named() {
    let fake = FakeCgroupFs::v1(&["memory", "cpuacct"], false);
    let proc = "4:memory:/\n2:cpuacct:/\n";
    let detection = super::super::detect_on(&fake.host(proc)).unwrap();
    assert!(!detection.usable());
    assert_eq!(detection.missing[0].0, "pids");
    let err = CgroupSlots::create_on(&fake.host(proc), "t", 2).unwrap_err();
    assert!(err.to_string().contains("pids"), "{err}");
    assert!(!fake.exists("memory/sandfork-t"), "nothing is created");
}

#[test]
fn create_prepare_attach_usage_remove() {
    let fake = vm_like(true);
    let host = fake.host(VM_PROC);
    let slots = CgroupSlots::create_on(&host, "t", 2).unwrap();
    assert_eq!(slots.version(), CgroupVersion::V1);
    for dir in [
        "memory/process_api/abc/sandfork-t/slot-1",
        "pids/sandfork-t/slot-0",
        "cpuacct/sandfork-t/slot-1",
    ] {
        assert!(fake.exists(dir), "{dir}");
    }
    assert!(
        !fake.exists("cpu/sandfork-t"),
        "the cpu hierarchy is not used"
    );
    let slot = slots.slot(1);

    // A previous run left counters behind; prepare resets them and takes the baseline.
    let mem = "memory/process_api/abc/sandfork-t/slot-1";
    fake.set(
        &format!("{mem}/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    fake.set(&format!("{mem}/memory.max_usage_in_bytes"), "999999");
    fake.set("cpuacct/sandfork-t/slot-1/cpuacct.usage", "5000");
    slot.prepare(64 << 20, 16).unwrap();
    assert_eq!(
        fake.get(&format!("{mem}/memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(
        fake.get(&format!("{mem}/memory.memsw.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(fake.get("pids/sandfork-t/slot-1/pids.max"), "16");
    assert_eq!(fake.get(&format!("{mem}/memory.max_usage_in_bytes")), "0");
    assert_eq!(fake.get("cpuacct/sandfork-t/slot-1/cpuacct.usage"), "0");

    slot.attach(4242).unwrap();
    for dir in [mem, "pids/sandfork-t/slot-1", "cpuacct/sandfork-t/slot-1"] {
        assert_eq!(fake.get(&format!("{dir}/cgroup.procs")), "4242\n", "{dir}");
    }
    assert_eq!(slots.slot(1).pids().unwrap(), vec![4242]);

    // The "kernel" records the run: an OOM kill, a peak, CPU time.
    fake.set(
        &format!("{mem}/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    fake.set(&format!("{mem}/memory.max_usage_in_bytes"), "67100000");
    fake.set("cpuacct/sandfork-t/slot-1/cpuacct.usage", "123456789");
    assert_eq!(
        slot.usage().unwrap(),
        SlotUsage {
            peak_memory_bytes: Some(67_100_000),
            cpu_ns: 123_456_789,
            oom_killed: true
        }
    );
    // The next run starts from the new baseline.
    slot.prepare(64 << 20, 16).unwrap();
    assert!(!slot.usage().unwrap().oom_killed);

    // Remove refuses a slot with a process, and reports it.
    let err = CgroupSlots::remove(slots).unwrap_err();
    assert!(
        matches!(err, CgroupError::Busy { ref pids, .. } if pids == &[4242]),
        "{err}"
    );
    fake.clear_procs(mem);
    fake.clear_procs("pids/sandfork-t/slot-1");
    fake.clear_procs("cpuacct/sandfork-t/slot-1");
    // Dropping the (already removed) value did not retry; a new create cleans the rest up.
    let slots = CgroupSlots::create_on(&host, "t", 1).unwrap();
    slots.remove().unwrap();
    for dir in [
        "memory/process_api/abc/sandfork-t",
        "pids/sandfork-t",
        "cpuacct/sandfork-t",
    ] {
        assert!(!fake.exists(dir), "{dir} left behind");
    }
}

#[test]
fn raising_and_lowering_the_limit_respects_memsw_ordering() {
    let fake = vm_like(true);
    let slots = CgroupSlots::create_on(&fake.host(VM_PROC), "t", 1).unwrap();
    let slot = slots.slot(0);
    let mem = "memory/process_api/abc/sandfork-t/slot-0";
    // From unlimited down, then up above the current memsw limit, then down again.
    for limit in [64u64 << 20, 256 << 20, 32 << 20] {
        slot.prepare(limit, 8).unwrap();
        assert_eq!(
            fake.get(&format!("{mem}/memory.limit_in_bytes")),
            limit.to_string()
        );
        assert_eq!(
            fake.get(&format!("{mem}/memory.memsw.limit_in_bytes")),
            limit.to_string()
        );
    }
    // Unchanged limits are not written again.
    let writes = fake.writes_to("memory.limit_in_bytes");
    slot.prepare(32 << 20, 8).unwrap();
    assert_eq!(fake.writes_to("memory.limit_in_bytes"), writes);
}

#[test]
fn without_swap_accounting_swappiness_is_zero() {
    let fake = vm_like(false);
    let slots = CgroupSlots::create_on(&fake.host(VM_PROC), "t", 1).unwrap();
    let mem = "memory/process_api/abc/sandfork-t/slot-0";
    assert_eq!(fake.get(&format!("{mem}/memory.swappiness")), "0");
    slots.slot(0).prepare(64 << 20, 8).unwrap();
    assert_eq!(
        fake.get(&format!("{mem}/memory.limit_in_bytes")),
        "67108864"
    );
    assert!(!fake.exists(&format!("{mem}/memory.memsw.limit_in_bytes")));
}

#[test]
fn a_stale_tree_is_removed_unless_it_holds_processes() {
    let fake = vm_like(true);
    let host = fake.host(VM_PROC);
    // A crashed daemon's tree: forgotten, never removed.
    std::mem::forget(CgroupSlots::create_on(&host, "t", 3).unwrap());
    fake.set("pids/sandfork-t/slot-2/cgroup.procs", "777\n");
    let err = CgroupSlots::create_on(&host, "t", 2).unwrap_err();
    assert!(
        matches!(err, CgroupError::StaleBusy { ref pids, .. } if pids == &[777]),
        "{err}"
    );
    assert!(
        !fake.exists("pids/sandfork-t/slot-0"),
        "empty stale slots are removed"
    );
    assert!(fake.exists("pids/sandfork-t/slot-2"), "the busy one stays");
    fake.clear_procs("pids/sandfork-t/slot-2");
    let slots = CgroupSlots::create_on(&host, "t", 2).unwrap();
    assert!(!fake.exists("memory/process_api/abc/sandfork-t/slot-2"));
    drop(slots);
    assert!(
        !fake.exists("memory/process_api/abc/sandfork-t"),
        "drop removes the tree"
    );
}
