//! `coinopd`, the coinop host daemon (built by the lease issue).
fn main() {
    eprintln!("coinopd: not built yet; see the lease issue");
    std::process::exit(2);
}
