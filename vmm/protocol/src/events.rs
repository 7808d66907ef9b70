//! The event stream: one [`Event`] per line, written by the VMM as things happen.

use crate::VcpuDump;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One line of the event stream, tagged by its `event` field.
///
/// Every event carries `t_us`: µs since the caller's `--start-time-us` (its CLOCK_MONOTONIC
/// reading taken just before the spawn), or since the VMM started without it. `t_us` is a
/// field of each variant rather than of a wrapper so that the derived serialization writes
/// `event`, then `t_us`, then the rest: the order the stream has always had. The fields after
/// `t_us` are declared in alphabetical order for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Something the operator should know, e.g. that seccomp is off (`--no-seccomp`).
    Warning {
        /// µs since the time base.
        t_us: u64,
        /// What is wrong, for a human.
        message: String,
    },
    /// The KVM VM exists, with its memory and interrupt controller.
    VmCreated {
        /// µs since the time base.
        t_us: u64,
    },
    /// `--restore`: the VM, its vCPUs' and devices' state and its memory mapping are
    /// loaded from the snapshot (after `vm_created`, before `vcpus_started`).
    Restored {
        /// µs since the time base.
        t_us: u64,
    },
    /// Every vCPU issued its first KVM_RUN.
    VcpusStarted {
        /// µs since the time base.
        t_us: u64,
        /// How many vCPUs the guest has.
        vcpus: u32,
    },
    /// The guest wrote 124 to port 0x3f0 (the boot timer): it is waiting for its line on
    /// the personalisation port and holds no per-lease state yet (the point at which a
    /// golden snapshot is taken). Sent once; a guest restored from a snapshot taken while
    /// it waited sends it again as its vCPUs start (before `guest_ready`).
    AwaitingPersonalisation {
        /// µs since the time base.
        t_us: u64,
    },
    /// The guest has read the whole `personalise` line, newline included, out of the
    /// personalisation port's FIFO; sent once.
    Personalised {
        /// µs since the time base.
        t_us: u64,
        /// How many guest reads of the port's data register returned bytes of the line in
        /// this VMM process: each is one VM exit, a `rep insb` of any count included, so a
        /// guest reading byte by byte shows about the line's length and one reading with
        /// `rep insb` a handful. 0 from a VMM that predates the field.
        #[serde(default)]
        data_reads: u64,
    },
    /// The guest wrote 123 to port 0x3f0 (the boot timer); sent once.
    GuestReady {
        /// µs since the time base.
        t_us: u64,
        /// The VMM process's peak resident memory so far (`VmHWM` of /proc/self/status), in
        /// KiB, read by the VMM itself as it writes this event. The VMM's own figure, so
        /// that a reader gets it however soon afterwards the VMM exits. Absent when /proc
        /// was not readable when the VMM started, and from a VMM that predates the field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vmhwm_kib: Option<u64>,
    },
    /// The VM ended: the last event, written just before the process exits with `code`.
    Exit {
        /// µs since the time base.
        t_us: u64,
        /// The process exit code (0 clean end, 1 VMM failure, 3 guest crash).
        code: i32,
        /// For failures: a human explanation naming the vCPU, the KVM exit and, where known,
        /// the guest RIP. Absent (not `null`) on a clean end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Why the VM ended.
        reason: ExitReason,
        /// For a guest crash a vCPU reported (triple fault, emulation failure, failed entry,
        /// KVM internal error): that vCPU's registers, read right after the exit. Absent
        /// otherwise, and from a VMM that predates the field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vcpu_state: Option<Box<VcpuDump>>,
    },
}

impl Event {
    /// µs since the time base, whichever event this is.
    pub fn t_us(&self) -> u64 {
        match self {
            Event::Warning { t_us, .. }
            | Event::VmCreated { t_us }
            | Event::Restored { t_us }
            | Event::VcpusStarted { t_us, .. }
            | Event::AwaitingPersonalisation { t_us }
            | Event::Personalised { t_us, .. }
            | Event::GuestReady { t_us, .. }
            | Event::Exit { t_us, .. } => *t_us,
        }
    }

    /// The event as one line of the stream, newline included.
    pub fn to_line(&self) -> String {
        crate::to_line(self)
    }

