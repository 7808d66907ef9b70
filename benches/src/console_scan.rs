//! Finds the guest's ready marker in a serial console's byte stream as the harness reads it.
//!
//! The stream is matched byte by byte, not line by line, because neither lines nor reads
//! line up with what the guest printed: a pipe read may end in the middle of the marker,
//! and a VMM that writes its own log to the same stdout (Firecracker, before `--log-path`
//! moved it) can drop a whole log record between two bytes of the guest's line. For such
//! engines a [`ForeignLog`] names the shape of those records, and [`MarkerScanner`] skips
//! every one of them wherever it starts, so the guest's bytes on either side still join up.

/// How a VMM's own log records look when they share the console: a fixed-width prefix
/// (`d` stands for any ASCII digit, every other byte for itself) that runs to the end of
/// its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignLog {
    prefix: &'static [u8],
}

impl ForeignLog {
    /// Firecracker's logger (v1.x, `src/vmm/src/logger/logging.rs`): a local timestamp with
    /// nanoseconds, a space and `[instance:thread...] message\n`, written with one write.
    pub const FIRECRACKER: ForeignLog = ForeignLog {
        prefix: b"dddd-dd-ddTdd:dd:dd.ddddddddd [",
    };

    fn accepts(&self, at: usize, byte: u8) -> bool {
        match self.prefix[at] {
            b'd' => byte.is_ascii_digit(),
            want => byte == want,
        }
    }
}

/// Feeds on console bytes in whatever pieces they arrive and says when the marker is
/// complete. Matching is done on the guest's bytes only: with a [`ForeignLog`], bytes that
/// could still be the start of a log record are held back until they turn out not to be
/// one, and a record once recognised is skipped through its newline. (So a marker whose
/// last bytes could begin a record, i.e. digits, is confirmed by the next byte.)
#[derive(Debug)]
pub struct MarkerScanner {
    marker: Vec<u8>,
    foreign: Option<ForeignLog>,
    /// Bytes matching a prefix of `foreign`'s record start so far.
    held: Vec<u8>,
    /// Inside a recognised foreign record, until its newline.
    skipping: bool,
    /// The last `marker.len()` guest bytes.
    tail: Vec<u8>,
    found: bool,
}

impl MarkerScanner {
    pub fn new(marker: &str, foreign: Option<ForeignLog>) -> MarkerScanner {
        MarkerScanner {
            marker: marker.as_bytes().to_vec(),
            foreign,
            held: Vec::new(),
            skipping: false,
            tail: Vec::with_capacity(marker.len()),
            found: false,
        }
    }

