//! A jailed coinop-vmm on the real test guest: it boots, runs as the lease's unprivileged
//! uid, is PID 1 of its own PID namespace, and its root holds nothing but the VMM, its
//! libraries, the kernel and /dev/kvm.

mod isolation_support;
mod proc_status;

use coinop_host::jail::Ended;
use isolation_support::{boot, boot_parked, build_guest, control, ready_jail};
use proc_status::status_field;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every non-directory path under `root`, relative, as the jailed process sees its `/`.
fn files_under(root: &Path, prefix: &Path, out: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(root).expect("read jail dir").flatten() {
        let rel = prefix.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            files_under(&entry.path(), &rel, out);
        } else {
            out.insert(rel);
        }
    }
}

#[test]
fn jailed_vmm_boots_unprivileged_alone_and_sees_only_its_files() {
    let Some((dir, config)) = ready_jail() else {
        return;
    };
    let guest = build_guest(&dir.path().join("guest"));
    let jail = config
        .prepare("jail-test", &guest, None)
        .expect("prepare jail");
    let mut vm = boot(&jail, dir.path(), "mode=spin:600000", 1, 64, vec![]);
    let pid = vm.pid();

    let uid = jail.uid().to_string();
    let uids: Vec<String> = status_field(pid, "Uid:")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(uids, vec![uid.clone(); 4], "real, effective, saved, fs uid");
    let gids: Vec<String> = status_field(pid, "Gid:")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(gids, vec![uid; 4]);
    assert_eq!(status_field(pid, "Groups:"), "");
    assert_eq!(
        status_field(pid, "Seccomp:"),
        "2",
        "the VMM's own filters are on"
    );
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");

    // PID namespace: the VMM is PID 1 of a namespace of its own, so it sees no other pid.
    assert_eq!(status_field(pid, "NSpid:"), format!("{pid}\t1"));
    for ns in ["pid", "mnt", "ipc", "uts", "net"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("own ns");
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("its ns");
        assert_ne!(mine, its, "{ns} namespace is shared with the host");
    }

    // Its root: exactly the VMM, its libraries, the kernel and /dev/kvm.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(
        !root.join("etc/passwd").exists(),
        "host /etc/passwd is visible"
    );
    assert!(
        !root.join("proc/1").exists(),
        "a /proc is mounted in the jail"
    );
    let mut seen = BTreeSet::new();
    files_under(&root, Path::new("/"), &mut seen);
    let mut expected: BTreeSet<PathBuf> = config.libraries.iter().cloned().collect();
    for path in ["/coinop-vmm", "/kernel", "/dev/kvm"] {
        expected.insert(PathBuf::from(path));
    }
    assert_eq!(seen, expected);
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root_mount.contains(" ro,") || root_mount.contains(" ro "),
        "{root_mount}"
    );
    assert!(
        !mounts.lines().any(|l| l.split(' ').nth(4) == Some("/etc")),
        "{mounts}"
    );

    // Still a working VMM: the passed control socket answers, and stop ends it cleanly.
    assert!(control(&vm.control, r#"{"cmd":"status"}"#).contains("\"running\""));
    assert!(control(&vm.control, r#"{"cmd":"stop"}"#).contains("stopping"));
    assert_eq!(vm.wait(), Ended::Exited(0));
    let console = std::fs::read_to_string(&vm.console).expect("console");
    assert!(console.contains("coinop-testguest ready"), "{console}");
    jail.remove().expect("remove jail");
}

#[test]
fn a_bad_spawn_names_the_failing_step() {
    let Some((dir, mut config)) = ready_jail() else {
        return;
    };
    let guest = build_guest(&dir.path().join("guest"));
    // A library path that does not exist on the host: the bind mount must fail, loudly.
    config
        .libraries
        .push(PathBuf::from("/nonexistent/libcoinop.so"));
    let jail = config
        .prepare("bad-spawn", &guest, None)
        .expect("prepare jail");
    let err = jail
        .spawn(vec![], vec![], vec![])
        .expect_err("bind of a missing file fails");
    let text = err.to_string();
    assert!(text.contains("Bind") && text.contains("ENOENT"), "{text}");
    jail.remove().expect("remove jail");
}

#[test]
fn lease_ids_cannot_leave_the_jail_base() {
    let Some((_dir, config)) = ready_jail() else {
        return;
    };
    for bad in ["", "..", "a/b"] {
        assert!(
            config.prepare(bad, Path::new("/dev/null"), None).is_err(),
            "{bad:?}"
        );
    }
}

/// The file size limit holds every file the VMM writes, as it writes it: a guest flooding
/// its console gets no more of it onto the host's disk than the limit (the VMM's write past
/// it fails, and its UART drops the bytes, as one with nothing attached). On both launch
/// paths: a jail built for the lease, and a parked child.
#[test]
fn a_vmm_writes_no_file_past_its_file_size_limit() {
    let Some((dir, config)) = ready_jail() else {
        return;
    };
    const LIMIT: u64 = 16 << 10;
    let guest = build_guest(&dir.path().join("guest"));
    let check = |vm: &isolation_support::Booted, how: &str| {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", vm.pid())).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max file size"))
            .expect("a file size line");
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["Max", "file", "size", "16384", "16384", "bytes"],
            "{how}"
        );
        // The flood is 256 KiB: wait until the console has reached the limit (or passed
        // it), then give the guest time to go on past it.
        let size = || std::fs::metadata(&vm.console).map_or(0, |m| m.len());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while size() < LIMIT - 64 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let bytes = size();
        assert!(
            (LIMIT - 64..=LIMIT).contains(&bytes),
            "{how}: console of {bytes} bytes against a limit of {LIMIT}"
        );
    };

    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).expect("dir");
    let mut jail = config
        .prepare("fsize-fresh", &guest, None)
        .expect("prepare jail");
    jail.set_max_file_bytes(LIMIT);
    let vm = boot(&jail, &fresh, "mode=flood:256", 1, 64, vec![]);
    check(&vm, "spawned");
    drop(vm);
    jail.remove().expect("remove jail");

    let parked_dir = dir.path().join("parked");
    std::fs::create_dir(&parked_dir).expect("dir");
    let mut parked = config.park("fsize-parked", Vec::new()).expect("park");
    parked.set_max_file_bytes(LIMIT);
    let (vm, jail) = boot_parked(parked, &guest, &parked_dir, "mode=flood:256", 1, 64);
    check(&vm, "parked");
    drop(vm);
    jail.remove().expect("remove jail");
}
