//! Snapshot and restore against the real `coinop-vmm` on /dev/kvm with the test guest's
//! `mode=count`: a restored guest continues counting where the snapshot caught it (1 and 2
//! vCPUs), unusable snapshots are refused with exit 2 and a message naming the problem,
//! and 20 restores of one snapshot run side by side sharing its memory while each follows
//! its own input.

mod common;

use common::{kvm_ready, scratch, Image, Outcome, Running, Vmm, READY_LINE};
use std::path::Path;

/// Guest RAM of the snapshotted guests (the default).
const GUEST_MIB: u64 = 128;

/// Every complete `count N` line (and its ` ap T`) in console text, in order. A line cut by
/// the snapshot is whole again once the two consoles are joined.
fn counts(text: &str) -> Vec<(u64, Option<u64>)> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.strip_prefix("count "))
        .map(|rest| {
            let mut words = rest.split(" ap ");
            let n = words.next().and_then(|w| w.parse().ok());
            let ap = words.next().and_then(|w| w.parse().ok());
            (n.unwrap_or_else(|| panic!("bad count line {rest:?}")), ap)
        })
        .collect()
}

/// Boots `mode=count` on `vcpus`, waits for a few lines, snapshots into `dir` with
/// `exit`, and returns the first VMM's outcome.
fn snapshot_counting_guest(vcpus: u32, dir: &Path) -> Outcome {
    let mut vm = Vmm::boot(Image::Pvh, "mode=count")
        .vcpus(vcpus)
        .with_control()
        .spawn();
    vm.wait_console("count 3");
    let mut ctl = vm.connect();
    let request = serde_json::json!({"cmd": "snapshot", "dir": dir, "exit": true});
    let reply = ctl.send_line(&request.to_string());
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["state"], "stopping", "{reply}");
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.context());
    assert_eq!(out.event("exit")["reason"], "stopped", "{}", out.context());
    assert!(dir.join("state").is_file() && dir.join("memory").is_file());
    out
}

fn restore(dir: &Path) -> Running {
    Vmm::new().arg("--restore").arg(dir).with_stdin().spawn()
}

/// A restore's events: vm_created, restored, vcpus_started, guest_ready, exit, once each
/// and in time order, and the exit as expected.
fn assert_restored_lifecycle(out: &Outcome, vcpus: u32) {
    let ctx = out.context();
    assert_eq!(out.code, Some(0), "exit code\n{ctx}");
    let mut last = 0;
    for name in [
        "vm_created",
        "restored",
        "vcpus_started",
        "guest_ready",
        "exit",
    ] {
        let t = out.event(name)["t_us"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} without t_us\n{ctx}"));
        assert!(t >= last, "{name} at {t} before {last}\n{ctx}");
        last = t;
    }
    assert_eq!(out.event("vcpus_started")["vcpus"], vcpus, "{ctx}");
    common::assert_plausible_vmhwm(out.event("guest_ready"), &ctx);
    assert_eq!(out.event("exit")["reason"], "guest_reset", "{ctx}");
}

fn continues_where_it_was(vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let snap = scratch();
    let dir = snap.path().join("snap");
    let before = snapshot_counting_guest(vcpus, &dir);
    let seen = counts(&before.stdout);
    let (last, last_ap) = *seen.last().expect("counted before the snapshot");

    let mut vm = restore(&dir);
    // A few lines after the last one the first guest printed: the counter ran on.
    vm.wait_console(&format!("count {}", last + 3));
    vm.write_stdin(b"restored input\n\x04");
    let after = vm.finish();
    assert_restored_lifecycle(&after, vcpus);
    let ctx = format!(
        "{}\n=== restored ===\n{}",
        before.context(),
        after.context()
    );
    assert!(
        !after.stdout.contains(READY_LINE),
        "the restored guest booted again\n{ctx}"
    );
    assert!(
        after.stdout.contains("in restored input\n"),
        "the restored guest read its input\n{ctx}"
    );
    let joined = assert_one_count(&before.stdout, &after.stdout, &ctx);
    assert!(joined.len() as u64 > last + 3, "{ctx}");
    if vcpus > 1 {
        // The AP's counter is in guest memory: it never goes back, and it moved on after
        // the restore, so the AP runs again too.
        let aps: Vec<u64> = joined
            .iter()
            .map(|(_, ap)| ap.unwrap_or_else(|| panic!("no ap figure\n{ctx}")))
            .collect();
        assert!(aps.windows(2).all(|w| w[0] <= w[1]), "ap went back\n{ctx}");
        let last_ap = last_ap.expect("ap figure before the snapshot");
        assert!(
            aps.last().copied().unwrap_or(0) > last_ap,
            "the AP did not run after the restore\n{ctx}"
        );
    }
}

