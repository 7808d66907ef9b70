//! A VMM's event stream (one JSON event per line on a pipe) read line by line, each line
//! bounded by [`MAX_EVENT_LINE`].
//!
//! The VMM runs a guest, and a guest that escapes into its VMM owns this pipe's write end:
//! an endless line without a newline would make coinopd buffer it all (tokio's `Lines`
//! has no cap) until the host runs out of memory, every lease with it. Real events are a
//! few hundred bytes; a longer line is an error, and the caller ends that VMM.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use vmm_protocol::Event;

/// The longest event line taken (its newline not counted).
pub const MAX_EVENT_LINE: usize = 64 << 10;

/// The most lines followed after a guest is ready. An honest VMM sends each event once (a
/// restored guest's personalisation events, a warning, its `exit`), so a handful; a VMM
/// that a guest took over could write short lines without end, each one coinopd's work to
/// read and parse (charged to coinopd, not to the lease's cgroup), and hold a coinopd
/// thread busy for as long as it lives.
pub const MAX_LINES_AFTER_BOOT: usize = 64;

/// Lines of a VMM's event stream.
#[derive(Debug)]
pub struct EventLines<R> {
    reader: BufReader<R>,
    /// The current line so far (kept across a cancelled [`EventLines::next_line`]).
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> EventLines<R> {
    /// Lines of `stream`.
    pub fn new(stream: R) -> Self {
        EventLines {
            reader: BufReader::new(stream),
            line: Vec::new(),
        }
    }

    /// The next line without its newline (a last line without one included), `None` at the
    /// stream's end, an `InvalidData` error past [`MAX_EVENT_LINE`]. Cancel-safe: bytes
    /// are taken from the buffer only once they are in `line`, which outlives the call.
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let (taken, ends) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            if self.line.len() + taken > MAX_EVENT_LINE {
                self.line.clear();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a VMM event line longer than {MAX_EVENT_LINE} bytes"),
                ));
            }
            self.line.extend_from_slice(&available[..taken]);
            self.reader.consume(taken + usize::from(ends));
            if ends {
                return Ok(Some(self.take_line()));
            }
        }
    }

    /// Follows the stream after the guest is ready until it ends: the `exit` event's
    /// reason and code, if the VMM wrote one. `Err` (why) when the stream is given up
    /// instead: more than [`MAX_LINES_AFTER_BOOT`] lines, a line past [`MAX_EVENT_LINE`],
    /// or a failed read. The caller drops the stream then; the VMM's next event write fails
    /// (nothing reads the pipe), which only an untrustworthy VMM ever meets.
    pub async fn follow_to_exit(&mut self) -> Result<Option<(String, i32)>, String> {
        let mut exit = None;
        let mut read = 0usize;
        loop {
            match self.next_line().await {
                Ok(None) => return Ok(exit),
                Ok(Some(line)) => {
                    read += 1;
                    if read > MAX_LINES_AFTER_BOOT {
                        return Err(format!(
                            "more than {MAX_LINES_AFTER_BOOT} event lines after its boot"
                        ));
                    }
                    if let Ok(Event::Exit { reason, code, .. }) = Event::from_line(&line) {
                        exit = Some((reason.as_str().to_string(), code));
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn take_line(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_stream_after_boot_gives_its_exit_and_an_endless_one_is_given_up() {
        // An honest VMM's last words: its exit event, then the pipe closes.
        let (mut tx, rx) = tokio::io::duplex(1 << 10);
        let mut lines = EventLines::new(rx);
        tx.write_all(b"{\"event\":\"warning\",\"t_us\":5,\"message\":\"m\"}\n")
            .await
            .expect("write");
        tx.write_all(b"{\"event\":\"exit\",\"t_us\":9,\"code\":3,\"reason\":\"triple_fault\"}\n")
            .await
            .expect("write");
        drop(tx);
        assert_eq!(
            lines.follow_to_exit().await,
            Ok(Some(("triple_fault".to_string(), 3)))
        );

        // A VMM writing short lines without end (its pipe never closes): given up after
        // the budget, not followed for as long as it lives.
        let (mut tx, rx) = tokio::io::duplex(1 << 10);
        let mut lines = EventLines::new(rx);
        let writer = tokio::spawn(async move { while tx.write_all(b"{}\n").await.is_ok() {} });
        let given_up =
            tokio::time::timeout(std::time::Duration::from_secs(10), lines.follow_to_exit())
                .await
                .expect("given up, not followed for ever");
        assert!(
            given_up
                .as_ref()
                .is_err_and(|why| why.contains("more than 64")),
            "{given_up:?}"
        );
        drop(lines);
        writer.await.expect("the writer ends once nothing reads");
    }

    #[tokio::test]
    async fn lines_are_read_whole_and_an_endless_one_is_refused() {
        let (mut tx, rx) = tokio::io::duplex(1 << 10);
        let mut lines = EventLines::new(rx);
        let writer = tokio::spawn(async move {
            tx.write_all(b"{\"event\":\"a\"}\n{\"event\":").await?;
            tx.write_all(b"\"b\"}\nlast").await?;
            tx.shutdown().await
        });
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some("{\"event\":\"a\"}")
        );
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some("{\"event\":\"b\"}")
        );
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("last"));
        assert_eq!(lines.next_line().await.unwrap(), None);
        writer.await.unwrap().unwrap();

        let (mut tx, rx) = tokio::io::duplex(1 << 10);
        let mut lines = EventLines::new(rx);
        // Never a newline: refused once past the bound, not buffered without end.
        let writer = tokio::spawn(async move {
            let chunk = [b'x'; 4096];
            loop {
                if tx.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let refused = lines.next_line().await.expect_err("too long");
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        drop(lines);
        writer.await.unwrap();
    }
}
