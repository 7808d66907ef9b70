//! What /proc says about a running process: its resident memory and its children, for the
//! density scenario (RSS per VMM, total, and the daemon's own), and its peak resident
//! memory so far, for the boot scenarios.

use std::path::Path;

/// `VmRSS` of `pid` in KiB, or `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(
        &Path::new("/proc").join(pid.to_string()).join("status"),
        "VmRSS:",
    )
}

/// A process's `VmHWM` (the peak resident set of its current image so far), from its
/// /proc status file opened ahead of time, so that reading it at the moment that matters is
/// one `pread`. The file belongs to the process, not to one image: opened before the exec,
/// it shows the image exec'd. The rusage of a reaped child is no substitute: at exec the
/// kernel folds the pre-exec (vforked) image's high-water mark, i.e. the harness's own RSS,
/// into it, which would floor every figure at ours.
pub struct PeakRss {
    status: std::fs::File,
}

impl PeakRss {
    /// `None` when `pid` has no status file (it is gone).
    pub fn open(pid: u32) -> Option<PeakRss> {
        let status = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
        Some(PeakRss { status })
    }

    /// `VmHWM` in KiB now, or `None` once the process has lost its memory (an exiting
    /// process does, before it is reaped).
    pub fn read_kib(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 8192];
        let n = self.status.read_at(&mut buf, 0).ok()?;
        parse_status_kib(&String::from_utf8_lossy(&buf[..n]), "VmHWM:")
    }
}

fn status_field(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_status_kib(&text, key)
}

/// Reads one `Key:   1234 kB` line of a /proc status file.
fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system, every thread) `pid` used so far, ms; `None` once it is gone.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = parse_cpu_ticks(&stat)?;
    (hz > 0).then(|| ticks as f64 * 1e3 / hz as f64)
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat, in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let close = stat.rfind(')')?;
    let mut rest = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Pids whose parent is `parent` and whose command name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            parse_stat(&stat).is_some_and(|(name, ppid)| ppid == parent && name == comm)
        })
        .collect()
}

/// (comm, ppid) from /proc/PID/stat. The name sits in parentheses and may itself contain
/// spaces or ')', so the fields are read after the last ')'.
fn parse_stat(stat: &str) -> Option<(&str, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((name, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_a_status_file() {
        let text = "Name:\tcoinop-vmm\nVmHWM:\t  9000 kB\nVmRSS:\t  4321 kB\n";
        assert_eq!(parse_status_kib(text, "VmRSS:"), Some(4321));
        assert_eq!(parse_status_kib(text, "VmHWM:"), Some(9000));
        assert_eq!(parse_status_kib(text, "VmSwap:"), None);
    }

    #[test]
    fn reads_a_live_process_high_water_mark_again_and_again() {
        let peak = PeakRss::open(std::process::id()).expect("our own /proc status");
        let before = peak.read_kib().expect("a live process has VmHWM");
        assert!(
            before > 100,
            "a Rust test binary maps more than 100 KiB, got {before}"
        );
        // Touch 32 MiB more than we had: the mark must move, read through the same file.
        let grown = vec![1u8; 32 << 20];
        let after = peak.read_kib().expect("still live");
        assert!(
            after >= before + 30 * 1024,
            "{before} → {after} KiB after touching {} MiB",
            grown.iter().map(|&b| usize::from(b)).sum::<usize>() >> 20
        );
        assert!(PeakRss::open(u32::MAX).is_none(), "no such process");
    }

    #[test]
    fn a_reaped_process_has_no_high_water_mark() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let peak = PeakRss::open(child.id()).expect("live child");
        assert!(peak.read_kib().is_some());
        drop(child.stdin.take());
        child.wait().expect("reaped");
        assert_eq!(peak.read_kib(), None, "gone with its memory");
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let stat = "42 (coin opd) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert!(cpu_ms(std::process::id()).is_some());
    }

    #[test]
    fn stat_names_with_parens_and_spaces() {
        let stat = "4242 (odd) name) S 17 4242 4242 0 -1";
        assert_eq!(parse_stat(stat), Some(("odd) name", 17)));
    }

    #[test]
    fn finds_this_process_among_its_parents_children() {
        let me = std::process::id();
        let stat = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        let (name, ppid) = parse_stat(&stat).expect("parsable");
        assert!(children_named(ppid, name).contains(&me));
        assert!(rss_kib(me).is_some_and(|k| k > 0));
    }
}
