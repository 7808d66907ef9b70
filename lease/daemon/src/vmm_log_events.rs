//! What a VMM that is not coinopd's child reported. A guest re-adopted after a coinopd
//! restart has lost its event stream (the pipe went with the old coinopd) and cannot be
//! waited for, so neither its boot-timing events nor its `exit` event nor its exit status
//! reaches coinopd. The VMM also copies those events to its stderr, which is the lease's log
//! file (`STATE/run/<lease>.vmm.log`, written by the VMM only, never by the guest): the
//! boot-timing events there finish the figures of a lease adopted while it booted (and say
//! whether an agent guest still awaits its personalisation line), and the
//! last `exit` event says how it ended, so a re-adopted guest that crashed is reported
//! `guest_crashed` like a fresh one.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use vmm_protocol::Event;

/// How much of the log's end is read: the `exit` event is the VMM's last line, followed at
/// most by its one-line failure message; while a guest boots, the log holds a few lines.
const TAIL_BYTES: u64 = 16 << 10;

/// The last [`TAIL_BYTES`] of the log as text (empty when there is no log). Never more:
/// the VMM writes the log, and one that a hostile guest took over could make it any size.
pub fn tail_text(log: &Path) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(log)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut tail = Vec::new();
        f.take(TAIL_BYTES).read_to_end(&mut tail)?;
        Ok(tail)
    };
    read()
        .map(|tail| String::from_utf8_lossy(&tail).into_owned())
        .unwrap_or_default()
}

/// The events among the last [`TAIL_BYTES`] of the log, oldest first (none when there is
/// no log).
fn tail_events(log: &Path) -> Vec<Event> {
    tail_text(log)
        .lines()
        .filter_map(|line| Event::from_line(line).ok())
        .collect()
}

/// The `exit` event's reason and code from the end of a VMM's log (`None` when the log
/// has none: the VMM was killed, or is from a version that did not copy it there).
pub fn exit(log: &Path) -> Option<(String, i32)> {
    tail_events(log).into_iter().rev().find_map(|ev| match ev {
        Event::Exit { reason, code, .. } => Some((reason.as_str().to_string(), code)),
        _ => None,
    })
}

/// How far a VMM's boot got, by its log: µs from the VMM's time base (`--start-time-us`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootProgress {
    pub vcpus_started_us: Option<u64>,
    pub guest_ready_us: Option<u64>,
    /// An agent guest asked for its personalisation line (`awaiting_personalisation`).
    pub awaiting_personalisation_us: Option<u64>,
    /// An agent guest read its whole line (`personalised`): it has it, whoever sent it.
    pub personalised_us: Option<u64>,
    /// The VMM has ended (its `exit` event is there).
    pub exited: bool,
}

/// The boot-timing events in a VMM's log (those of its last boot, should it hold several).
pub fn boot_progress(log: &Path) -> BootProgress {
    let mut p = BootProgress::default();
    for ev in tail_events(log) {
        match ev {
            // A new boot's first event: what came before was another VMM's.
            Event::VmCreated { .. } => p = BootProgress::default(),
            Event::VcpusStarted { t_us, .. } => p.vcpus_started_us = Some(t_us),
            Event::GuestReady { t_us, .. } => p.guest_ready_us = Some(t_us),
            Event::AwaitingPersonalisation { t_us } => p.awaiting_personalisation_us = Some(t_us),
            Event::Personalised { t_us, .. } => p.personalised_us = Some(t_us),
            Event::Exit { .. } => p.exited = true,
            Event::Restored { .. } | Event::Warning { .. } => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_protocol::ExitReason;

    #[test]
    fn only_the_tail_of_a_huge_log_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("l.vmm.log");
        // 64 MiB of one unending line (a VMM a hostile guest took over), then a last line.
        let f = std::fs::File::create(&log).expect("create");
        f.set_len(64 << 20).expect("sparse 64 MiB");
        drop(f);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        std::io::Write::write_all(&mut f, b"\nthe last words\n").expect("write");
        let tail = tail_text(&log);
        assert_eq!(tail.len() as u64, TAIL_BYTES, "read from the end only");
        assert!(
            tail.ends_with("the last words\n"),
            "{:?}",
            &tail[tail.len() - 20..]
        );
    }

    #[test]
    fn the_last_exit_event_of_the_log_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("l.vmm.log");
        assert_eq!(exit(&log), None, "no log");
        let ended = Event::Exit {
            t_us: 5,
            code: 3,
            detail: Some("vCPU 0: KVM_EXIT_SHUTDOWN".into()),
            reason: ExitReason::TripleFault,
            vcpu_state: None,
        };
        let mut text = "x".repeat(40_000) + "\ncoinop-vmm: starting\n";
        std::fs::write(&log, &text).expect("write");
        assert_eq!(exit(&log), None, "log lines only");
        text += &ended.to_line();
        text += "coinop-vmm: triple_fault: vCPU 0: KVM_EXIT_SHUTDOWN\n";
        std::fs::write(&log, &text).expect("write");
        assert_eq!(exit(&log), Some(("triple_fault".into(), 3)));
    }

    #[test]
    fn the_boot_timing_of_the_last_boot_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("l.vmm.log");
        assert_eq!(boot_progress(&log), BootProgress::default(), "no log");
        let mut text = Event::VmCreated { t_us: 10 }.to_line();
        text += &Event::VcpusStarted { t_us: 20, vcpus: 1 }.to_line();
        text += "coinop-vmm: a log line\n";
        std::fs::write(&log, &text).expect("write");
        let booting = BootProgress {
            vcpus_started_us: Some(20),
            ..BootProgress::default()
        };
        assert_eq!(boot_progress(&log), booting, "not ready yet");
        // An agent guest asks for its line, then reads it.
        text += &Event::AwaitingPersonalisation { t_us: 22 }.to_line();
        std::fs::write(&log, &text).expect("write");
        let awaiting = BootProgress {
            awaiting_personalisation_us: Some(22),
            ..booting
        };
        assert_eq!(boot_progress(&log), awaiting, "awaiting its line");
        text += &Event::Personalised {
            t_us: 25,
            data_reads: 1,
        }
        .to_line();
        text += &Event::GuestReady {
            t_us: 30,
            vmhwm_kib: None,
        }
        .to_line();
        std::fs::write(&log, &text).expect("write");
        let ready = BootProgress {
            personalised_us: Some(25),
            guest_ready_us: Some(30),
            ..awaiting
        };
        assert_eq!(boot_progress(&log), ready);
        // A later VMM of the same lease (a retried boot) starts its figures afresh.
        text += &Event::VmCreated { t_us: 7 }.to_line();
        std::fs::write(&log, &text).expect("write");
        assert_eq!(boot_progress(&log), BootProgress::default());
    }
}
