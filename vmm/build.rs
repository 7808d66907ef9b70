//! Builds the freestanding test guest (images/testguest) so the integration tests boot a
//! guest compiled from source, never a committed binary. Paths reach the tests through
//! `COINOP_TESTGUEST_PVH` and `COINOP_TESTGUEST_ELF64`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

#[path = "seccomp/compile.rs"]
mod seccomp_compile;

const APT_HINT: &str = "install the machine's C toolchain: apt-get install -y gcc binutils make";

fn fail(msg: &str) -> ! {
    eprintln!("error: building the coinop test guest: {msg}");
    exit(1);
}

fn tool_present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => fail(&format!("cargo did not set {name}")),
    }
}

fn main() {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR");
    if let Err(e) = seccomp_compile::write_filters(&manifest_dir, &env_path("OUT_DIR")) {
        eprintln!("error: building the seccomp filters: {e}");
        exit(1);
    }
    let out_dir = env_path("OUT_DIR").join("testguest");
    let guest_src = manifest_dir.join("../images/testguest");
    let build_sh = guest_src.join("build.sh");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", guest_src.display());
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=LD");

    // build.sh honours CC and LD, so check the tools it will really run.
    for (var, default) in [("CC", "gcc"), ("LD", "ld")] {
        let tool = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        if !tool_present(&tool) {
            fail(&format!("`{tool}` not found; {APT_HINT}"));
        }
    }
    if !build_sh.is_file() {
        fail(&format!("{} is missing", build_sh.display()));
    }

    let output = Command::new("sh")
        .arg(&build_sh)
        .arg(&out_dir)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", build_sh.display())));
    if !output.status.success() {
        fail(&format!(
            "{} {} failed ({}):\n{}{}",
            build_sh.display(),
            out_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    export_image("COINOP_TESTGUEST_PVH", &out_dir.join("testguest-pvh.elf"));
    export_image("COINOP_TESTGUEST_ELF64", &out_dir.join("testguest.elf"));
}

fn export_image(var: &str, path: &Path) {
    let abs = path
        .canonicalize()
        .unwrap_or_else(|e| fail(&format!("{} was not produced: {e}", path.display())));
    println!("cargo:rustc-env={var}={}", abs.display());
}
