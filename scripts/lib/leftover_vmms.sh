# coinop-vmm processes the test suite left running. Guests outlive coinopd by design, so a
# test that forgets to stop its leases leaks a VMM (a mode=spin guest then burns a core for
# minutes after the suite). Sourced by test.sh: after each stage that starts guests, list,
# kill and fail on the VMMs of this run that are still alive.
#
# Which VMMs are this run's: only those it can prove it started. This check kills what it
# matches, and the host running the suite may also run a production coinopd (under
# systemd, so parented by pid 1, its VMMs started and orphaned at any time during the run).
# Anything inferred from timing, parentage or the process name matches tenants' guests too,
# so nothing here is inferred: test.sh makes a fresh directory per run
# (coinop_test_run_dir_new), exports it as COINOP_TEST_RUN_DIR and points TMPDIR inside it
# for the stages that start guests, and a VMM is this run's only when it carries that
# directory, in one of two ways:
#  - its environment holds COINOP_TEST_RUN_DIR=<this run's directory>, exactly. A VMM a
#    test or benchmark starts itself (vmm/tests, coinop-bench's vmm scenario) inherits it,
#    and so does one an unjailed coinopd (--no-jail, the suite not root) starts.
#  - an argument of its command line, or a file it holds open, lies inside the directory.
#    A jailed VMM's environment is empty (lease's jail execve's it with an empty envp) and
#    its arguments are paths inside the jail, but coinopd creates its console and log in the
#    state directory on the host and hands them in as its stdout and stderr, and every state
#    directory the tests and benchmarks use is a tempdir, so inside TMPDIR. An unjailed VMM
#    names its control socket and console there on its command line too.
# The directory did not exist before the run (mktemp -d), so no VMM alive before it, of a
# concurrent run, or of any other coinopd carries it. A VMM that does not match is never
# reported or touched, whatever its name or parent: a leak that escapes both marks goes
# unreported rather than risk killing a guest that is not ours. The name coinop-vmm only
# narrows which processes get looked at; it never makes one ours.

# coinop_test_run_dir_new: prints a fresh, empty directory (symlinks resolved, since the
# kernel reports open files by their resolved path) with an empty tmp/ in it, for
# COINOP_TEST_RUN_DIR.
coinop_test_run_dir_new() {
  local dir
  dir=$(mktemp -d -t coinop-test-run.XXXXXX)
  dir=$(cd -P "$dir" && pwd)
  mkdir "$dir/tmp"
  # Traversable by other uids, as /tmp is: tests check what an unprivileged user (nobody)
  # can and cannot reach, and each test's own state directory sets its own mode.
  chmod 0755 "$dir" "$dir/tmp"
  printf '%s\n' "$dir"
}

# coinop_vmm_start PID: when PID is a live (not zombie) coinop-vmm, prints its start time
# (clock ticks after boot; with the pid it names one process even once pids are reused).
coinop_vmm_start() {
  local stat comm fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the
  # first "(" and the last ")".
  comm=${stat#*(}
  comm=${comm%)*}
  [ "$comm" = coinop-vmm ] || return 1
  read -ra fields <<<"${stat##*) }"
  # fields[0] is the state; the start time is field 22 of stat, fields[19] here.
  [ "${fields[0]}" != Z ] || return 1
  printf '%s\n' "${fields[19]}"
}

# coinop_vmm_is_ours PID DIR: whether PID carries DIR (see the top of this file); sets
# coinop_vmm_mark to how. Unreadable /proc files (another user's process, when not root,
# or one that just exited) match nothing.
coinop_vmm_is_ours() {
  local pid=$1 dir=$2 entry fd target
  coinop_vmm_mark=
  # An empty or relative DIR would match every path: only a run directory proves anything.
  case "$dir" in /?*) ;; *) return 1 ;; esac
  {
    while IFS= read -r -d '' entry || [ -n "$entry" ]; do
      if [ "$entry" = "COINOP_TEST_RUN_DIR=$dir" ]; then
        coinop_vmm_mark="environment COINOP_TEST_RUN_DIR"
        return 0
      fi
    done <"/proc/$pid/environ"
  } 2>/dev/null || true
  {
    while IFS= read -r -d '' entry || [ -n "$entry" ]; do
      case "$entry" in
        *"$dir/"*)
          coinop_vmm_mark="argument $entry"
          return 0
          ;;
      esac
    done <"/proc/$pid/cmdline"
  } 2>/dev/null || true
  for fd in "/proc/$pid/fd/"*; do
    target=$(readlink "$fd" 2>/dev/null) || continue
    case "$target" in
      "$dir/"*)
        coinop_vmm_mark="open file ${fd##*/} $target"
        return 0
        ;;
    esac
  done
  return 1
}

# Prints "pid:starttime" of every live coinop-vmm of this run (COINOP_TEST_RUN_DIR).
coinop_own_vmms() {
  local dir=$COINOP_TEST_RUN_DIR proc start
  for proc in /proc/[0-9]*; do
    start=$(coinop_vmm_start "${proc#/proc/}") || continue
    coinop_vmm_is_ours "${proc#/proc/}" "$dir" || continue
    printf '%s:%s\n' "${proc#/proc/}" "$start"
  done
}

# coinop_kill_own_vmm PID:STARTTIME: prints the VMM and SIGKILLs it, only if that pid is
# still the same process (same start time, so not a reused pid) and still this run's; the
# re-check sits right before the kill to leave pid reuse as small a window as bash can.
coinop_kill_own_vmm() {
  local pid=${1%%:*} start=${1#*:} now dir=$COINOP_TEST_RUN_DIR
  if ! now=$(coinop_vmm_start "$pid") || [ "$now" != "$start" ] ||
    ! coinop_vmm_is_ours "$pid" "$dir"; then
    printf '  pid %s: gone before it could be killed\n' "$pid" >&2
    return 0
  fi
  printf '  pid %s (carries the run directory in its %s): %s\n    cgroup: %s\n' "$pid" \
    "$coinop_vmm_mark" \
    "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" \
    "$(tr '\n' ' ' <"/proc/$pid/cgroup" 2>/dev/null)" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# coinop_check_leftover_vmms STAGE: fails (after killing them) when this run's VMMs are
# still running after STAGE.
coinop_check_leftover_vmms() {
  local stage=$1 key left=()
  # Without the run's directory nothing can be proven ours: stop rather than pass unseen.
  : "${COINOP_TEST_RUN_DIR:?is not set: test.sh names its run directory there}"
  # Give stops that were already under way a moment to finish.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    mapfile -t left < <(coinop_own_vmms)
    [ ${#left[@]} = 0 ] && return 0
    sleep 0.5
  done
  say "$stage left ${#left[@]} coinop-vmm process(es) running:"
  for key in "${left[@]}"; do
    coinop_kill_own_vmm "$key"
  done
  die "$stage leaked guest VMMs (killed now): a test or benchmark did not stop its leases"
}