    /// Feeds the next bytes read; true when the marker was completed by these bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        if self.found {
            return false;
        }
        for &b in bytes {
            self.filter(b);
            if self.found {
                return true;
            }
        }
        false
    }

    /// Passes one byte through the foreign-record filter.
    fn filter(&mut self, byte: u8) {
        let Some(foreign) = self.foreign else {
            return self.guest_byte(byte);
        };
        if self.skipping {
            self.skipping = byte != b'\n';
            return;
        }
        if foreign.accepts(self.held.len(), byte) {
            self.held.push(byte);
            if self.held.len() == foreign.prefix.len() {
                self.held.clear();
                self.skipping = true;
            }
            return;
        }
        if self.held.is_empty() {
            return self.guest_byte(byte);
        }
        // Not a record after all: the first held byte was the guest's. The rest may still
        // start a record, so they go through the filter again, followed by this byte.
        let mut again = std::mem::take(&mut self.held);
        again.push(byte);
        self.guest_byte(again[0]);
        for &b in &again[1..] {
            if self.found {
                return;
            }
            self.filter(b);
        }
    }

    fn guest_byte(&mut self, byte: u8) {
        if self.marker.is_empty() {
            self.found = true;
            return;
        }
        if self.tail.len() == self.marker.len() {
            self.tail.remove(0);
        }
        self.tail.push(byte);
        self.found = self.tail == self.marker;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: &str = "coinop-testguest ready";
    const FC_RECORD: &[u8] =
        b"2026-12-04T21:22:50.123456789 [anonymous-instance:fc_vcpu 0] Received KVM_EXIT_IO\n";

    /// Feeds `stream` in pieces of `step` bytes; returns the piece that completed the marker.
    fn piece_that_found(stream: &[u8], step: usize, foreign: Option<ForeignLog>) -> Option<usize> {
        let mut s = MarkerScanner::new(READY, foreign);
        stream.chunks(step).position(|piece| s.feed(piece))
    }

    #[test]
    fn finds_the_marker_in_any_split_of_the_stream() {
        let stream = b"boot...\r\ncoinop-testguest ready\nmore";
        for step in 1..stream.len() {
            let piece = piece_that_found(stream, step, None).expect("marker is there");
            let end = stream
                .windows(READY.len())
                .position(|w| w == READY.as_bytes())
                .expect("in the stream")
                + READY.len();
            assert_eq!(
                piece,
                (end - 1) / step,
                "found in the piece holding its last byte"
            );
        }
    }

    #[test]
    fn a_log_record_inside_the_ready_line_is_skipped_at_every_split() {
        // What Firecracker printed in 7 of 100 boots: its log record between two bytes of
        // the guest's line.
        for cut in 1..READY.len() {
            let mut stream = b"serial: ".to_vec();
            stream.extend_from_slice(&READY.as_bytes()[..cut]);
            stream.extend_from_slice(FC_RECORD);
            stream.extend_from_slice(&READY.as_bytes()[cut..]);
            stream.extend_from_slice(b"\n");
            for step in [1, 2, 7, 64] {
                assert!(
                    piece_that_found(&stream, step, Some(ForeignLog::FIRECRACKER)).is_some(),
                    "cut at {cut}, reads of {step}"
                );
                assert!(
                    piece_that_found(&stream, step, None).is_none(),
                    "without the filter the record breaks the line (cut {cut})"
                );
            }
        }
    }

    #[test]
    fn records_between_lines_and_back_to_back_are_skipped() {
        let mut stream = FC_RECORD.to_vec();
        stream.extend_from_slice(FC_RECORD);
        stream.extend_from_slice(b"coinop-");
        stream.extend_from_slice(FC_RECORD);
        stream.extend_from_slice(FC_RECORD);
        stream.extend_from_slice(b"testguest ready\n");
        assert!(piece_that_found(&stream, 3, Some(ForeignLog::FIRECRACKER)).is_some());
    }

    #[test]
    fn digits_that_only_look_like_a_record_start_stay_guest_bytes() {
        let marker = "at 2026-12-04T21:22 done";
        let stream = b"clock at 2026-12-04T21:22 done\n";
        for step in 1..stream.len() {
            let mut s = MarkerScanner::new(marker, Some(ForeignLog::FIRECRACKER));
            assert!(
                stream.chunks(step).any(|p| s.feed(p)),
                "a partial timestamp is the guest's own text (reads of {step})"
            );
        }
    }

    #[test]
    fn a_record_start_overlapping_a_false_start_is_still_skipped() {
        // "2" starts a false record start, then the real record starts one byte later.
        let mut stream = b"coinop-testguest2".to_vec();
        stream.extend_from_slice(FC_RECORD);
        let mut s = MarkerScanner::new("coinop-testguest2 ready", Some(ForeignLog::FIRECRACKER));
        assert!(!s.feed(&stream));
        assert!(s.feed(b" ready\n"));
    }

    #[test]
    fn the_marker_is_reported_once() {
        let mut s = MarkerScanner::new(READY, None);
        assert!(s.feed(b"coinop-testguest ready\n"));
        assert!(!s.feed(b"coinop-testguest ready\n"), "reported once");
    }

    #[test]
    fn no_marker_no_match() {
        let mut s = MarkerScanner::new(READY, Some(ForeignLog::FIRECRACKER));
        assert!(!s.feed(b"coinop-testguest read"));
        assert!(!s.feed(FC_RECORD));
        assert!(!s.feed(b"Y\n"), "case counts");
    }
}
