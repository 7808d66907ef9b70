//! Why a VMM that is not coinopd's child ended. A guest re-adopted after a coinopd restart
//! has lost its event stream (the pipe went with the old coinopd) and cannot be waited
//! for, so neither its `exit` event nor its exit status reaches the scheduler. The VMM also
//! writes its `exit` event to its stderr, which is the lease's log file
//! (`STATE/run/<lease>.vmm.log`, written by the VMM only, never by the guest): the last
//! `exit` event there says how it ended, so a re-adopted guest that crashed is reported
//! `guest_crashed` like a fresh one.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use vmm_protocol::Event;

/// How much of the log's end is read: the `exit` event is the VMM's last line, followed at
/// most by its one-line failure message.
const TAIL_BYTES: u64 = 16 << 10;

/// The `exit` event's reason and code from the end of a VMM's log (`None` when the log
/// has none: the VMM was killed, or is from a version that did not copy it there).
pub fn read(log: &Path) -> Option<(String, i32)> {
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(|line| match Event::from_line(line) {
            Ok(Event::Exit { reason, code, .. }) => Some((reason.as_str().to_string(), code)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_protocol::ExitReason;

    #[test]
    fn the_last_exit_event_of_the_log_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("l.vmm.log");
        assert_eq!(read(&log), None, "no log");
        let exit = Event::Exit {
            t_us: 5,
            code: 3,
            detail: Some("vCPU 0: KVM_EXIT_SHUTDOWN".into()),
            reason: ExitReason::TripleFault,
        };
        let mut text = "x".repeat(40_000) + "\ncoinop-vmm: starting\n";
        std::fs::write(&log, &text).expect("write");
        assert_eq!(read(&log), None, "log lines only");
        text += &exit.to_line();
        text += "coinop-vmm: triple_fault: vCPU 0: KVM_EXIT_SHUTDOWN\n";
        std::fs::write(&log, &text).expect("write");
        assert_eq!(read(&log), Some(("triple_fault".into(), 3)));
    }
}
