//! Reads coinop-vmm's JSON-lines event stream (see the vmm crate docs) into the times that
//! the harness reports.

use serde::Deserialize;

use crate::child_run::TimedLine;

#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    t_us: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// Event times in µs since the harness's spawn timestamp (`--start-time-us`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmmTimes {
    pub vm_created: Option<u64>,
    pub vcpus_started: Option<u64>,
    pub guest_ready: Option<u64>,
    pub exit: Option<u64>,
    pub exit_reason: Option<String>,
}

/// Non-JSON lines (log messages) are skipped: only events carry figures.
pub fn parse(lines: &[TimedLine]) -> VmmTimes {
    let mut t = VmmTimes::default();
    for ev in lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Event>(&l.text).ok())
    {
        match ev.event.as_str() {
            "vm_created" => t.vm_created = Some(ev.t_us),
            "vcpus_started" => t.vcpus_started = Some(ev.t_us),
            "guest_ready" => t.guest_ready = Some(ev.t_us),
            "exit" => {
                t.exit = Some(ev.t_us);
                t.exit_reason = ev.reason;
            }
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> TimedLine {
        TimedLine {
            at_us: 0,
            text: text.to_string(),
        }
    }

    #[test]
    fn reads_every_event_and_skips_logs() {
        let lines = [
            line(r#"{"event":"vm_created","t_us":800}"#),
            line("coinop-vmm: a log line, not an event"),
            line(r#"{"event":"vcpus_started","t_us":1200,"vcpus":2}"#),
            line(r#"{"event":"guest_ready","t_us":2400}"#),
            line(r#"{"event":"exit","t_us":9000,"reason":"guest_reset","code":0}"#),
        ];
        let t = parse(&lines);
        assert_eq!(t.vm_created, Some(800));
        assert_eq!(t.vcpus_started, Some(1200));
        assert_eq!(t.guest_ready, Some(2400));
        assert_eq!(t.exit, Some(9000));
        assert_eq!(t.exit_reason.as_deref(), Some("guest_reset"));
    }

    #[test]
    fn missing_events_stay_none() {
        let t = parse(&[line(r#"{"event":"vm_created","t_us":5}"#)]);
        assert_eq!(t.guest_ready, None);
        assert_eq!(t.exit, None);
    }
}
