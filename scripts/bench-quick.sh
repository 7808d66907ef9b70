#!/usr/bin/env bash
# The benchmark harness in --quick mode, as the test suite runs it: a few boots on every
# engine present, to prove the harness and its peers work. Its figures mean little; run
# coinop-bench without --quick for those (see README, "Benchmarks").
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
cd "$COINOP_ROOT"
if problem=$(coinop_kvm_problem) && [ -n "$problem" ]; then
  echo "SKIPPED: benchmark harness (--quick): $problem"
  exit 0
fi
cargo build --quiet -p vmm -p coinop-bench
images/testguest/build.sh target/testguest >/dev/null
out=$(mktemp -d -t coinop-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
target/debug/coinop-bench --json "$out/vmm.json" --svg "$out/vmm.svg" \
  vmm --quick --kernel target/testguest/testguest-pvh.elf
# The harness must have written what it printed.
python3 - "$out/vmm.json" <<'PY'
import json, sys
reports = json.load(open(sys.argv[1]))
engines = {row["engine"] for r in reports for row in r["rows"]}
assert "coinop" in engines, f"no coinop figures in {sys.argv[1]}"
print(f"bench --quick: figures for {sorted(engines)}")
PY
grep -q '</svg>' "$out/vmm.svg"
