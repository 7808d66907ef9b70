//! The personalisation channel against the real `coinop-vmm` on /dev/kvm with the test
//! guest's `mode=personalise[:<ms>]` (write 124, read one line from COM2 with `rep insb`,
//! print `personalised: <line>`, write 123, idle): a cold-booted guest gets exactly its line
//! before `guest_ready`, in one VM exit per KiB; a line sent before the 124 waits for it; bad lines and a second line are
//! refused and deliver nothing; five restores of one snapshot taken while the guest waited
//! each get only their own line, with the boot events of a cold boot (and so does a
//! 2-vCPU guest); a guest snapshotted after it had its line refuses another.

mod common;

use common::{kvm_ready, scratch, Image, Outcome, Running, Vmm};
use serde_json::{json, Value};
use std::path::Path;

/// What the test guest prints when COM2 was empty until it wrote 124, and after the line.
const EMPTY_BEFORE: &str = "personalise: com2 empty before 124\n";
const EMPTY_AFTER: &str = "personalise: com2 empty after the line\n";

/// A line in the protocol's format, `n` making it this lease's own.
fn lease_line(n: usize) -> String {
    format!(
        "coinop-personalise/1 entropy={:064x} time=1764892800.{n:09} hostname=lease-{n} ip=10.0.{n}.2/24",
        0x1234_5678_9abc_def0_u128 * (n as u128 + 1)
    )
}

fn personalise(ctl: &mut common::Control, line: &str) -> Value {
    ctl.send_line(&json!({"cmd": "personalise", "line": line}).to_string())
}

/// Every `personalised: ` line on a console, without the prefix.
fn personalised_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("personalised: "))
        .collect()
}

/// How many data-register reads (VM exits) the guest needed for its line, from the
/// `personalised` event. The test guest reads with `rep insb` in 1 KiB chunks after
/// polling LSR until data is ready, so a line of `n` bytes (newline included) takes
/// ceil(n / 1024) of them, where byte-wise reads would take `n`.
fn assert_read_in_bulk(out: &Outcome, line: &str) {
    let ctx = out.context();
    let reads = out.event("personalised")["data_reads"]
        .as_u64()
        .unwrap_or_else(|| panic!("personalised without data_reads\n{ctx}"));
    assert_eq!(reads as usize, (line.len() + 1).div_ceil(1024), "{ctx}");
}

/// Ends a guest that idles after its personalisation and checks it ended on request.
fn stop(vm: Running) -> Outcome {
    let reply = vm.connect().cmd("stop");
    assert_eq!(reply["state"], "stopping", "{reply}");
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.context());
    assert_eq!(out.event("exit")["reason"], "stopped", "{}", out.context());
    out
}

