//! The `coinop-vmm` binary: see the `vmm` crate documentation for the contract.

fn main() {
    let started_us = vmm::events::monotonic_us();
    std::process::exit(vmm::run(std::env::args_os(), started_us));
}
