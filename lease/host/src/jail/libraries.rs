//! The shared objects a dynamically linked VMM binary needs inside its jail (the ELF
//! interpreter and the libraries it maps), found once at daemon start-up with `ldd`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors finding libraries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ldd could not run.
    #[error("running ldd on {binary}: {source}")]
    Ldd {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// ldd reported a library it could not find.
    #[error("{binary} needs {library}, which ldd cannot find")]
    Missing {
        /// The binary.
        binary: PathBuf,
        /// The library line.
        library: String,
    },
}

/// Absolute paths of every library `binary` loads (empty for a static binary).
pub fn needed_by(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| Error::Ldd {
            binary: binary.to_path_buf(),
            source,
        })?;
    // ldd exits 1 with "not a dynamic executable" for static binaries.
    parse_ldd(&String::from_utf8_lossy(&output.stdout)).map_err(|library| Error::Missing {
        binary: binary.to_path_buf(),
        library,
    })
}

/// Paths from ldd output; the offending line if a library was not found.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("=> not found") {
            return Err(line.to_string());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        let candidate = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            None => line,
        };
        let path = candidate.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_glibc_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let paths = parse_ldd(text).expect("parsed");
        assert_eq!(
            paths,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn static_binaries_need_nothing_and_missing_ones_fail() {
        assert_eq!(parse_ldd("\tnot a dynamic executable\n"), Ok(vec![]));
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