    /// Reads one line of the stream (surrounding whitespace and the newline are ignored).
    /// A line that is not an event (a log message, an event this crate does not know) is an
    /// error, which readers of a mixed stream such as stderr skip.
    pub fn from_line(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

/// The `reason` of an [`Event::Exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest asked the i8042 for a CPU reset (0xFE to port 0x64): how guests reboot.
    GuestReset,
    /// The guest powered off (a KVM system event).
    GuestPoweroff,
    /// A control client sent `stop`.
    Stopped,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not emulate an instruction.
    EmulationFailure,
    /// VM entry failed.
    FailEntry,
    /// KVM reported an internal error, a guest crash event or an exit the VMM does not
    /// handle (code 3), or the VMM itself failed (code 1).
    InternalError,
}

impl ExitReason {
    /// The name on the wire, e.g. `guest_reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::GuestReset => "guest_reset",
            ExitReason::GuestPoweroff => "guest_poweroff",
            ExitReason::Stopped => "stopped",
            ExitReason::TripleFault => "triple_fault",
            ExitReason::EmulationFailure => "emulation_failure",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line is copied from what coinop-vmm wrote before this crate existed, except the
    /// second `guest_ready`: the form with its peak RSS, which older readers must still take.
    fn pinned() -> Vec<(&'static str, Event)> {
        vec![
            (
                r#"{"event":"warning","t_us":485,"message":"seccomp disabled by --no-seccomp: VMM threads run unfiltered"}"#,
                Event::Warning {
                    t_us: 485,
                    message: "seccomp disabled by --no-seccomp: VMM threads run unfiltered".into(),
                },
            ),
            (
                r#"{"event":"vm_created","t_us":1879}"#,
                Event::VmCreated { t_us: 1879 },
            ),
            (
                r#"{"event":"restored","t_us":2210}"#,
                Event::Restored { t_us: 2210 },
            ),
            (
                r#"{"event":"vcpus_started","t_us":8577,"vcpus":2}"#,
                Event::VcpusStarted {
                    t_us: 8577,
                    vcpus: 2,
                },
            ),
            (
                r#"{"event":"awaiting_personalisation","t_us":9100}"#,
                Event::AwaitingPersonalisation { t_us: 9100 },
            ),
            (
                r#"{"event":"personalised","t_us":9400,"data_reads":3}"#,
                Event::Personalised {
                    t_us: 9400,
                    data_reads: 3,
                },
            ),
            (
                r#"{"event":"guest_ready","t_us":9688}"#,
                Event::GuestReady {
                    t_us: 9688,
                    vmhwm_kib: None,
                },
            ),
            (
                r#"{"event":"guest_ready","t_us":9690,"vmhwm_kib":2028}"#,
                Event::GuestReady {
                    t_us: 9690,
                    vmhwm_kib: Some(2028),
                },
            ),
            (
                r#"{"event":"exit","t_us":362172,"code":0,"reason":"stopped"}"#,
                Event::Exit {
                    t_us: 362172,
                    code: 0,
                    detail: None,
                    reason: ExitReason::Stopped,
                    vcpu_state: None,
                },
            ),
            (
                r#"{"event":"exit","t_us":18747,"code":3,"detail":"vCPU 0: the guest triple-faulted (KVM_EXIT_SHUTDOWN)","reason":"triple_fault"}"#,
                Event::Exit {
                    t_us: 18747,
                    code: 3,
                    detail: Some("vCPU 0: the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into()),
                    reason: ExitReason::TripleFault,
                    vcpu_state: None,
                },
            ),
        ]
    }

    #[test]
    fn events_are_the_bytes_the_vmm_always_wrote() {
        crate::assert_pinned(pinned(), Event::to_line, Event::from_line);
    }

    #[test]
    fn every_event_has_its_time() {
        let times: Vec<u64> = pinned().iter().map(|(_, event)| event.t_us()).collect();
        assert_eq!(
            times,
            [485, 1879, 2210, 8577, 9100, 9400, 9688, 9690, 362172, 18747]
        );
    }

    #[test]
    fn readers_ignore_key_order_and_unknown_fields() {
        // As a reader with sorted maps or a future VMM might write it.
        let line = r#"{"code":0,"event":"exit","reason":"guest_reset","t_us":9,"new":1}"#;
        assert_eq!(
            Event::from_line(line).expect("exit event"),
            Event::Exit {
                t_us: 9,
                code: 0,
                detail: None,
                reason: ExitReason::GuestReset,
                vcpu_state: None,
            }
        );
    }

    #[test]
    fn a_personalised_event_without_data_reads_still_reads() {
        // What coinop-vmm wrote before it counted the reads.
        assert_eq!(
            Event::from_line(r#"{"event":"personalised","t_us":9400}"#).expect("event"),
            Event::Personalised {
                t_us: 9400,
                data_reads: 0
            }
        );
    }

    #[test]
    fn log_lines_and_unknown_events_are_not_events() {
        assert!(Event::from_line("coinop-vmm: triple_fault: vCPU 0: ...").is_err());
        assert!(Event::from_line(r#"{"event":"teleported","t_us":1}"#).is_err());
        assert!(Event::from_line(r#"{"event":"vm_created"}"#).is_err());
    }

    #[test]
    fn every_exit_reason_has_its_documented_name() {
        let reasons = [
            (ExitReason::GuestReset, "guest_reset"),
            (ExitReason::GuestPoweroff, "guest_poweroff"),
            (ExitReason::Stopped, "stopped"),
            (ExitReason::TripleFault, "triple_fault"),
            (ExitReason::EmulationFailure, "emulation_failure"),
            (ExitReason::FailEntry, "fail_entry"),
            (ExitReason::InternalError, "internal_error"),
        ];
        for (reason, name) in reasons {
            assert_eq!(reason.as_str(), name);
            assert_eq!(reason.to_string(), name);
            let json = format!("\"{name}\"");
            assert_eq!(serde_json::to_string(&reason).expect("serializes"), json);
            assert_eq!(
                serde_json::from_str::<ExitReason>(&json).expect("parses"),
                reason
            );
        }
    }
}
