//! The boot figures of a lease whose VMM was spawned, kept in the ledger (`spawn_json`) at
//! the spawn. A coinopd that dies before the guest's `guest_ready` leaves a `booting` lease
//! whose VMM goes on booting; its successor reads the VMM's boot-timing events from its log
//! (`crate::vmm_log_events`) and finishes the figures exactly as the create would have:
//! every figure is µs from the create request's arrival, and the VMM's events count from
//! its time base (`--start-time-us`), which the record places on that scale.

use coinop_proto::BootFigures;
use serde::{Deserialize, Serialize};

use crate::vmm_log_events::BootProgress;

/// What was known when the VMM was spawned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRecord {
    /// Payment check, ledger commit and spawn, µs from the request's arrival.
    pub figures: BootFigures,
    /// The VMM's time base (the `--start-time-us` it was given), µs from the request's
    /// arrival: what its events' `t_us` add to.
    pub vmm_base_us: u64,
    /// What its files were bounded by at the spawn (`None` from a coinopd that did not
    /// record it): a coinopd started since with a lower console cap, or after the image's
    /// root filesystem was replaced by a smaller one, holds this VMM to what it was given,
    /// not to what a new VMM would be (`crate::vmm_file_bounds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<SpawnFiles>,
}

/// The sizes a VMM's file bounds come from, as they were at its spawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnFiles {
    /// Its `--console-max-bytes`.
    pub console_max_bytes: u64,
    /// Its root disk's base image size, for an image with one.
    pub rootfs_bytes: Option<u64>,
}

impl SpawnRecord {
    /// As stored in the ledger.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of integers always serializes")
    }

    /// From the ledger; `None` for a lease spawned by a coinopd that did not keep it.
    pub fn from_json(json: Option<&str>) -> Option<SpawnRecord> {
        json.and_then(|j| serde_json::from_str(j).ok())
    }

    /// The figures with the VMM's progress added, as a fresh create computes them.
    pub fn finish(&self, p: BootProgress) -> BootFigures {
        BootFigures {
            vcpus_started_us: p
                .vcpus_started_us
                .map(|t| self.vmm_base_us.saturating_add(t)),
            guest_ready_us: p.guest_ready_us.map(|t| self.vmm_base_us.saturating_add(t)),
            ..self.figures.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_events_are_placed_on_the_request_scale() {
        let r = SpawnRecord {
            figures: BootFigures {
                payment_verified_us: 100,
                ledger_committed_us: 900,
                vmm_spawned_us: 2_000,
                ..BootFigures::default()
            },
            vmm_base_us: 1_000,
            files: Some(SpawnFiles {
                console_max_bytes: 4096,
                rootfs_bytes: None,
            }),
        };
        assert_eq!(SpawnRecord::from_json(Some(&r.to_json())), Some(r.clone()));
        assert_eq!(SpawnRecord::from_json(Some("{}")), None);
        // One recorded before the files were (no such field): read, with them unknown.
        let older = SpawnRecord {
            files: None,
            ..r.clone()
        }
        .to_json();
        assert!(!older.contains("files"), "{older}");
        let read = SpawnRecord::from_json(Some(&older));
        assert_eq!(read.map(|o| (o.vmm_base_us, o.files)), Some((1_000, None)));
        let f = r.finish(BootProgress {
            vcpus_started_us: Some(5_000),
            guest_ready_us: Some(30_000),
            ..BootProgress::default()
        });
        assert_eq!(
            (
                f.payment_verified_us,
                f.ledger_committed_us,
                f.vmm_spawned_us
            ),
            (100, 900, 2_000)
        );
        assert_eq!(
            (f.vcpus_started_us, f.guest_ready_us),
            (Some(6_000), Some(31_000))
        );
        // A VMM's log is its own writing: a time past any clock is held, not wrapped (nor a
        // panic in a build with overflow checks).
        let f = r.finish(BootProgress {
            guest_ready_us: Some(u64::MAX),
            ..BootProgress::default()
        });
        assert_eq!(f.guest_ready_us, Some(u64::MAX));
    }
}
