//! `coinop`, the operator and provisioning CLI (built by the lease issue).
fn main() {
    eprintln!("coinop: not built yet; see the lease issue");
    std::process::exit(2);
}
