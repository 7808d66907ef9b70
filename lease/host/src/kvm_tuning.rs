//! The host kernel's KVM settings that change how fast a guest starts, read from sysfs so
//! coinopd can tell the operator at start-up. Nothing here changes a setting: a module
//! parameter is the host's, set at boot or module load (README, "Golden snapshots").
//!
//! One so far: `kvm.nx_huge_pages`. KVM's mitigation for the iTLB multihit erratum
//! (CVE-2018-12207) runs a recovery thread per VM, and up to at least Linux 6.1 KVM_CREATE_VM
//! starts that thread (`kvm_mmu_post_init_vm`: a kthread made and moved into the creating
//! process's cgroups) even where the mitigation is off, as on every CPU the erratum does
//! not affect; only `never` skips it. In the nested lab KVM_CREATE_VM took 17-30 ms with
//! the default and 1.3-1.7 ms with `never`, on the path of every lease's start, a restored
//! one's included. On an affected CPU the mitigation is needed and nothing is suggested.

use std::path::Path;

/// KVM's module parameter (`never` once hard-disabled; `Y`/`N` otherwise).
const NX_HUGE_PAGES: &str = "/sys/module/kvm/parameters/nx_huge_pages";
/// The kernel's verdict on this CPU and the erratum (`Not affected`, or a mitigation).
const ITLB_MULTIHIT: &str = "/sys/devices/system/cpu/vulnerabilities/itlb_multihit";

/// A setting of the host's KVM worth changing, with what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// The parameter and its current value, e.g. `kvm.nx_huge_pages=N`.
    pub current: String,
    /// What the operator could do, in words.
    pub suggestion: &'static str,
}

/// What this host's KVM settings suggest (`None` when nothing: KVM not loaded, files
/// unreadable, or settings already right).
pub fn advice() -> Option<Advice> {
    advice_from(Path::new(NX_HUGE_PAGES), Path::new(ITLB_MULTIHIT))
}

fn advice_from(nx_huge_pages: &Path, itlb_multihit: &Path) -> Option<Advice> {
    let param = std::fs::read_to_string(nx_huge_pages).ok()?;
    let verdict = std::fs::read_to_string(itlb_multihit).ok()?;
    nx_huge_pages_advice(&param, &verdict)
}

/// The decision for `kvm.nx_huge_pages` from the parameter's and the erratum's sysfs texts.
fn nx_huge_pages_advice(param: &str, verdict: &str) -> Option<Advice> {
    let param = param.trim();
    // Only a CPU the erratum does not touch may go without the mitigation and its thread.
    if param == "never" || verdict.trim() != "Not affected" {
        return None;
    }
    Some(Advice {
        current: format!("kvm.nx_huge_pages={param}"),
        suggestion: "this CPU is not affected by iTLB multihit, yet KVM starts a recovery \
                     thread for every VM it creates, on each lease's start: set \
                     kvm.nx_huge_pages=never (kernel command line, or `options kvm \
                     nx_huge_pages=never` in /etc/modprobe.d/ before KVM loads)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unaffected_cpu_without_never_gets_the_advice() {
        for param in ["N\n", "Y\n", "N"] {
            let a = nx_huge_pages_advice(param, "Not affected\n").expect("advice");
            assert_eq!(a.current, format!("kvm.nx_huge_pages={}", param.trim()));
            assert!(a.suggestion.contains("nx_huge_pages=never"));
        }
    }

    #[test]
    fn never_or_an_affected_cpu_gets_none() {
        assert_eq!(nx_huge_pages_advice("never\n", "Not affected\n"), None);
        for verdict in [
            "KVM: Mitigation: Split huge pages\n",
            "KVM: Mitigation: VMX disabled\n",
            "KVM: Vulnerable\n",
            "Processor vulnerable\n",
        ] {
            assert_eq!(nx_huge_pages_advice("Y\n", verdict), None, "{verdict}");
        }
    }

    #[test]
    fn files_are_read_and_missing_ones_give_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (param, verdict) = (dir.path().join("param"), dir.path().join("verdict"));
        assert_eq!(advice_from(&param, &verdict), None, "KVM not loaded");
        std::fs::write(&param, "N\n").expect("write");
        assert_eq!(advice_from(&param, &verdict), None, "no verdict");
        std::fs::write(&verdict, "Not affected\n").expect("write");
        let a = advice_from(&param, &verdict).expect("advice");
        assert_eq!(a.current, "kvm.nx_huge_pages=N");
        std::fs::write(&param, "never\n").expect("write");
        assert_eq!(advice_from(&param, &verdict), None);
    }
}
