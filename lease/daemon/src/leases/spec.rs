//! Checking what a tenant asks for against what this host sells, before any payment is
//! looked at: a create and a quote refuse the same specs the same way.

use super::LeaseError;
use crate::app::AppState;

/// Largest lease a single request may ask for.
pub const MAX_VCPUS: u32 = 32;
/// Longest lease a quote may price (a year).
pub const MAX_SECONDS: u64 = 366 * 24 * 3600;

/// Checks a spec against the host's limits: well-formed but impossible is refused.
pub fn check(
    s: &AppState,
    vcpus: u32,
    mem_mib: u64,
    image: Option<&str>,
) -> Result<(), LeaseError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(LeaseError::InvalidSpec(format!(
            "vcpus {vcpus} must be 1..={MAX_VCPUS}"
        )));
    }
    let limit = s.capacity().limit();
    if vcpus > limit.vcpus {
        return Err(LeaseError::InvalidSpec(format!(
            "vcpus {vcpus} exceeds the host's {}",
            limit.vcpus
        )));
    }
    if mem_mib == 0 || mem_mib > limit.mib {
        return Err(LeaseError::InvalidSpec(format!(
            "mem_mib {mem_mib} must be 1..={}",
            limit.mib
        )));
    }
    if let Some(name) = image {
        if s.config.images.get(name).is_none() {
            return Err(LeaseError::UnknownImage(format!(
                "image {name:?} is not in this host's catalogue"
            )));
        }
    }
    Ok(())
}

/// Checks a quote's duration.
pub fn check_seconds(seconds: u64) -> Result<(), LeaseError> {
    if seconds == 0 || seconds > MAX_SECONDS {
        return Err(LeaseError::InvalidSpec(format!(
            "seconds {seconds} must be 1..={MAX_SECONDS}"
        )));
    }
    Ok(())
}