/// Each of `names` emitted exactly once, with an integer `t_us`, in this order.
fn assert_events_in_order(out: &Outcome, names: &[&str]) {
    let ctx = out.context();
    let mut last = 0;
    for name in names {
        let t = out.event(name)["t_us"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} without an integer t_us\n{ctx}"));
        assert!(t >= last, "{name} at {t} before {last}\n{ctx}");
        last = t;
    }
    let positions: Vec<usize> = names
        .iter()
        .map(|n| {
            out.events
                .iter()
                .position(|e| e["event"] == *n)
                .expect("seen above")
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "events out of order, want {names:?}\n{ctx}"
    );
}

const COLD_BOOT: [&str; 5] = [
    "vm_created",
    "vcpus_started",
    "awaiting_personalisation",
    "personalised",
    "guest_ready",
];

fn cold_boot_gets_its_exact_line(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    // Every printable byte, JSON's own escapes (" and \) among them.
    let printable: String = (0x20u8..=0x7e).map(char::from).collect();
    let line = format!("coinop-personalise/1 hostname=cold {printable}");
    let mut vm = Vmm::boot(image, "mode=personalise")
        .vcpus(vcpus)
        .with_control()
        .spawn();
    vm.wait_event("awaiting_personalisation");
    let mut ctl = vm.connect();
    let reply = personalise(&mut ctl, &line);
    assert_eq!(reply, json!({"ok": true}));
    vm.wait_event("guest_ready");
    // The control socket serves one client at a time.
    drop(ctl);
    let out = stop(vm);
    let ctx = out.context();
    assert_eq!(personalised_lines(&out.stdout), [line.as_str()], "{ctx}");
    assert!(out.stdout.contains(EMPTY_BEFORE), "{ctx}");
    assert!(out.stdout.contains(EMPTY_AFTER), "{ctx}");
    assert_events_in_order(&out, &COLD_BOOT);
    assert_read_in_bulk(&out, &line);
    assert_eq!(out.event("vcpus_started")["vcpus"], vcpus, "{ctx}");
}

#[test]
fn cold_boot_gets_its_exact_line_before_guest_ready_pvh_1_vcpu() {
    cold_boot_gets_its_exact_line(Image::Pvh, 1);
}

#[test]
fn cold_boot_gets_its_exact_line_before_guest_ready_elf64_2_vcpus() {
    cold_boot_gets_its_exact_line(Image::Elf64, 2);
}

#[test]
fn a_line_sent_before_124_is_held_until_then() {
    if !kvm_ready() {
        return;
    }
    // The guest spins 1.5 s before its 124: the line arrives well before it.
    let mut vm = Vmm::boot(Image::Pvh, "mode=personalise:1500")
        .with_control()
        .spawn();
    let mut ctl = vm.connect();
    let line = lease_line(7);
    assert_eq!(personalise(&mut ctl, &line), json!({"ok": true}));
    let early = vm.events_so_far();
    assert!(
        early
            .iter()
            .all(|e| e["event"] != "awaiting_personalisation"),
        "the test needs the line to arrive before the 124; events: {early:?}"
    );
    vm.wait_event("guest_ready");
    drop(ctl);
    let out = stop(vm);
    let ctx = out.context();
    // The guest looked at COM2 right before its 124 and found nothing there.
    assert!(out.stdout.contains(EMPTY_BEFORE), "{ctx}");
    assert_eq!(personalised_lines(&out.stdout), [line.as_str()], "{ctx}");
    assert!(out.stdout.contains(EMPTY_AFTER), "{ctx}");
    assert_events_in_order(&out, &COLD_BOOT);
}

#[test]
fn bad_lines_and_a_second_line_are_refused_and_deliver_nothing() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, "mode=personalise")
        .with_control()
        .spawn();
    vm.wait_event("awaiting_personalisation");
    let mut ctl = vm.connect();
    let refusals = [
        (json!("a\u{1}b"), "byte 1 is 0x01, not printable"),
        (json!("two\nlines"), "byte 3 is 0x0a, not printable"),
        (json!("tab\there"), "byte 3 is 0x09, not printable"),
        (json!("caf\u{e9}"), "byte 3 is 0xc3, not printable"),
        (json!("x\u{7f}"), "byte 1 is 0x7f, not printable"),
        (json!("y".repeat(4097)), "4097 bytes, more than 4096"),
        (json!(5), "bad arguments to 'personalise'"),
        (Value::Null, "bad arguments to 'personalise'"),
    ];
    for (line, why) in refusals {
        let reply = ctl.send_line(&json!({"cmd": "personalise", "line": line}).to_string());
        assert_eq!(reply["ok"], false, "{line}: {reply}");
        let error = reply["error"].as_str().expect("an error text");
        assert!(error.contains(why), "{line}: {error}");
    }
    let reply = ctl.send_line(r#"{"cmd":"personalise"}"#);
    assert_eq!(
        reply["error"],
        "bad arguments to 'personalise': missing field `line`"
    );
    // The longest line there may be, then one more that must not follow it.
    let longest = "coinop-personalise/1 ".to_string() + &"z".repeat(4096 - 21);
    assert_eq!(longest.len(), 4096);
    assert_eq!(personalise(&mut ctl, &longest), json!({"ok": true}));
    let second = personalise(&mut ctl, &lease_line(2));
    assert_eq!(second["ok"], false, "{second}");
    assert!(
        second["error"]
            .as_str()
            .is_some_and(|e| e.contains("already has its line")),
        "{second}"
    );
    vm.wait_event("guest_ready");
    let again = personalise(&mut ctl, &lease_line(3));
    assert_eq!(again["ok"], false, "{again}");
    drop(ctl);
    let out = stop(vm);
    let ctx = out.context();
    // Only the accepted line reached the guest, and nothing after its newline.
    assert_eq!(personalised_lines(&out.stdout), [longest.as_str()], "{ctx}");
    assert!(out.stdout.contains(EMPTY_AFTER), "{ctx}");
    assert_events_in_order(&out, &COLD_BOOT);
    // 4097 bytes: five `rep insb` exits, not 4097 `inb` ones.
    assert_read_in_bulk(&out, &longest);
}

