//! Reads coinop-vmm's JSON-lines event stream ([`vmm_protocol::Event`]) into the times that
//! the harness reports.

use vmm_protocol::{Event, ExitReason};

/// Event times in µs since the harness's spawn timestamp (`--start-time-us`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmmTimes {
    pub vm_created: Option<u64>,
    pub vcpus_started: Option<u64>,
    pub guest_ready: Option<u64>,
    /// The VMM's own peak RSS at `guest_ready` (its `vmhwm_kib`), KiB.
    pub guest_ready_vmhwm_kib: Option<u64>,
    pub exit: Option<u64>,
    pub exit_reason: Option<ExitReason>,
}

/// Lines that are not events (log messages on the same stderr) are skipped: only events
/// carry figures.
pub fn parse(lines: &[String]) -> VmmTimes {
    let mut t = VmmTimes::default();
    for ev in lines.iter().filter_map(|l| Event::from_line(l).ok()) {
        match ev {
            Event::VmCreated { t_us } => t.vm_created = Some(t_us),
            Event::VcpusStarted { t_us, .. } => t.vcpus_started = Some(t_us),
            Event::GuestReady { t_us, vmhwm_kib } => {
                t.guest_ready = Some(t_us);
                t.guest_ready_vmhwm_kib = vmhwm_kib;
            }
            Event::Exit { t_us, reason, .. } => {
                t.exit = Some(t_us);
                t.exit_reason = Some(reason);
            }
            Event::Restored { .. }
            | Event::Warning { .. }
            | Event::AwaitingPersonalisation { .. }
            | Event::Personalised { .. } => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn reads_every_event_and_skips_logs() {
        let lines = [
            line(r#"{"event":"vm_created","t_us":800}"#),
            line("coinop-vmm: a log line, not an event"),
            line(r#"{"event":"warning","t_us":900,"message":"seccomp disabled"}"#),
            line(r#"{"event":"vcpus_started","t_us":1200,"vcpus":2}"#),
            line(r#"{"event":"guest_ready","t_us":2400,"vmhwm_kib":2028}"#),
            line(r#"{"event":"exit","t_us":9000,"reason":"guest_reset","code":0}"#),
        ];
        let t = parse(&lines);
        assert_eq!(t.vm_created, Some(800));
        assert_eq!(t.vcpus_started, Some(1200));
        assert_eq!(t.guest_ready, Some(2400));
        assert_eq!(t.guest_ready_vmhwm_kib, Some(2028));
        assert_eq!(t.exit, Some(9000));
        assert_eq!(t.exit_reason, Some(ExitReason::GuestReset));
    }

    #[test]
    fn missing_events_stay_none() {
        let t = parse(&[line(r#"{"event":"vm_created","t_us":5}"#)]);
        assert_eq!(t.guest_ready, None);
        assert_eq!(t.exit, None);
        let old = parse(&[line(r#"{"event":"guest_ready","t_us":7}"#)]);
        assert_eq!(old.guest_ready, Some(7));
        assert_eq!(old.guest_ready_vmhwm_kib, None, "a VMM before the field");
    }
}
