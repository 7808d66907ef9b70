//! The `coinop-vmm` binary (built by the vmm issue).
fn main() {
    std::process::exit(2);
}
