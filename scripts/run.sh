#!/usr/bin/env bash
# coinop's main job on one host, on embedded defaults: set up (idempotently), build, start
# coinopd on a local regtest chain, then walk a tenant through a whole lease: quote, pay on
# chain, boot, watch the balance fall, top up with credit, stop and collect the change.
#
#   COINOP_DEMO_DIR=DIR  keep the daemon's state (ledger, chain, keys, consoles) in DIR
#   COINOP_DEMO_KEEP=1   leave coinopd running at the end (its socket is printed)
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
cd "$COINOP_ROOT"
coinop_setup
# Release builds, the test guest and the demo's state: ~1.5 GiB on a first run.
coinop_make_room 3

if problem=$(coinop_kvm_problem) && [ -n "$problem" ]; then
  die "can't boot a guest: $problem"
fi

say "building coinopd and coinop (release) and a static coinop-vmm"
coinop_build_release
say "building the test guest"
images/testguest/build.sh target/testguest >/dev/null

state=${COINOP_DEMO_DIR:-$(mktemp -d -t coinop-demo.XXXXXX)}
mkdir -p "$state"
export COINOP_SOCKET=$state/coinop.sock COINOP_WALLET=$state/tenant-wallet.json
coinop() { "$COINOP_BIN/coinop" "$@"; }
step() { printf '\n\033[1m$ coinop %s\033[0m\n' "$*"; coinop "$@"; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# Jailing a guest (namespaces, pivot_root, a pool uid, cgroups) needs root; coinopd refuses
# to run guests unjailed unless told so.
extra=()
if [ "$(id -u)" != 0 ]; then
  say "not root: guests run without the jail (coinopd --no-jail); run as root for the real thing"
  extra+=(--no-jail)
fi
say "starting coinopd (regtest, embedded defaults) in $state"
"$COINOP_BIN/coinopd" --state-dir "$state" --socket "$COINOP_SOCKET" \
  --vmm-bin "$COINOP_VMM" --testguest target/testguest/testguest-pvh.elf "${extra[@]}" \
  >"$state/coinopd.log" 2>&1 &
daemon=$!
stop_daemon() { kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; }
[ "${COINOP_DEMO_KEEP:-0}" = 1 ] || trap stop_daemon EXIT
for _ in $(seq 100); do [ -S "$COINOP_SOCKET" ] && break; sleep 0.05; done
[ -S "$COINOP_SOCKET" ] || { cat "$state/coinopd.log" >&2; die "coinopd did not start"; }

step host
quote=$(coinop --json quote --vcpus 1 --mem-mib 128 --seconds 60)
printf '\n\033[1m$ coinop --json quote --vcpus 1 --mem-mib 128 --seconds 60\033[0m\n'
python3 -m json.tool <<<"$quote"
quote_id=$(json_field quote_id <<<"$quote")

say "the tenant pays the quote's address; on regtest 'coinop regtest pay' mines that payment"
say "in-process and hands the daemon the new headers, so no bitcoind is needed"
coinop regtest pay --quote-id "$quote_id" >"$state/onchain-payment.json"

lease=$(coinop --json lease create --vcpus 1 --mem-mib 128 --cmdline mode=echo \
  --payment "$state/onchain-payment.json")
printf '\n\033[1m$ coinop --json lease create --vcpus 1 --mem-mib 128 --cmdline mode=echo --payment onchain-payment.json\033[0m\n'
python3 -m json.tool <<<"$lease"
id=$(json_field lease_id <<<"$lease")
export COINOP_TOKEN
COINOP_TOKEN=$(json_field token <<<"$lease")

sleep 1
step lease console "$id"
step lease show "$id"

say "topping up with blind-signed credit: mint it (paid on regtest), then pay with the notes"
step wallet mint --amount 2000
coinop wallet pay --amount 1000 >"$state/credit-payment.json"
step lease topup "$id" --payment "$state/credit-payment.json"
sleep 1
step lease show "$id"

say "stopping: the unused balance comes back as blind-signed change in the tenant's wallet"
step lease stop "$id" --change
step wallet balance
step leases

if [ "${COINOP_DEMO_KEEP:-0}" = 1 ]; then
  say "coinopd keeps running (pid $daemon): export COINOP_SOCKET=$COINOP_SOCKET"
fi
