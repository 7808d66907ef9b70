#!/usr/bin/env bash
# Self-test of scripts/lib/leftover_vmms.sh, run by hand (no KVM, no build; root or not):
# fake VMMs (a copy of sleep named coinop-vmm) that the check must leave alone, and fakes
# carrying this run's directory the way real ones do, which it must report and kill.
# The fakes outside the run include the one the old heuristic killed: a coinop-vmm started
# during the run and orphaned to pid 1, like a tenant's guest of a coinopd under systemd.
# Exits non-zero, saying which, when a case fails.
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
source "$(dirname "$0")/lib/leftover_vmms.sh"

COINOP_TEST_RUN_DIR=$(coinop_test_run_dir_new)
export COINOP_TEST_RUN_DIR
# The fake binary lives outside the run directory: its path is on every fake's command line.
bin_dir=$(mktemp -d -t coinop-fake-vmm.XXXXXX)
other_run=$(coinop_test_run_dir_new)
# A sibling whose name only starts like the run directory's: a path in it is not inside.
sibling=$COINOP_TEST_RUN_DIR-not
mkdir "$sibling"
fake=$bin_dir/coinop-vmm
cp "$(command -v sleep)" "$fake"
started=()

# Kills what this script started, each only while it is still our fake binary.
cleanup() {
  local pid
  for pid in "${started[@]}"; do
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$COINOP_TEST_RUN_DIR" "$other_run" "$sibling" "$bin_dir"
}
trap cleanup EXIT

# orphan CMD...: runs CMD in the background of a subshell that then exits, so its parent
# becomes pid 1 (or the nearest subreaper); prints its pid.
orphan() {
  ("$@" </dev/null >/dev/null 2>&1 & echo $!)
}

failed=0
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  failed=1
}
# Whether pid $1 is still one of our fakes.
alive() { [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$fake" ]; }

# Outside the run: none of these may be reported or killed.
env -u COINOP_TEST_RUN_DIR "$fake" 600 </dev/null >/dev/null 2>&1 &
plain=$!
disown "$plain" # cleanup kills it: no "Killed" job notice from bash
orphaned=$(orphan env -u COINOP_TEST_RUN_DIR "$fake" 600)
# Another run's directory, in each of the three places a run's VMM can carry it.
other_env=$(orphan env COINOP_TEST_RUN_DIR="$other_run" "$fake" 600)
other_fd=$(orphan env -i sh -c 'exec "$1" 600 >"$2/tmp/vm.console"' sh "$fake" "$other_run")
other_arg=$(orphan env -i bash -c 'exec -a "$2/tmp/vm.sock" "$1" 600' bash "$fake" "$other_run")
sibling_fd=$(orphan env -i sh -c 'exec "$1" 600 >"$2/vm.console"' sh "$fake" "$sibling")
outside=("$plain" "$orphaned" "$other_env" "$other_fd" "$other_arg" "$sibling_fd")
started+=("${outside[@]}")
sleep 0.3
say "outside this run: pids ${outside[*]} (the orphan's parent: pid $(awk '{sub(/.*\) /, ""); print $2}' "/proc/$orphaned/stat"))"

say "nothing of this run is running: the check passes and kills nothing"
if ! (coinop_check_leftover_vmms "self-test") 2>/dev/null; then
  fail "the check failed with none of this run's VMMs running"
fi

# This run's, by each mark alone (the others absent): environment (an unjailed VMM), an
# open file in the run directory with an empty environment (a jailed VMM's console), and a
# command-line argument with an empty environment.
by_env=$(orphan "$fake" 600)
mkdir -p "$COINOP_TEST_RUN_DIR/tmp/state/run"
by_fd=$(orphan env -i sh -c 'exec "$1" 600 >"$2/tmp/state/run/l1.console"' sh "$fake" \
  "$COINOP_TEST_RUN_DIR")
by_arg=$(orphan env -i bash -c 'exec -a "$2/tmp/state/run/l2.sock" "$1" 600' bash "$fake" \
  "$COINOP_TEST_RUN_DIR")
ours=("$by_env" "$by_fd" "$by_arg")
started+=("${ours[@]}")
sleep 0.3
say "this run's: pids ${ours[*]}"

say "a pid whose start time changed (a reused pid) is not killed"
coinop_kill_own_vmm "$by_env:1" 2>/dev/null
if ! alive "$by_env"; then fail "pid $by_env was killed under a stale start time"; fi

say "the check reports and kills exactly this run's"
if out=$( (coinop_check_leftover_vmms "self-test") 2>&1); then
  fail "the check passed with this run's VMMs running"
fi
printf '%s\n' "$out" | sed 's/^/    | /' >&2
sleep 0.3
for pid in "${ours[@]}"; do
  if ! grep -q "^  pid $pid " <<<"$out"; then fail "this run's pid $pid not reported"; fi
  if alive "$pid"; then fail "this run's pid $pid not killed"; fi
done
for pid in "${outside[@]}"; do
  if grep -q "pid $pid " <<<"$out"; then fail "pid $pid, not this run's, reported"; fi
  if ! alive "$pid"; then fail "pid $pid, not this run's, killed"; fi
done

[ "$failed" = 0 ] || die "leftover VMM check self-test failed"
say "leftover VMM check self-test passed"
