//! A cap on the guest's console output: a guest that prints without end must not fill the
//! host's disk through its console file. [`CappedConsole`] passes on the first
//! `max_bytes` bytes, then writes one marker line and drops everything after it.
//!
//! It stops rather than keeping the tail: the head holds the boot log, which is what a
//! tenant reads to learn why a guest misbehaves; the file stays append-only (a tail would
//! mean truncating and rewriting, which works on a file but not on a pipe or terminal and
//! would let a printing guest make the host rewrite its console again and again); and
//! the file's size is bounded by `max_bytes` plus the marker, exactly.

use std::io::Write;

/// The line written once the cap is reached (after a newline, unless the output just
/// ended one).
pub const MARKER: &str = "[coinop-vmm: console output capped; the rest is dropped]\n";

/// Console output passed on up to a byte budget, then a marker, then nothing.
pub struct CappedConsole<W> {
    inner: W,
    left: u64,
    /// The last byte passed on was a newline (or nothing was passed on yet).
    at_line_start: bool,
    capped: bool,
}

impl<W: Write> CappedConsole<W> {
    pub fn new(inner: W, max_bytes: u64) -> Self {
        CappedConsole {
            inner,
            left: max_bytes,
            at_line_start: true,
            capped: false,
        }
    }
}

impl<W: Write> Write for CappedConsole<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.capped {
            // Dropped, but reported as written: the guest's UART must not stall on it.
            return Ok(buf.len());
        }
        let room = usize::try_from(self.left).unwrap_or(usize::MAX);
        if buf.len() <= room {
            let n = self.inner.write(buf)?;
            self.left -= n as u64;
            if n > 0 {
                self.at_line_start = buf[n - 1] == b'\n';
            }
            return Ok(n);
        }
        if room > 0 {
            let n = self.inner.write(&buf[..room])?;
            self.left -= n as u64;
            if n > 0 {
                self.at_line_start = buf[n - 1] == b'\n';
            }
            return Ok(n);
        }
        self.capped = true;
        if !self.at_line_start {
            self.inner.write_all(b"\n")?;
        }
        self.inner.write_all(MARKER.as_bytes())?;
        self.inner.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_dropped_after_one_marker() {
        let mut c = CappedConsole::new(Vec::new(), 10);
        c.write_all(b"12345").expect("write");
        c.write_all(b"6789abcdef").expect("write");
        for b in b"more and more\n" {
            c.write_all(&[*b]).expect("write");
        }
        let text = String::from_utf8(c.inner).expect("utf-8");
        assert_eq!(text, format!("123456789a\n{MARKER}"));
    }

    #[test]
    fn a_cap_met_at_a_line_end_adds_no_empty_line() {
        let mut c = CappedConsole::new(Vec::new(), 4);
        c.write_all(b"abc\nd").expect("write");
        assert_eq!(c.inner, format!("abc\n{MARKER}").into_bytes());
        let mut under = CappedConsole::new(Vec::new(), 100);
        under.write_all(b"short\n").expect("write");
        assert_eq!(under.inner, b"short\n");
    }
}