/// One unbroken count across both processes (0, 1, ... last, last + 1, ...); returns it.
fn assert_one_count(before: &str, after: &str, ctx: &str) -> Vec<(u64, Option<u64>)> {
    let joined = counts(&format!("{before}{after}"));
    for (i, (n, _)) in joined.iter().enumerate() {
        assert_eq!(*n, i as u64, "count sequence broken at line {i}\n{ctx}");
    }
    joined
}

#[test]
fn a_restored_guest_continues_where_it_was_1_vcpu() {
    continues_where_it_was(1);
}

#[test]
fn a_restored_guest_continues_where_it_was_2_vcpus() {
    continues_where_it_was(2);
}

#[test]
fn a_snapshot_without_exit_lets_the_guest_run_on() {
    if !kvm_ready() {
        return;
    }
    let snap = scratch();
    let dir = snap.path().join("live");
    let mut vm = Vmm::boot(Image::Pvh, "mode=count")
        .with_control()
        .with_stdin()
        .spawn();
    vm.wait_console("count 2\n");
    let mut ctl = vm.connect();
    let reply = ctl.send_line(&serde_json::json!({"cmd": "snapshot", "dir": dir}).to_string());
    assert_eq!(reply["state"], "running", "{reply}");
    assert_eq!(ctl.ok("status")["state"], "running");
    vm.wait_console("count 8\n");
    // A paused guest stays paused across a snapshot.
    assert_eq!(ctl.ok("pause")["state"], "paused");
    let again = ctl.send_line(&serde_json::json!({"cmd": "snapshot", "dir": dir}).to_string());
    assert_eq!(again["state"], "paused", "{again}");
    // A directory that cannot be created is an error reply, and the guest is unharmed.
    let bad = ctl
        .send_line(&serde_json::json!({"cmd": "snapshot", "dir": "/proc/no/such/dir"}).to_string());
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or("")
            .contains("/proc/no/such/dir"),
        "{bad}"
    );
    assert_eq!(ctl.ok("resume")["state"], "running");
    vm.write_stdin(b"\x04");
    let out = vm.finish();
    out.assert_lifecycle(1, "guest_reset", 0);
}

/// Runs `coinop-vmm --restore dir` and expects exit 2 naming one of `topics`, and nothing
/// made: neither the console file nor the control socket it was asked for.
fn refused(dir: &Path, topics: &[&str]) {
    let files = scratch();
    let console = files.path().join("console");
    let control = files.path().join("control.sock");
    let out = Vmm::new()
        .arg("--restore")
        .arg(dir)
        .arg(format!("--serial=file:{}", console.display()))
        .arg("--control")
        .arg(&control)
        .run();
    out.assert_usage_error(topics);
    let ctx = out.context();
    assert!(
        out.events.iter().all(|e| e["event"] != "vcpus_started"),
        "{ctx}"
    );
    assert!(
        !console.exists(),
        "a refused restore made its console file\n{ctx}"
    );
    assert!(
        !control.exists(),
        "a refused restore made its control socket\n{ctx}"
    );
}

/// A copy of the snapshot `src` in a new directory under `root`, named `name`.
fn copy_snapshot(src: &Path, root: &Path, name: &str) -> std::path::PathBuf {
    let dst = root.join(name);
    std::fs::create_dir(&dst).expect("mkdir");
    for file in ["state", "memory"] {
        std::fs::copy(src.join(file), dst.join(file)).expect("copy");
    }
    dst
}

