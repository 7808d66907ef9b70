//! The warm restores a coinopd keeps (`STATE/warm/ID` markers, `PID START_TICKS` once the
//! VMM waits for its lease).

use std::path::Path;

/// The warm restores whose VMM is restored and waiting: (lease id, pid).
pub fn waiting(state: &Path) -> Vec<(String, i32)> {
    let Ok(entries) = std::fs::read_dir(state.join("warm")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let pid = text.split_whitespace().next()?.parse().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect()
}

/// Waits (up to 30 s) until one warm restore waits; its (lease id, pid).
pub fn wait_for_one(state: &Path) -> (String, i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(found) = waiting(state).into_iter().next() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warm restore waits:\n{}",
            std::fs::read_to_string(state.join("coinopd.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
