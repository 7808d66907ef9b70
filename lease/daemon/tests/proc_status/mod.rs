//! Reading a process's /proc/<pid>/status, where the isolation tests check a jailed VMM's
//! namespaces, uids and capabilities.

/// The value of `field` (e.g. `"NSpid:"`) in /proc/`pid`/status, trimmed.
pub fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}
