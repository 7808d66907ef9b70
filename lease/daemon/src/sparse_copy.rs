//! Copying a sparse file by its data extents: a golden snapshot's root-disk overlay
//! ([`crate::golden_snapshot`]) is as long as the disk plus its bitmap but holds only what
//! the golden guest wrote, and every lease restored from it starts with a copy. Walking the
//! source with `SEEK_DATA`/`SEEK_HOLE` and moving each extent with `copy_file_range` (in
//! the kernel, no bytes through user space; a shared extent where the filesystem can)
//! makes a copy cost what was written, not the disk's size, and leaves the holes holes.

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// Copies `from` (from its start) into the empty file `to`, which ends up the same length
/// with the same bytes, holes where `from` has them. Returns the data bytes copied.
pub fn copy_sparse(from: &File, to: &File) -> io::Result<u64> {
    let len = i64::try_from(from.metadata()?.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    let mut copied = 0u64;
    let mut at = 0i64;
    while at < len {
        let start = match lseek(from, at, Whence::SeekData) {
            Ok(start) => start,
            // No data at or after `at`: the rest is one hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = lseek(from, start, Whence::SeekHole)?.min(len);
        let mut src = start;
        let mut dst = start;
        while src < end {
            let chunk = usize::try_from(end - src).unwrap_or(usize::MAX);
            let moved =
                nix::fcntl::copy_file_range(from, Some(&mut src), to, Some(&mut dst), chunk)?;
            if moved == 0 {
                // The source shrank under us: a copy of it would not be the same file.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file shrank while being copied",
                ));
            }
            copied += moved as u64;
        }
        at = end;
    }
    // A trailing hole (the unwritten rest) gives the copy its length without allocating.
    to.set_len(len as u64)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn a_file_with_holes_copies_to_the_same_bytes_and_about_the_same_blocks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src_path = dir.path().join("src");
        let src = File::create_new(&src_path).expect("create");
        // 64 MiB long, data at three places (one at the very end, like an overlay's footer).
        let len: u64 = 64 << 20;
        src.set_len(len).expect("len");
        let a = vec![0xa5u8; 8192];
        let b: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        src.write_all_at(&a, 4096).expect("write");
        src.write_all_at(&b, 20 << 20).expect("write");
        src.write_all_at(b"COINOPOVfooter!!", len - 16)
            .expect("write");
        src.sync_all().expect("sync");

        let dst_path = dir.path().join("dst");
        let dst = File::create_new(&dst_path).expect("create");
        let copied = copy_sparse(&File::open(&src_path).expect("open"), &dst).expect("copy");

        let want = std::fs::read(&src_path).expect("read");
        let got = std::fs::read(&dst_path).expect("read");
        assert_eq!(got.len(), want.len(), "same length");
        assert!(got == want, "same bytes");
        // Whole extents are copied (filesystem blocks), never the holes between them.
        let written = (a.len() + b.len() + 16) as u64;
        assert!(
            copied >= written && copied < written + (1 << 20),
            "copied {copied} bytes for {written} written"
        );
        let blocks = |p: &std::path::Path| std::fs::metadata(p).expect("stat").blocks() * 512;
        let (src_alloc, dst_alloc) = (blocks(&src_path), blocks(&dst_path));
        assert!(
            dst_alloc <= src_alloc + (1 << 20) && dst_alloc < len / 16,
            "the copy allocates {dst_alloc} bytes, the source {src_alloc}, of {len}"
        );
    }

    #[test]
    fn an_all_hole_file_copies_to_its_length_with_nothing_allocated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src_path = dir.path().join("src");
        File::create_new(&src_path)
            .expect("create")
            .set_len(1 << 20)
            .expect("len");
        let dst_path = dir.path().join("dst");
        let dst = File::create_new(&dst_path).expect("create");
        let copied = copy_sparse(&File::open(&src_path).expect("open"), &dst).expect("copy");
        assert_eq!(copied, 0);
        let meta = std::fs::metadata(&dst_path).expect("stat");
        assert_eq!(meta.len(), 1 << 20);
        assert_eq!(meta.blocks(), 0);
    }
}
