//! What a spec costs, in integer millisatoshis: vCPU-seconds at one price, GiB-seconds of
//! memory at another, summed exactly and rounded up once. No floats touch money.

use super::error::PriceError;

/// The operator's prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prices {
    pub msat_per_vcpu_s: u64,
    pub msat_per_gib_s: u64,
}

/// What a tenant asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub seconds: u64,
}

const MIB_PER_GIB: u128 = 1024;

/// The price of `spec` in msat, rounded up to a whole msat.
pub fn price(spec: &Spec, prices: &Prices) -> Result<u64, PriceError> {
    if spec.vcpus == 0 {
        return Err(PriceError::Zero { field: "vcpus" });
    }
    if spec.mem_mib == 0 {
        return Err(PriceError::Zero { field: "mem_mib" });
    }
    if spec.seconds == 0 {
        return Err(PriceError::Zero { field: "seconds" });
    }
    let overflow = || PriceError::Overflow {
        vcpus: spec.vcpus,
        mem_mib: spec.mem_mib,
        seconds: spec.seconds,
    };
    // Everything in 1/1024 msat so memory's MiB→GiB division happens once, at the end.
    let cpu = u128::from(spec.vcpus)
        .checked_mul(u128::from(spec.seconds))
        .and_then(|v| v.checked_mul(u128::from(prices.msat_per_vcpu_s)))
        .and_then(|v| v.checked_mul(MIB_PER_GIB))
        .ok_or_else(overflow)?;
    let mem = u128::from(spec.mem_mib)
        .checked_mul(u128::from(spec.seconds))
        .and_then(|v| v.checked_mul(u128::from(prices.msat_per_gib_s)))
        .ok_or_else(overflow)?;
    let total = cpu.checked_add(mem).ok_or_else(overflow)?;
    u64::try_from(total.div_ceil(MIB_PER_GIB)).map_err(|_| overflow())
}

/// Whole satoshis covering `msat` (rounded up: the tenant never pays less than quoted).
pub fn msat_to_sat_ceil(msat: u64) -> u64 {
    msat.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Prices = Prices {
        msat_per_vcpu_s: 10,
        msat_per_gib_s: 3,
    };

    #[test]
    fn sums_cpu_and_memory() {
        // 2 vCPU × 60 s × 10 = 1200; 1 GiB × 60 s × 3 = 180.
        let spec = Spec {
            vcpus: 2,
            mem_mib: 1024,
            seconds: 60,
        };
        assert_eq!(price(&spec, &P), Ok(1380));
    }

    #[test]
    fn rounds_memory_up_to_a_whole_msat() {
        // 1 MiB × 1 s × 3 msat/GiB·s = 3/1024 msat → 1 msat, plus 10 for the vCPU.
        let spec = Spec {
            vcpus: 1,
            mem_mib: 1,
            seconds: 1,
        };
        assert_eq!(price(&spec, &P), Ok(11));
        // 1024 MiB exactly: no rounding.
        let spec = Spec {
            mem_mib: 1024,
            ..spec
        };
        assert_eq!(price(&spec, &P), Ok(13));
        // 1025 MiB: 3 + 3/1024 → 4.
        let spec = Spec {
            mem_mib: 1025,
            ..spec
        };
        assert_eq!(price(&spec, &P), Ok(14));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let spec = Spec {
            vcpus: u32::MAX,
            mem_mib: u64::MAX,
            seconds: u64::MAX,
        };
        assert!(matches!(price(&spec, &P), Err(PriceError::Overflow { .. })));
        let big = Prices {
            msat_per_vcpu_s: u64::MAX,
            msat_per_gib_s: 0,
        };
        let spec = Spec {
            vcpus: 2,
            mem_mib: 1,
            seconds: 1,
        };
        assert!(matches!(
            price(&spec, &big),
            Err(PriceError::Overflow { .. })
        ));
    }

    #[test]
    fn zero_fields_are_refused() {
        let spec = Spec {
            vcpus: 0,
            mem_mib: 1,
            seconds: 1,
        };
        assert_eq!(price(&spec, &P), Err(PriceError::Zero { field: "vcpus" }));
    }

    #[test]
    fn sat_rounding() {
        assert_eq!(msat_to_sat_ceil(0), 0);
        assert_eq!(msat_to_sat_ceil(1), 1);
        assert_eq!(msat_to_sat_ceil(1000), 1);
        assert_eq!(msat_to_sat_ceil(1001), 2);
        assert_eq!(msat_to_sat_ceil(u64::MAX), u64::MAX / 1000 + 1);
    }
}
