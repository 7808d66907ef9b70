# coinop-vmm processes the test suite left running. Guests outlive coinopd by design, so a
# test that forgets to stop its leases leaks a VMM (a mode=spin guest then burns a core for
# minutes after the suite). Sourced by test.sh: snapshot the VMMs alive before the tests,
# then after each stage list, kill and fail on the ones the stage left behind.
#
# A VMM counts as the suite's when it was not alive at the snapshot (pid + start time, so a
# reused pid is new) and it is orphaned: its parent is neither a cargo test binary
# (target/*/deps/*) nor a coinopd with a live parent, which is what a still-running suite
# of someone else on the same host would be. A leaked VMM of this suite has outlived its
# test binary (and its daemon, or the daemon is an orphan too).

# Prints "pid:starttime" of every live (not zombie) coinop-vmm.
coinop_vmm_keys() {
  local stat dir rest
  for dir in /proc/[0-9]*; do
    stat=$(cat "$dir/stat" 2>/dev/null) || continue
    case "$stat" in *"(coinop-vmm)"*) ;; *) continue ;; esac
    rest=${stat##*) }
    # Fields after the name: state ppid ... starttime is the 20th of them.
    set -- $rest
    [ "$1" = Z ] && continue
    printf '%s:%s\n' "${dir#/proc/}" "${20}"
  done
}

# The parent pid of pid $1 (empty once it is gone).
coinop_ppid() {
  awk '{sub(/.*\) /, ""); print $2}' "/proc/$1/stat" 2>/dev/null || true
}

# Whether pid $1's parent is a cargo test binary, or a coinopd that is not itself orphaned
# (a coinopd leaked by this suite would be), still running.
coinop_vmm_parent_is_a_live_suite() {
  local ppid comm exe grand
  ppid=$(coinop_ppid "$1")
  [ -n "$ppid" ] && [ "$ppid" != 1 ] || return 1
  comm=$(cat "/proc/$ppid/comm" 2>/dev/null) || return 1
  if [ "$comm" = coinopd ]; then
    grand=$(coinop_ppid "$ppid")
    [ -n "$grand" ] && [ "$grand" != 1 ]
    return
  fi
  exe=$(readlink "/proc/$ppid/exe" 2>/dev/null) || return 1
  case "$exe" in */target/*/deps/*) return 0 ;; esac
  return 1
}

# coinop_check_leftover_vmms BEFORE_FILE STAGE: fails (after killing them) when STAGE left
# VMMs running that were not in BEFORE_FILE.
coinop_check_leftover_vmms() {
  local before=$1 stage=$2 key pid leaked=()
  # Give stops that were already under way a moment to finish.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    leaked=()
    while read -r key; do
      grep -qxF "$key" "$before" && continue
      pid=${key%%:*}
      coinop_vmm_parent_is_a_live_suite "$pid" && continue
      leaked+=("$pid")
    done < <(coinop_vmm_keys)
    [ ${#leaked[@]} = 0 ] && return 0
    sleep 0.5
  done
  say "$stage left ${#leaked[@]} coinop-vmm process(es) running:"
  for pid in "${leaked[@]}"; do
    printf '  pid %s: %s\n    cgroup: %s\n' "$pid" \
      "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" \
      "$(tr '\n' ' ' <"/proc/$pid/cgroup" 2>/dev/null)" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  die "$stage leaked guest VMMs (killed now): a test or benchmark did not stop its leases"
}
