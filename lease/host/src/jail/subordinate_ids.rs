//! The jail uid range kept clear of the subordinate uid and gid ranges the host gives its
//! users (`/etc/subuid`, `/etc/subgid`, filled by useradd: 65536 ids per user from 100000
//! on by default). A user whose range holds a jail uid can map it into a user namespace of
//! their own (newuidmap) and run processes as that uid, which the kernel then lets signal
//! the tenants' VMMs running as it, or hold it so creates skip it; so coinopd refuses to
//! start on such a range ([`check_clear_of`]).
//!
//! A line is `OWNER:START:COUNT`, OWNER a user name or a numeric uid. A line that does not
//! parse so (blank, a comment, damaged) grants nothing: shadow's newuidmap/newgidmap skip
//! it too, so it is skipped here. A missing file grants nothing either.

use std::path::{Path, PathBuf};

/// The files read by default.
pub const SUBORDINATE_ID_FILES: [&str; 2] = ["/etc/subuid", "/etc/subgid"];

/// Why the jail uid range cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SubordinateIdError {
    /// The file exists but could not be read, so its ranges are unknown.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A range in the file shares ids with the jail uid range.
    #[error(
        "jail uid range {first}-{last} overlaps {path} line {line} ({owner}: {start}-{end}): \
         that user can run processes as jail uids through newuidmap/newgidmap and signal \
         other tenants' VMMs; choose a --jail-uid-base/--jail-uid-count clear of every \
         range in the file"
    )]
    Overlap {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// The line's owner (a user name or uid).
        owner: String,
        /// The line's first id.
        start: u64,
        /// The line's last id.
        end: u64,
        /// The jail range's first uid.
        first: u64,
        /// The jail range's last uid.
        last: u64,
    },
}

/// One parsed line: (owner, start, count).
fn parse_line(line: &str) -> Option<(&str, u64, u64)> {
    let line = line.trim();
    // No user name starts with '#': such a line is a comment (shadow's tools match it to
    // no user).
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
    if owner.is_empty() || fields.next().is_some() {
        return None;
    }
    Some((owner, start.parse().ok()?, count.parse().ok()?))
}

/// Checks that no range in `text` (the contents of `path`) shares an id with
/// `first..first+count`.
fn check_text(path: &Path, text: &str, first: u32, count: u32) -> Result<(), SubordinateIdError> {
    // u64: a range's end past u32::MAX still compares right, and start + count cannot wrap.
    let (lo, hi) = (u64::from(first), u64::from(first) + u64::from(count));
    for (index, line) in text.lines().enumerate() {
        let Some((owner, start, length)) = parse_line(line) else {
            continue;
        };
        let end = start.saturating_add(length);
        if length > 0 && count > 0 && start < hi && lo < end {
            // Both ranges are non-empty here, so neither end is below its start.
            return Err(SubordinateIdError::Overlap {
                path: path.to_path_buf(),
                line: index + 1,
                owner: owner.to_string(),
                start,
                end: end - 1,
                first: lo,
                last: hi - 1,
            });
        }
    }
    Ok(())
}

/// Refuses a jail uid range `first..first+count` (also its gids: a jail's gid is its uid)
/// that overlaps a range in any of `files` (see the module's notes for the format).
pub fn check_clear_of(
    first: u32,
    count: u32,
    files: &[impl AsRef<Path>],
) -> Result<(), SubordinateIdError> {
    for path in files {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SubordinateIdError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        check_text(path, &text, first, count)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, first: u32, count: u32) -> Result<(), SubordinateIdError> {
        check_text(Path::new("/etc/subuid"), text, first, count)
    }

    #[test]
    fn useradds_thirteenth_user_overlaps_the_old_default() {
        // useradd's defaults: 100000 + 65536 × n for the n-th user (from 0).
        let text = (0..13)
            .map(|n| format!("user{n}:{}:65536\n", 100_000 + 65_536 * n))
            .collect::<String>();
        match check(&text, 900_000, 1000) {
            Err(SubordinateIdError::Overlap {
                line, owner, start, ..
            }) => {
                assert_eq!((line, owner.as_str(), start), (13, "user12", 886_432));
            }
            other => panic!("expected an overlap, got {other:?}"),
        }
        check(&text, 1_900_000_000, 1000).expect("far above");
    }

    #[test]
    fn ranges_touching_the_pool_do_not_overlap_and_numeric_owners_count() {
        let text = "1000:100:50\n";
        check(text, 150, 10).expect("ends where the pool starts");
        check(text, 90, 10).expect("starts where the pool ends");
        assert!(check(text, 149, 1).is_err(), "last id");
        assert!(check(text, 91, 10).is_err(), "first id");
        assert!(check(text, 120, 1).is_err(), "inside");
        assert!(
            check("a:0:4294967296\n", 1_900_000_000, 1000).is_err(),
            "all"
        );
    }

    #[test]
    fn lines_that_grant_nothing_are_skipped() {
        let text = "\n# alice:900000:65536\nbob:900000\nbob:x:5\nbob:900000:0\n:900000:5\n\
                    carol:900000:5:extra\n";
        check(text, 900_000, 1000).expect("nothing granted");
    }

    #[test]
    fn missing_files_grant_nothing_and_the_error_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("subuid");
        let subgid = dir.path().join("subgid");
        std::fs::write(&subgid, "root:1:2\nalice:5000:100\n").expect("write");
        check_clear_of(100, 10, &[&missing, &subgid]).expect("clear");
        let e = check_clear_of(5050, 100, &[&missing, &subgid]).expect_err("overlap");
        let text = e.to_string();
        assert!(
            text.contains(&format!("{} line 2", subgid.display())),
            "{text}"
        );
        assert!(text.contains("alice: 5000-5099"), "{text}");
        assert!(text.contains("5050-5149"), "{text}");
    }
}