/// Boots `mode=personalise` on `vcpus`, waits until it awaits its line, and snapshots it
/// into `dir` (the VMM exits): the golden snapshot of the protocol.
fn snapshot_awaiting_guest(dir: &Path, vcpus: u32) -> Outcome {
    let mut vm = Vmm::boot(Image::Pvh, "mode=personalise")
        .vcpus(vcpus)
        .with_control()
        .spawn();
    vm.wait_event("awaiting_personalisation");
    let reply = vm
        .connect()
        .send_line(&json!({"cmd": "snapshot", "dir": dir, "exit": true}).to_string());
    assert_eq!(reply["state"], "stopping", "{reply}");
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.context());
    assert!(
        personalised_lines(&out.stdout).is_empty(),
        "{}",
        out.context()
    );
    out
}

fn restore(dir: &Path) -> Running {
    Vmm::new().arg("--restore").arg(dir).with_control().spawn()
}

#[test]
fn five_restores_of_one_awaiting_snapshot_each_get_only_their_own_line() {
    if !kvm_ready() {
        return;
    }
    const RESTORES: usize = 5;
    let snap = scratch();
    let dir = snap.path().join("golden");
    let golden = snapshot_awaiting_guest(&dir, 1);
    assert!(golden.stdout.contains(EMPTY_BEFORE), "{}", golden.context());

    let vms: Vec<Running> = (0..RESTORES).map(|_| restore(&dir)).collect();
    // Each gets its line as soon as its control socket answers: possibly before its vCPUs
    // run, which a restored guest that saw 124 must take as well.
    for (i, vm) in vms.iter().enumerate() {
        let reply = personalise(&mut vm.connect(), &lease_line(i));
        assert_eq!(reply, json!({"ok": true}), "restore {i}");
    }
    let mut outs = Vec::new();
    for mut vm in vms {
        vm.wait_event("guest_ready");
        outs.push(stop(vm));
    }
    for (i, out) in outs.iter().enumerate() {
        let ctx = out.context();
        assert_eq!(
            personalised_lines(&out.stdout),
            [lease_line(i).as_str()],
            "restore {i}\n{ctx}"
        );
        assert!(out.stdout.contains(EMPTY_AFTER), "restore {i}\n{ctx}");
        assert!(
            !out.stdout.contains(EMPTY_BEFORE),
            "restore {i} booted again\n{ctx}"
        );
        assert_events_in_order(out, &RESTORED);
        assert_read_in_bulk(out, &lease_line(i));
    }
}

const RESTORED: [&str; 6] = [
    "vm_created",
    "restored",
    "vcpus_started",
    "awaiting_personalisation",
    "personalised",
    "guest_ready",
];

#[test]
fn a_2_vcpu_guest_restored_while_waiting_gets_its_line() {
    if !kvm_ready() {
        return;
    }
    let snap = scratch();
    let dir = snap.path().join("golden2");
    snapshot_awaiting_guest(&dir, 2);
    let mut vm = restore(&dir);
    let line = lease_line(42);
    assert_eq!(personalise(&mut vm.connect(), &line), json!({"ok": true}));
    vm.wait_event("guest_ready");
    let out = stop(vm);
    let ctx = out.context();
    assert_eq!(personalised_lines(&out.stdout), [line.as_str()], "{ctx}");
    assert_eq!(out.event("vcpus_started")["vcpus"], 2, "{ctx}");
    assert_events_in_order(&out, &RESTORED);
}

