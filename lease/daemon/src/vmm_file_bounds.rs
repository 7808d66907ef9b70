//! The files a lease's VMM writes on the host's disk, held to their sizes.
//!
//! A jailed VMM writes its guest's console file, its own log (both through fds coinopd
//! hands it) and, for an image with a root filesystem, its root-disk overlay. The console
//! cap (`--console-max-bytes`) is the VMM's to keep, and the overlay's layout too: a VMM
//! that a hostile guest took over could write any of them without end and fill the disk
//! the state directory (and every other lease's overlay) lives on. Each tick checks their
//! sizes against what an honest VMM writes; a lease whose VMM wrote beyond is stopped
//! (`control_lost`: coinopd can no longer trust it) and the file is cut back.

use std::path::{Path, PathBuf};

/// The most an honest VMM writes to its log: boot events, the exit event and its one-line
/// failure message (a crash report with the vCPU state included) are a few KiB.
pub const VMM_LOG_MAX: u64 = 1 << 20;

/// Room above `--console-max-bytes` for the one marker line the VMM writes there.
const CONSOLE_MARKER_ROOM: u64 = 64 << 10;

/// One of a lease's files and the most an honest VMM makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// What the file is, for messages.
    pub what: &'static str,
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// A file found beyond its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrun {
    pub bound: Bound,
    pub bytes: u64,
}

/// The bounds of a lease's files: its console (`console_max_bytes` and the marker), its VMM
/// log, and its overlay when it has a root disk over a base of `rootfs_bytes`.
pub fn bounds(
    console: &Path,
    log: &Path,
    console_max_bytes: u64,
    overlay: Option<(&Path, u64)>,
) -> Vec<Bound> {
    let mut b = vec![
        Bound {
            what: "console",
            path: console.to_path_buf(),
            max_bytes: console_max_bytes.saturating_add(CONSOLE_MARKER_ROOM),
        },
        Bound {
            what: "VMM log",
            path: log.to_path_buf(),
            max_bytes: VMM_LOG_MAX,
        },
    ];
    if let Some((path, rootfs_bytes)) = overlay {
        b.push(Bound {
            what: "root-disk overlay",
            path: path.to_path_buf(),
            max_bytes: overlay_max_bytes(rootfs_bytes),
        });
    }
    b
}

/// The largest file an honest VMM of a lease writes, its RLIMIT_FSIZE: the largest of its
/// files' bounds ([`bounds`]) and, for the VMM that takes a golden snapshot, the snapshot's
/// memory file (`snapshot_mem_bytes`, the guest's memory; the state file beside it is a
/// few KiB per vCPU). The kernel holds every file the VMM writes to it as the write
/// happens; the per-tick checks then hold each file to its own bound.
pub fn max_file_bytes(
    console_max_bytes: u64,
    rootfs_bytes: Option<u64>,
    snapshot_mem_bytes: Option<u64>,
) -> u64 {
    let files = bounds(
        Path::new("console"),
        Path::new("log"),
        console_max_bytes,
        rootfs_bytes.map(|b| (Path::new("overlay"), b)),
    );
    files
        .iter()
        .map(|b| b.max_bytes)
        .chain(snapshot_mem_bytes)
        .max()
        .unwrap_or(VMM_LOG_MAX)
}

/// The largest overlay coin-vmm's copy-on-write layout makes over a base of `base` bytes:
/// the data at the base's offsets, one bitmap bit per 512-byte sector, a 16-byte footer
/// (`vmm/src/devices/virtio/cow_overlay.rs`).
pub fn overlay_max_bytes(base: u64) -> u64 {
    base.saturating_add(base.div_ceil(512).div_ceil(8))
        .saturating_add(16)
}

/// The first of `bounds` whose file is larger than its bound (a missing file is within).
pub fn first_overrun(bounds: &[Bound]) -> Option<Overrun> {
    bounds.iter().find_map(|b| {
        let bytes = std::fs::symlink_metadata(&b.path).ok()?.len();
        (bytes > b.max_bytes).then(|| Overrun {
            bound: b.clone(),
            bytes,
        })
    })
}

/// Cuts an overrun file back to its bound (the lease's VMM is stopped first): a console is
/// kept for its tenant to read, and nothing of it beyond the bound was the guest's.
pub fn cut_back(o: &Overrun) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(&o.bound.path)?
        .set_len(o.bound.max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_within_their_bounds_pass_and_one_beyond_is_named_and_cut_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (console, log, overlay) = (
            dir.path().join("c"),
            dir.path().join("l"),
            dir.path().join("o"),
        );
        let b = bounds(&console, &log, 1000, Some((&overlay, 1 << 20)));
        assert_eq!(first_overrun(&b), None, "missing files are within");
        std::fs::write(&console, vec![b'x'; 1000 + (64 << 10)]).expect("console");
        std::fs::write(&log, vec![b'x'; 100]).expect("log");
        // The largest honest overlay: 1 MiB of data, 256 bytes of bitmap, the footer.
        let f = std::fs::File::create(&overlay).expect("overlay");
        f.set_len((1 << 20) + 256 + 16).expect("sparse");
        assert_eq!(first_overrun(&b), None, "all at their bounds");
        f.set_len((1 << 20) + 256 + 17).expect("one byte more");
        let o = first_overrun(&b).expect("the overlay beyond");
        assert_eq!(
            (o.bound.what, o.bytes),
            ("root-disk overlay", (1 << 20) + 273)
        );
        cut_back(&o).expect("cut back");
        assert_eq!(first_overrun(&b), None);
        assert_eq!(
            std::fs::metadata(&overlay).expect("stat").len(),
            (1 << 20) + 272
        );
    }

    #[test]
    fn the_overlay_bound_matches_the_vmms_layout() {
        assert_eq!(overlay_max_bytes(0), 16);
        // The file size limit is the largest bound: here the console, the overlay, the
        // snapshot's memory in turn.
        assert_eq!(max_file_bytes(4 << 20, None, None), (4 << 20) + (64 << 10));
        assert_eq!(
            max_file_bytes(4 << 20, Some(1 << 30), None),
            overlay_max_bytes(1 << 30)
        );
        assert_eq!(
            max_file_bytes(4 << 20, Some(1 << 20), Some(256 << 20)),
            256 << 20
        );
        assert_eq!(max_file_bytes(0, None, None), VMM_LOG_MAX);
        assert_eq!(overlay_max_bytes(512), 512 + 1 + 16);
        assert_eq!(overlay_max_bytes(4096), 4096 + 1 + 16);
        assert_eq!(overlay_max_bytes(4097 * 512), 4097 * 512 + 513 + 16);
    }
}
