//! The JSON-lines control socket against a live guest: status, pause/resume with the
//! metering figures that must follow them, stop, console input and bad requests.

mod common;

use common::{kvm_ready, Image, Vmm, READY_LINE};
use std::time::Duration;

/// Long enough that the guest is still spinning whenever the test stops it.
const SPIN_FOREVER: &str = "mode=spin:600000";
/// While paused, the vCPU threads burn nothing; allow scheduler bookkeeping noise.
const PAUSED_JITTER_US: u64 = 2_000;
const WINDOW: Duration = Duration::from_millis(150);

#[test]
fn pause_freezes_usage_resume_grows_it_stop_ends() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, SPIN_FOREVER)
        .vcpus(2)
        .with_control()
        .spawn();
    vm.wait_event("guest_ready");
    let mut ctl = vm.connect();

    let status = ctl.ok("status");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["vcpus"], 2, "{status}");
    assert_eq!(status["mem_mib"], 128, "{status}");
    let uptime = status["uptime_us"].as_u64().expect("status.uptime_us");
    assert!(ctl.vcpu_total_us(2) > 0, "the guest has run");

    assert_eq!(ctl.ok("pause")["state"], "paused");
    assert_eq!(ctl.ok("status")["state"], "paused");
    let frozen = ctl.vcpu_total_us(2);
    std::thread::sleep(WINDOW);
    let still = ctl.vcpu_total_us(2);
    assert!(
        still - frozen < PAUSED_JITTER_US,
        "paused guest burned {} µs",
        still - frozen
    );

    assert_eq!(ctl.ok("resume")["state"], "running");
    let resumed = ctl.vcpu_total_us(2);
    std::thread::sleep(WINDOW);
    let later = ctl.vcpu_total_us(2);
    assert!(
        later > resumed + 5_000,
        "spinning guest only burned {} µs in {WINDOW:?}",
        later - resumed
    );
    let status = ctl.ok("status");
    assert!(status["uptime_us"].as_u64().expect("status.uptime_us") > uptime);

    assert_eq!(ctl.ok("stop")["state"], "stopping");
    let out = vm.finish();
    out.assert_lifecycle(2, "stopped", 0);
    assert_eq!(out.stdout, READY_LINE, "{}", out.context());
}

#[test]
fn stop_while_paused() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Elf64, SPIN_FOREVER).with_control().spawn();
    vm.wait_event("guest_ready");
    let mut ctl = vm.connect();
    ctl.ok("pause");
    ctl.ok("stop");
    vm.finish().assert_lifecycle(1, "stopped", 0);
}

#[test]
fn bad_requests_get_errors_and_clients_take_turns() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, SPIN_FOREVER).with_control().spawn();
    vm.wait_event("guest_ready");

    let mut first = vm.connect();
    let reply = first.cmd("bogus");
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("bogus"), "error names the command: {reply}");
    for garbage in ["not json", "{}", "[1,2]", r#"{"cmd":42}"#] {
        let reply = first.send_line(garbage);
        assert_eq!(reply["ok"], false, "{garbage:?} → {reply}");
    }
    assert_eq!(first.ok("status")["state"], "running");
    drop(first);

    // The next client is served once the first has gone.
    let mut second = vm.connect();
    assert_eq!(second.ok("status")["state"], "running");
    second.ok("stop");
    vm.finish().assert_lifecycle(1, "stopped", 0);
}

#[test]
fn console_input_reaches_the_guest() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Elf64, "mode=echo").with_control().spawn();
    vm.wait_console(READY_LINE);
    let mut ctl = vm.connect();
    for chunk in ["hello ", "through the socket\n"] {
        let reply = ctl
            .send_line(&serde_json::json!({ "cmd": "console_input", "data": chunk }).to_string());
        assert_eq!(reply["ok"], true, "{reply}");
    }
    vm.wait_console("socket\n");
    let reply = ctl.send_line(r#"{"cmd":"console_input","data":"\u0004"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let out = vm.finish();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}hello through the socket\n"),
        "{}",
        out.context()
    );
}

/// `mode=idle` (what the density benchmark boots a hundred of) stays up halted: the vCPU
/// burns no more than scheduler noise while the guest runs, and a stop ends it cleanly.
#[test]
fn idle_guest_stays_up_without_burning_its_vcpu() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, "mode=idle").with_control().spawn();
    vm.wait_event("guest_ready");
    let mut ctl = vm.connect();
    let before = ctl.vcpu_total_us(1);
    std::thread::sleep(WINDOW);
    assert_eq!(ctl.ok("status")["state"], "running");
    let after = ctl.vcpu_total_us(1);
    assert!(
        after - before < PAUSED_JITTER_US,
        "idle guest burned {} µs in {WINDOW:?}",
        after - before
    );
    assert_eq!(ctl.ok("stop")["state"], "stopping");
    let out = vm.finish();
    out.assert_lifecycle(1, "stopped", 0);
    assert_eq!(out.stdout, READY_LINE, "{}", out.context());
}
