//! A jail parked ahead of its lease: the child is jailed and in its cgroup before the lease
//! exists, and a launch turns that same process into the VMM on the lease's image.

mod isolation_support;
mod proc_status;

use coinop_host::cgroup::{detect, Cgroups, Limits};
use coinop_host::jail::Ended;
use isolation_support::{boot_parked, build_guest, control, jail_config, ready, ready_jail, skip};
use proc_status::status_field;
use std::path::Path;

#[test]
fn a_parked_child_is_in_its_cgroup_before_launch_and_becomes_the_vmm() {
    if !ready() {
        return;
    }
    let cgroups = detect(&format!("coinop-parked-{}", std::process::id()));
    if let Cgroups::Unavailable { reason } = &cgroups {
        skip(&format!("no writable cgroup hierarchy: {reason}"));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = build_guest(&dir.path().join("guest"));
    let config = jail_config(dir.path());
    let slot = cgroups
        .create_slot("parked", &Limits::for_guest(1, 64))
        .expect("cgroup")
        .expect("available");
    let parked = config
        .park("parked", slot.procs_files().expect("procs"))
        .expect("park");
    let pid = parked.pid();

    // Parked: already jailed (own PID namespace, in the cgroup) but still root, not exec'd.
    assert_eq!(status_field(pid, "NSpid:"), format!("{pid}\t1"));
    for dir in slot.dirs() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("procs");
        assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");
    }
    assert_eq!(
        status_field(pid, "Uid:").split_whitespace().next(),
        Some("0")
    );

    let uid = parked.uid().to_string();
    let (mut vm, jail) = boot_parked(parked, &guest, dir.path(), "mode=echo", 1, 64);
    assert_eq!(vm.pid(), pid, "the parked process is the VMM");
    let uids: Vec<String> = status_field(pid, "Uid:")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(uids, vec![uid; 4], "real, effective, saved, fs uid");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // The kernel was attached at launch, read-only; the root is still read-only.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let kernel = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/kernel"))
        .unwrap_or_else(|| panic!("no /kernel mount: {mounts}"));
    assert!(
        kernel
            .split(' ')
            .nth(5)
            .is_some_and(|o| o.starts_with("ro")),
        "{kernel}"
    );
    let root = Path::new(&format!("/proc/{pid}/root")).to_path_buf();
    assert!(!root.join("etc/passwd").exists(), "host files visible");

    assert!(control(&vm.control, r#"{"cmd":"status"}"#).contains("\"running\""));
    assert!(control(&vm.control, r#"{"cmd":"stop"}"#).contains("stopping"));
    assert_eq!(vm.wait(), Ended::Exited(0));
    let console = std::fs::read_to_string(&vm.console).expect("console");
    assert!(console.contains("coinop-testguest ready"), "{console}");
    jail.remove().expect("remove jail");
    slot.remove().expect("remove cgroup");
    cgroups.remove_empty_parents();
}

#[test]
fn a_discarded_parked_child_is_gone_with_its_root() {
    let Some((_dir, config)) = ready_jail() else {
        return;
    };
    let parked = config.park("discarded", Vec::new()).expect("park");
    let (pid, root) = (parked.pid(), parked.root().to_path_buf());
    assert!(root.join("dev/kvm").exists());
    parked.discard().expect("discard");
    assert!(!root.exists(), "root removed");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "parked child reaped"
    );
}

#[test]
fn a_failed_launch_names_the_step_and_cleans_up() {
    let Some((dir, config)) = ready_jail() else {
        return;
    };
    let parked = config.park("bad-launch", Vec::new()).expect("park");
    let (pid, root) = (parked.pid(), parked.root().to_path_buf());
    // A directory cannot be attached onto the /kernel file mount point.
    let err = parked
        .launch(dir.path(), None, None, vec![], vec![])
        .expect_err("attaching a directory on a file fails");
    assert!(err.to_string().contains("Attach"), "{err}");
    assert!(!root.exists(), "root removed");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "child reaped");
}

#[test]
fn a_cgroup_join_refused_at_park_time_is_reported_with_its_step() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = jail_config(dir.path());
    // A read-only fd where the cgroup.procs file should be: the child's write of its pid
    // fails with EBADF, which it must report as the cgroup step, not just die.
    let read_only = std::fs::File::open("/dev/null").expect("open /dev/null");
    let err = match config.park("refused", vec![read_only.into()]) {
        Ok(_) => panic!("a child that cannot join its cgroup must not park"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("JoinCgroup") || err.contains("cgroup"),
        "the failing step is named: {err}"
    );
    assert!(
        !err.contains("gone"),
        "not reported as a vanished child: {err}"
    );
}
