//! The `coinop-vmm` binary: see the `vmm` crate documentation for the contract.

fn main() {
    let started_us = vmm::events::monotonic_us();
    abort_on_panic();
    std::process::exit(vmm::run(std::env::args_os(), started_us));
}

/// A panic on any thread ends the whole VMM at once, as `panic = "abort"` would (the
/// workspace unwinds, for coinopd's sake): a guest whose vCPU or device thread died must not
/// linger half alive, billed and unresponsive. coinopd sees the VMM end and stops the lease.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}
