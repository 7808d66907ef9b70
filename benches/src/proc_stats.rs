//! What /proc says about a running process: its resident memory and its children, for the
//! density scenario (RSS per VMM, total, and the daemon's own).

use std::path::Path;

/// `VmRSS` of `pid` in KiB, or `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(
        &Path::new("/proc").join(pid.to_string()).join("status"),
        "VmRSS:",
    )
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
        assert_eq!(parse_status_kib(text, "VmSwap:"), None);
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