#[test]
fn a_guest_snapshotted_after_its_line_refuses_another() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, "mode=personalise")
        .with_control()
        .spawn();
    let mut ctl = vm.connect();
    assert_eq!(personalise(&mut ctl, &lease_line(1)), json!({"ok": true}));
    vm.wait_event("guest_ready");
    let snap = scratch();
    let dir = snap.path().join("ready");
    let reply = ctl.send_line(&json!({"cmd": "snapshot", "dir": dir, "exit": true}).to_string());
    assert_eq!(reply["state"], "stopping", "{reply}");
    let first = vm.finish();
    assert_eq!(first.code, Some(0), "{}", first.context());

    let mut back = restore(&dir);
    back.wait_event("guest_ready");
    let reply = personalise(&mut back.connect(), &lease_line(2));
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("already has its line")),
        "{reply}"
    );
    let out = stop(back);
    let ctx = out.context();
    assert!(personalised_lines(&out.stdout).is_empty(), "{ctx}");
    assert_events_in_order(
        &out,
        &["vm_created", "restored", "vcpus_started", "guest_ready"],
    );
    assert!(
        out.events
            .iter()
            .all(|e| e["event"] != "awaiting_personalisation" && e["event"] != "personalised"),
        "a ready guest is not announced as waiting\n{ctx}"
    );
}

/// `status`'s `ring_unheeded_us` with the test guest in doorbell mode: a guest that heeds
/// its ring (`mode=personalise-doorbell`, writing 0xda as soon as MSR shows it) owes no
/// answer within moments; one that never does (`-deaf`) is said to owe one, for longer at
/// each look, until its line answers the call. Both take their line through the doorbell.
#[test]
fn status_tells_how_long_a_doorbell_guest_has_left_its_ring_unheeded() {
    if !kvm_ready() {
        return;
    }
    for (mode, heeds) in [
        ("mode=personalise-doorbell", true),
        ("mode=personalise-doorbell-deaf", false),
    ] {
        let mut vm = Vmm::boot(Image::Pvh, mode).with_control().spawn();
        vm.wait_event("awaiting_personalisation");
        let mut ctl = vm.connect();
        assert_eq!(
            ctl.cmd("status").get("ring_unheeded_us"),
            None,
            "{mode}: not rung"
        );
        assert_eq!(ctl.cmd("ring"), json!({"ok": true}), "{mode}");
        let unheeded = |ctl: &mut common::Control| ctl.cmd("status")["ring_unheeded_us"].as_u64();
        let first = unheeded(&mut ctl);
        assert!(
            first.is_some(),
            "{mode}: a ring waits from the moment it is rung"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut last = first;
        while last.is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            last = unheeded(&mut ctl);
            if !heeds {
                // Never answered: what it owes only grows.
                break;
            }
        }
        if heeds {
            assert_eq!(last, None, "{mode}: heeded within 5 s");
        } else {
            assert!(last > first, "{mode}: {first:?} then {last:?}");
        }
        let line = lease_line(7);
        assert_eq!(personalise(&mut ctl, &line), json!({"ok": true}), "{mode}");
        assert_eq!(
            unheeded(&mut ctl),
            None,
            "{mode}: the line answered the call"
        );
        vm.wait_event("guest_ready");
        drop(ctl);
        let out = stop(vm);
        let ctx = out.context();
        assert_eq!(personalised_lines(&out.stdout), [line.as_str()], "{ctx}");
        let said = if heeds {
            "personalise: rung before the line, heeded\n"
        } else {
            "personalise: rung before the line, not heeded\n"
        };
        assert!(out.stdout.contains(said), "{ctx}");
    }
}