#[test]
fn unusable_snapshots_are_refused_with_exit_2() {
    if !kvm_ready() {
        return;
    }
    let root = scratch();
    let good = root.path().join("good");
    snapshot_counting_guest(1, &good);
    let state = std::fs::read(good.join("state")).expect("state");

    let corrupt = copy_snapshot(&good, root.path(), "corrupt");
    let mut bytes = state.clone();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(corrupt.join("state"), &bytes).expect("write");
    refused(&corrupt, &["corrupt"]);

    let truncated = copy_snapshot(&good, root.path(), "truncated");
    std::fs::write(truncated.join("state"), &state[..state.len() / 2]).expect("write");
    refused(&truncated, &["truncated"]);

    let short_memory = copy_snapshot(&good, root.path(), "short-memory");
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(short_memory.join("memory"))
        .expect("open");
    memory.set_len((GUEST_MIB << 20) - 4096).expect("truncate");
    refused(&short_memory, &["memory file"]);

    // The version string sits in the header as plain bytes: swap it for another release's.
    let foreign = copy_snapshot(&good, root.path(), "foreign");
    let ours = env!("CARGO_PKG_VERSION").as_bytes();
    let pos = state
        .windows(ours.len())
        .position(|w| w == ours)
        .expect("the header names the version");
    let mut bytes = state.clone();
    let other: Vec<u8> = ours
        .iter()
        .map(|&b| if b == b'.' { b'.' } else { b'9' })
        .collect();
    bytes[pos..pos + ours.len()].copy_from_slice(&other);
    std::fs::write(foreign.join("state"), &bytes).expect("write");
    refused(&foreign, &["taken by coinop-vmm"]);

    // A state file of the format before this one (version 1 had no personalisation port).
    let old_format = copy_snapshot(&good, root.path(), "old-format");
    let mut bytes = state.clone();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(old_format.join("state"), &bytes).expect("write");
    refused(&old_format, &["snapshot format version 1"]);

    // Another host: the same state under a header with another host fingerprint.
    let other_host = copy_snapshot(&good, root.path(), "other-host");
    let (header, body) = vmm::snapshot::format::decode(&state).expect("our own file decodes");
    let moved = vmm::snapshot::format::encode(body, header.host_fingerprint ^ 1, header.memory_len);
    std::fs::write(other_host.join("state"), moved).expect("write");
    refused(&other_host, &["different CPUID/KVM capabilities"]);

    // A state that passes its checksum but asks for more memory than the host has, with a
    // (sparse) memory file of that size: refused as `--mem-mib` would be, not mapped.
    let host_mib = vmm::cli::host_memory_mib().expect("/proc/meminfo names MemTotal");
    let huge = copy_snapshot(&good, root.path(), "huge");
    let mut machine: vmm::snapshot::MachineState =
        postcard::from_bytes(body).expect("our own state decodes");
    machine.mem_mib = host_mib * 2;
    let memory_len: u64 = vmm::vstate::memory::ram_regions(machine.mem_mib << 20)
        .iter()
        .map(|(_, len)| len)
        .sum();
    std::fs::OpenOptions::new()
        .write(true)
        .open(huge.join("memory"))
        .expect("open")
        .set_len(memory_len)
        .expect("sparse memory file");
    let forged = postcard::to_stdvec(&machine).expect("encodes");
    let bytes = vmm::snapshot::format::encode(&forged, header.host_fingerprint, memory_len);
    std::fs::write(huge.join("state"), bytes).expect("write");
    refused(&huge, &["more than this host's"]);

    let garbage = copy_snapshot(&good, root.path(), "garbage");
    std::fs::write(garbage.join("state"), b"#!/bin/sh\necho not a snapshot\n").expect("write");
    refused(&garbage, &["not a coinop-vmm snapshot"]);

    refused(&root.path().join("missing"), &["missing/state"]);
}

fn smaps_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in\n{text}"))
}

#[test]
fn twenty_restores_share_memory_and_follow_their_own_input() {
    if !kvm_ready() {
        return;
    }
    const RESTORES: usize = 20;
    let snap = scratch();
    let dir = snap.path().join("golden");
    let before = snapshot_counting_guest(1, &dir);
    let (last, _) = *counts(&before.stdout).last().expect("counted");

    let mut vms: Vec<Running> = (0..RESTORES).map(|_| restore(&dir)).collect();
    let mut private_kib = Vec::new();
    for vm in &mut vms {
        vm.wait_console(&format!("count {}\n", last + 3));
        let private = smaps_kib(vm.pid(), "Private_Clean:") + smaps_kib(vm.pid(), "Private_Dirty:");
        private_kib.push(private);
    }
    // Each VMM's own memory (its heap, stacks and the guest pages it wrote) stays far below
    // the guest's 128 MiB: clean guest pages come from the shared page cache.
    let limit_kib = (GUEST_MIB << 10) / 8;
    for (i, kib) in private_kib.iter().enumerate() {
        assert!(
            *kib < limit_kib,
            "restore {i}: {kib} KiB private, limit {limit_kib} KiB (all: {private_kib:?})"
        );
    }
    eprintln!("private KiB per restored VMM: {private_kib:?}");

    for (i, vm) in vms.iter_mut().enumerate() {
        vm.write_stdin(format!("lease {i}\n\x04").as_bytes());
    }
    for (i, vm) in vms.into_iter().enumerate() {
        let out = vm.finish();
        assert_restored_lifecycle(&out, 1);
        let ctx = out.context();
        let answers: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("in "))
            .collect();
        assert_eq!(answers, [format!("in lease {i}")], "{ctx}");
        // Every restore starts where the snapshot was.
        assert_one_count(&before.stdout, &out.stdout, &ctx);
    }
}

