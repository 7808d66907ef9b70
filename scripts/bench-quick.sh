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
# coinopd must sit next to coinop-bench for the daemon scenarios.
cargo build --quiet -p vmm -p coinopd -p coinop-cli -p coinop-bench
images/testguest/build.sh target/testguest >/dev/null
out=$(mktemp -d -t coinop-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
bench=${CARGO_TARGET_DIR:-target}/debug/coinop-bench
kernel=target/testguest/testguest-pvh.elf
for s in vmm lease burst density overrun; do
  "$bench" --json "$out/$s.json" --svg "$out/$s.svg" "$s" --quick --kernel "$kernel"
done
# The crash soak (issue #13): coinopd killed a few times in 40 s; exits 1 on any orphan VMM
# or lost msat.
"$bench" --json "$out/soak.json" --svg "$out/soak.svg" soak --quick --tick-ms 20 --kernel "$kernel"
"$bench" --json "$out/payment.json" --svg "$out/payment.svg" payment --quick
# Cold boot vs restore of the test guest (issue #17's scenario): a few runs prove it works.
"$bench" --json "$out/restore.json" --svg "$out/restore.svg" restore --runs 3 --warmup 1 --kernel "$kernel"
# The harness must have written what it printed, for every scenario.
for s in vmm lease burst density overrun payment soak restore; do
  python3 - "$out/$s.json" <<'PY'
import json, sys
reports = json.load(open(sys.argv[1]))
rows = [row for r in reports for row in r["rows"]]
assert rows, f"no figures in {sys.argv[1]}"
print(f"bench --quick: {len(rows)} figure rows in {sys.argv[1].rsplit('/', 1)[-1]}")
PY
  grep -q '</svg>' "$out/$s.svg"
done
