#!/usr/bin/env bash
# coinop's main job on one host: set up (idempotently), build, and boot the test guest on
# /dev/kvm with coinop-vmm, showing its console and its boot figures.
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
cd "$COINOP_ROOT"
coinop_setup

if problem=$(coinop_kvm_problem) && [ -n "$problem" ]; then
  die "can't boot a guest: $problem"
fi

say "building (release)"
cargo build --release --workspace --quiet
say "building the test guest"
images/testguest/build.sh target/testguest >/dev/null

say "booting the test guest: 2 vCPUs, 128 MiB, mode=smp"
events=$(mktemp -t coinop-events.XXXXXX)
trap 'rm -f "$events"' EXIT
start_us=$(python3 -c 'import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC)//1000)' 2>/dev/null || echo "")
args=(--kernel target/testguest/testguest-pvh.elf --cmdline mode=smp --vcpus 2 --mem-mib 128)
[ -n "$start_us" ] && args+=(--start-time-us "$start_us")
echo "---- guest console ----"
target/release/coinop-vmm "${args[@]}" 2>"$events"
echo "---- boot figures (µs since spawn) ----"
cat "$events"
