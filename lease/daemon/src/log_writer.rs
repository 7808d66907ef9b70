//! coinopd's log output: stderr, written so that logging can never stop the daemon. A line
//! stderr refuses (a full disk under a redirected log, `/dev/full`, a closed pipe) is
//! dropped and counted (`coinop_log_lines_dropped_total` in `/metrics`), never reported
//! with `eprintln!`, which panics when stderr fails: `tracing-subscriber` does exactly that
//! for a writer that returns an error, and that panic used to take the whole daemon (and
//! its metering) down with the log.

use std::io::{self, Write};
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

/// Lines stderr refused since start-up. Logging is set up before anything else (and before
/// the metrics registry exists), so the count lives here and the registry holds a handle.
static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The count of dropped log lines, for the metrics registry (a handle on the same count).
pub fn dropped_lines() -> Counter {
    DROPPED.clone()
}

/// Makes a [`LineWriter`] per event for `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

/// Writes one formatted event (the subscriber hands over a whole line in one `write_all`)
/// to stderr and reports success whatever happens, counting a line it could not write.
#[derive(Debug)]
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(buf).is_err() {
            DROPPED.inc();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // stderr is unbuffered; a failed flush would only be a line already counted.
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Writes `message` and a newline to stderr, outside the log (the start-up errors `main`
/// prints before exiting): like `eprintln!`, but a refused write is dropped and counted
/// instead of panicking.
pub fn say(message: &str) {
    let _ = LineWriter.write(format!("{message}\n").as_bytes());
}
