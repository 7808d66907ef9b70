#!/usr/bin/env bash
# Sets up a fresh host (idempotently) and runs coinop's whole test suite: formatting, lints,
# every crate's unit and integration tests (KVM tests boot the test guest on /dev/kvm), and
# the benchmark harness in --quick mode, and the nested Linux lab (scripts/lab.sh). Exits
# non-zero on the first failure.
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
source "$(dirname "$0")/lib/leftover_vmms.sh"
source "$(dirname "$0")/lib/bcoin.sh"
source "$(dirname "$0")/lib/postgres.sh"
source "$(dirname "$0")/lib/cashu_wallets.sh"
cd "$COINOP_ROOT"
coinop_setup
# A first run: ~5.5 GiB of debug and ~1 GiB of release artefacts, a ~1.5 GiB kernel
# build tree for the lab, and the lab's images.
coinop_make_room 10
coinop_install_packages "${COINOP_TEST_PACKAGES[@]}"
# The fleet-store tests start their own throwaway PostgreSQL clusters from these binaries.
coinop_ensure_postgres

# This run's directory: the stages that start guests get TMPDIR inside it, so every state
# directory, control socket and console of theirs is in it, and COINOP_TEST_RUN_DIR in
# their environment. That is how coinop_check_leftover_vmms knows a VMM is this run's and
# never touches another's (see scripts/lib/leftover_vmms.sh). The lab keeps the usual
# TMPDIR: its lock file there is shared between runs on purpose.
COINOP_TEST_RUN_DIR=$(coinop_test_run_dir_new)
export COINOP_TEST_RUN_DIR
log=$COINOP_TEST_RUN_DIR/test.log
# --one-file-system: never delete through something a test left mounted in it.
trap 'rm -rf --one-file-system "$COINOP_TEST_RUN_DIR"' EXIT

if problem=$(coinop_kvm_problem) && [ -n "$problem" ]; then
  say "KVM tests will be SKIPPED: $problem"
fi

# Real Cashu wallets for the interop tests (lease/daemon/tests/cashu_wallets.rs), cached by
# version; a wallet that cannot be installed makes its tests print SKIPPED, not fail here.
command -v npm >/dev/null || coinop_install_packages nodejs npm
say "cashu-ts for the wallet interop tests"
coinop_install_cashu_ts >/dev/null || say "cashu-ts could not be installed: its tests will be SKIPPED"
python3 -c 'import venv, ensurepip' 2>/dev/null || coinop_install_packages python3-venv
say "nutshell for the wallet interop tests"
coinop_install_nutshell >/dev/null || say "nutshell could not be installed: its tests will be SKIPPED"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# bcoin, the real Bitcoin node the P2P tests sync from (cached; they SKIP without it).
say "bcoin (regtest peer for the P2P tests)"
coinop_install_bcoin || say "bcoin unavailable: the Bitcoin P2P tests will be SKIPPED"

say "cargo test"
TMPDIR=$COINOP_TEST_RUN_DIR/tmp cargo test --workspace 2>&1 | tee "$log"
coinop_check_leftover_vmms "cargo test"

say "benchmark harness, --quick (checks it works; asserts no timing)"
TMPDIR=$COINOP_TEST_RUN_DIR/tmp scripts/bench-quick.sh 2>&1 | tee -a "$log"
coinop_check_leftover_vmms "the benchmark harness"

# Real Linux can't boot on this kind of host's /dev/kvm; the lab proves it one level down.
# The suite proves coinop-vmm only (LAB_PEERS=0): the side-by-side with QEMU is a benchmark,
# run by scripts/lab.sh alone, and a QEMU peer that wedges L1 must not fail coinop's tests.
say "Linux lab (nested KVM): scripts/lab.sh"
LAB_PEERS=${LAB_PEERS:-0} scripts/lab.sh 2>&1 | tee -a "$log"

skipped=$(grep -c '^SKIPPED:' "$log" || true)
if [ "$skipped" != 0 ]; then
  say "$skipped test(s) SKIPPED, not passed:"
  grep '^SKIPPED:' "$log" | sort | uniq -c >&2
else
  say "no test was skipped"
fi
say "all tests passed"
