//! A lease's v1 memory cgroup on this host's real hierarchy keeps guest RAM out of swap:
//! `memory.memsw.limit_in_bytes` equals `memory.limit_in_bytes` (the kernel refuses a pair
//! written in the wrong order, so raising and lowering are both exercised) and
//! `memory.swappiness` is 0. The test's cgroups live under a parent named after its pid
//! inside the test process's own cgroup, and are removed at the end. Needs root and v1
//! (skipped otherwise, with a SKIPPED line).

use coinop_host::cgroup::{detect, CgroupSlot, Cgroups, Limits};
use std::io::Write;
use std::path::{Path, PathBuf};

fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a number")
}

/// Removes the test's cgroups however the test ended (a failed assertion included).
struct Cleanup {
    cgroups: Cgroups,
    slot: Option<CgroupSlot>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let _ = slot.remove();
        }
        self.cgroups.remove_empty_parents();
    }
}

#[test]
fn v1_memory_cgroup_pairs_memsw_with_the_limit_and_zero_swappiness() {
    if !nix::unistd::geteuid().is_root() {
        return skip("cgroups need root");
    }
    let mut cleanup = Cleanup {
        cgroups: detect(&format!("coinop-test-{}-swap", std::process::id())),
        slot: None,
    };
    let memory_parent: PathBuf = match &cleanup.cgroups {
        Cgroups::V1 { memory, .. } => memory.clone(),
        other => return skip(&format!("not cgroup v1 here: {}", other.describe())),
    };
    let dir = memory_parent.join("lease");
    let small = Limits::for_guest(1, 64);
    let slot = cleanup.slot.insert(
        cleanup
            .cgroups
            .create_slot("lease", &small)
            .expect("create cgroup")
            .expect("available"),
    );
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let swap_accounted = memsw.exists();
    let check = |limits: &Limits, what: &str| {
        assert_eq!(
            read_u64(&dir.join("memory.limit_in_bytes")),
            limits.memory_bytes,
            "{what}: limit"
        );
        if swap_accounted {
            assert_eq!(
                read_u64(&memsw),
                limits.memory_bytes,
                "{what}: memory + swap"
            );
        }
    };
    check(&small, "created");
    assert_eq!(read_u64(&dir.join("memory.swappiness")), 0, "swappiness");
    let big = Limits::for_guest(2, 512);
    slot.update_limits(&small, &big).expect("raise");
    check(&big, "raised");
    slot.update_limits(&big, &small).expect("lower");
    check(&small, "lowered");
    if !swap_accounted {
        skip("no memory.memsw.limit_in_bytes (swapaccount off): only swappiness checked");
    }
    if let Some(slot) = cleanup.slot.take() {
        slot.remove().expect("remove cgroup");
    }
}