/// A guest with a virtio disk is snapshotted with it and restored with the disk the
/// restoring caller attaches (a copy here); a restore that attaches another number of
/// devices is refused.
#[test]
fn a_guest_with_a_disk_restores_with_a_disk() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk image");
    let mut vm = Vmm::boot(Image::Pvh, "mode=count")
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .with_control()
        .spawn();
    vm.wait_console("count 2\n");
    let mut ctl = vm.connect();
    let target = dir.path().join("snap");
    let reply = ctl.send_line(
        &serde_json::json!({"cmd": "snapshot", "dir": target, "exit": true}).to_string(),
    );
    assert_eq!(reply["state"], "stopping", "{reply}");
    let before = vm.finish();
    assert_eq!(before.code, Some(0), "{}", before.context());

    refused(&target, &["1 virtio devices", "attaches 0"]);
    let copy = dir.path().join("copy.img");
    std::fs::copy(&disk, &copy).expect("copy");
    let two = Vmm::new()
        .arg("--restore")
        .arg(&target)
        .args(["--disk", &format!("path={}", copy.display())])
        .args(["--disk", &format!("path={}", disk.display())])
        .run();
    two.assert_usage_error(&["attaches 2"]);

    let mut vm = Vmm::new()
        .arg("--restore")
        .arg(&target)
        .args(["--disk", &format!("path={}", copy.display())])
        .with_stdin()
        .spawn();
    let (last, _) = *counts(&before.stdout).last().expect("counted");
    vm.wait_console(&format!("count {}\n", last + 2));
    vm.write_stdin(b"\x04");
    let after = vm.finish();
    assert_restored_lifecycle(&after, 1);
    assert_one_count(&before.stdout, &after.stdout, &after.context());
}

/// A restored guest is snapshotted again into the directory it was restored from while
/// another guest restored from that directory runs on: the bystander keeps its memory (the
/// new memory file replaces the old one instead of rewriting it), and a third generation
/// continues the second's count.
#[test]
fn a_restored_guest_snapshots_again_into_its_own_directory() {
    if !kvm_ready() {
        return;
    }
    let snap = scratch();
    let dir = snap.path().join("snap");
    let first = snapshot_counting_guest(1, &dir);
    let (last, _) = *counts(&first.stdout).last().expect("counted");

    let mut bystander = restore(&dir);
    let mut second = Vmm::new().arg("--restore").arg(&dir).with_control().spawn();
    second.wait_console(&format!("count {}\n", last + 3));
    let mut ctl = second.connect();
    let reply = ctl
        .send_line(&serde_json::json!({"cmd": "snapshot", "dir": dir, "exit": true}).to_string());
    assert_eq!(reply["state"], "stopping", "{reply}");
    let second = second.finish();
    assert_eq!(second.code, Some(0), "{}", second.context());

    bystander.wait_console(&format!("count {}\n", last + 8));
    bystander.write_stdin(b"still here\n\x04");
    let bystander = bystander.finish();
    assert_restored_lifecycle(&bystander, 1);
    assert!(
        bystander.stdout.contains("in still here\n"),
        "{}",
        bystander.context()
    );
    assert_one_count(&first.stdout, &bystander.stdout, &bystander.context());

    let (second_last, _) = *counts(&second.stdout).last().expect("second counted");
    let mut third = restore(&dir);
    third.wait_console(&format!("count {}\n", second_last + 2));
    third.write_stdin(b"\x04");
    let third = third.finish();
    assert_restored_lifecycle(&third, 1);
    let both = format!("{}{}", first.stdout, second.stdout);
    assert_one_count(&both, &third.stdout, &third.context());
}
