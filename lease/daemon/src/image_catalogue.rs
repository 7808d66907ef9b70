//! The image catalogue: which kernels (and initrds, root filesystems, default command lines)
//! tenants may boot, by name. Parsed from
//! `--image NAME=KERNEL[,initrd=PATH][,rootfs=PATH][,cmdline=STR]`.
//!
//! `rootfs=` is a raw root filesystem image (images/rootfs builds one) shared read-only by
//! every lease of the image: each lease's guest sees it as /dev/vda through its own
//! copy-on-write overlay, removed when the lease ends. The image's cmdline says how to
//! boot from it (e.g. `root=/dev/vda rw init=/sbin/coinop-init`). The file must be
//! readable by the jail's uids (mode 0644): jailed VMMs open it as their pool uid.
//!
//! `snapshot` opts the image into golden snapshots ([`crate::golden_snapshot`]): its leases
//! with the image's own command line and no NIC start by restoring a snapshot of the
//! booted image instead of booting it. Without `agent` nothing makes such leases unique
//! (same memory, same kernel RNG state, same keys made before ready): fine for a test
//! guest, not for a server image, and coinopd says so at start.
//!
//! `agent` says the image's guest runs the guest agent of images/rootfs/PERSONALISE.md
//! ([`crate::personalisation`]): its leases get their per-lease data (address, MAC, SSH key,
//! host name, clock, entropy) through the personalisation port after boot or restore, never
//! on the kernel command line, and its golden snapshot is taken when the guest asks to be
//! personalised (before any per-lease state). The image's command line gets
//! `8250.nr_uarts=2 coinop.personalise=1` appended when it lacks them. With `snapshot`,
//! leases with a NIC restore too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

use crate::personalisation::agent_cmdline;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    #[error(
        "--image {0:?}: expected NAME=KERNEL[,initrd=PATH][,rootfs=PATH][,snapshot][,agent][,cmdline=STR]"
    )]
    Shape(String),
    #[error(
        "--image {text:?}: unknown option {option:?} (initrd=, rootfs=, snapshot, agent or cmdline=)"
    )]
    Option { text: String, option: String },
    #[error("--image {0:?}: the name must be 1-64 characters of [A-Za-z0-9._-]")]
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The shared base of the guest's root disk (/dev/vda, copy-on-write per lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// Used when the lease request brings no cmdline of its own.
    pub cmdline: String,
    /// Leases start from a golden snapshot of the booted image when they can.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// The guest runs the personalisation agent: per-lease data goes through the
    /// personalisation port, not the command line.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
}

impl ImageSpec {
    /// Parses `NAME=KERNEL[,initrd=PATH][,rootfs=PATH][,snapshot][,agent][,cmdline=STR]`.
    /// `cmdline=` swallows the rest of the text, commas included, because kernel command
    /// lines may contain commas.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| ImageError::Shape(text.to_string()))?;
        if !valid_name(name) {
            return Err(ImageError::Name(text.to_string()));
        }
        let (head, cmdline) = match rest.find(",cmdline=") {
            Some(i) => (&rest[..i], Some(rest[i + ",cmdline=".len()..].to_string())),
            None => (rest, None),
        };
        let mut parts = head.split(',');
        let kernel = parts.next().filter(|k| !k.is_empty());
        let kernel = kernel.ok_or_else(|| ImageError::Shape(text.to_string()))?;
        let (mut initrd, mut rootfs, mut snapshot, mut agent) = (None, None, false, false);
        for part in parts {
            if part == "snapshot" {
                snapshot = true;
                continue;
            }
            if part == "agent" {
                agent = true;
                continue;
            }
            match part.split_once('=') {
                Some(("initrd", path)) if !path.is_empty() => initrd = Some(PathBuf::from(path)),
                Some(("rootfs", path)) if !path.is_empty() => rootfs = Some(PathBuf::from(path)),
                _ => {
                    return Err(ImageError::Option {
                        text: text.to_string(),
                        option: part.to_string(),
                    })
                }
            }
        }
        Ok(ImageSpec {
            name: name.to_string(),
            kernel: PathBuf::from(kernel),
            initrd,
            rootfs,
            cmdline: match cmdline {
                Some(c) if agent => agent_cmdline(&c),
                Some(c) => c,
                None if agent => agent_cmdline(""),
                None => String::new(),
            },
            snapshot,
            agent,
        })
    }
}

/// An image name is a directory name under the state dir's `snapshots/`: no `.` or `..`,
/// which would name that directory or the state dir itself.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[derive(Debug, Clone, Default)]
pub struct ImageCatalogue {
    images: BTreeMap<String, ImageSpec>,
}

impl ImageCatalogue {
    /// Adds or replaces an image (a later `--image testguest=...` overrides the default).
    pub fn insert(&mut self, image: ImageSpec) {
        self.images.insert(image.name.clone(), image);
    }

    pub fn get(&self, name: &str) -> Option<&ImageSpec> {
        self.images.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ImageSpec> {
        self.images.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_parts_and_commas_in_cmdline() {
        let i = ImageSpec::parse(
            "linux=/k/vmlinux,initrd=/k/initrd,cmdline=console=ttyS0,115200 quiet",
        )
        .expect("valid image");
        assert_eq!(i.name, "linux");
        assert_eq!(i.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(i.initrd, Some(PathBuf::from("/k/initrd")));
        assert_eq!(i.cmdline, "console=ttyS0,115200 quiet");
        assert_eq!(i.rootfs, None);
        let r = ImageSpec::parse("srv=/k/bz,rootfs=/img/root.ext4,cmdline=root=/dev/vda rw")
            .expect("valid image");
        assert_eq!(r.rootfs, Some(PathBuf::from("/img/root.ext4")));
        assert_eq!(r.cmdline, "root=/dev/vda rw");
        assert!(!r.snapshot);
        let g = ImageSpec::parse("tg=/k/tg.elf,snapshot,cmdline=mode=count").expect("valid image");
        assert!(g.snapshot);
        assert!(!g.agent);
        assert_eq!(g.cmdline, "mode=count");
        let a = ImageSpec::parse("srv=/k/bz,rootfs=/r,snapshot,agent,cmdline=root=/dev/vda")
            .expect("valid image");
        assert!(a.snapshot && a.agent);
        assert_eq!(
            a.cmdline,
            "root=/dev/vda 8250.nr_uarts=2 coinop.personalise=1"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            ImageSpec::parse("nokernel"),
            Err(ImageError::Shape(_))
        ));
        assert!(matches!(ImageSpec::parse("a="), Err(ImageError::Shape(_))));
        assert!(matches!(
            ImageSpec::parse("a=/k,foo=bar"),
            Err(ImageError::Option { .. })
        ));
        assert!(matches!(
            ImageSpec::parse("a b=/k"),
            Err(ImageError::Name(_))
        ));
        for dots in ["..=/k", ".=/k"] {
            assert!(
                matches!(ImageSpec::parse(dots), Err(ImageError::Name(_))),
                "{dots}"
            );
        }
        assert!(ImageSpec::parse("v1.2=/k").is_ok());
    }
}
