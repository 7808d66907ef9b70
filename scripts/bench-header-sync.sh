#!/usr/bin/env bash
# Benchmark: header sync over P2P from a loopback bcoin (regtest) into a durable header
# chain, as coinopd does it (validation and the fsync'd chain file included). The
# 10,000-block chain is generated once and kept next to the bcoin install (its time is
# printed); each run starts bcoin on a copy of it in memory (--memory-from) and syncs from
# scratch RUNS times (default 3; the first run also pays for warming up bcoin's JavaScript).
#
# Why in memory: a profile of bcoin answering `getheaders` from its on-disk chain shows it
# idle most of the time, waiting on two LevelDB reads per header (each a round trip through
# Node's thread pool), which held sync to 4-12k headers/s whatever coinopd did. Bitcoin Core
# keeps its whole block index in memory and answers `getheaders` from it; the in-memory
# bcoin is the closer stand-in for the peers coinopd will meet.
#   usage: scripts/bench-header-sync.sh [BLOCKS]   (default 10000; RUNS=N to change runs)
# BLOCKS is bounded by the regtest clock: bcoin stamps each block one second past the median
# of the last 11, and refuses one more than two hours ahead of its clock (time-too-new), so
# a chain generated at once stops somewhere past 40,000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/lib/bcoin.sh"
coinop_install_bcoin
blocks=${1:-10000}
runs=${RUNS:-3}
chain_dir=$COINOP_BCOIN_DIR/regtest-chain-$blocks
key=coinop-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cd "$root"
cargo build --quiet --release -p coinop-bitcoin-net --example header_sync
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples/header_sync

bcoin_pid=
stop_bcoin() {
  if [ -n "$bcoin_pid" ]; then
    kill "$bcoin_pid" 2>/dev/null || true
    wait "$bcoin_pid" 2>/dev/null || true
    bcoin_pid=
  fi
}
trap stop_bcoin EXIT
# start_bcoin ARGS...: starts bcoin on fresh loopback ports ($p2p, $rpc) and waits for READY.
start_bcoin() {
  p2p=$(free_port); rpc=$(free_port)
  coproc BCOIN { NODE_PATH=$COINOP_BCOIN_DIR/node_modules NODE_BACKEND=js exec node \
    "$root/scripts/lib/bcoin-regtest.js" --p2p-port "$p2p" --rpc-port "$rpc" --api-key "$key" "$@"; }
  bcoin_pid=$BCOIN_PID
  local ready
  read -r ready <&"${BCOIN[0]}" || true
  case "$ready" in READY*) ;; *) echo "bcoin did not start: $ready" >&2; exit 1;; esac
}
rpc_call() { curl -sf -u "x:$key" -d "$1" "http://127.0.0.1:$rpc/"; }
# rpc_result METHOD PARAMS: the call's result; fails, printing bcoin's error, if it has one
# (bcoin answers some failures with HTTP 200 and an `error` member).
rpc_result() {
  rpc_call "{\"method\":\"$1\",\"params\":$2}" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if r.get("error"):
    sys.exit("bcoin rpc: %s" % r["error"])
print(json.dumps(r["result"]))'
}

if [ ! -e "$chain_dir/.complete" ]; then
  rm -rf "$chain_dir"; mkdir -p "$chain_dir"
  start_bcoin --prefix "$chain_dir"
  # Any regtest address will do as the coinbase payee; bcoin spells it (rb1...).
  addr=$(NODE_PATH=$COINOP_BCOIN_DIR/node_modules NODE_BACKEND=js node -e \
    "console.log(require('bcoin').Address.fromWitnessPubkeyhash(Buffer.alloc(20, 1)).toString('regtest'))")
  start=$(date +%s.%N)
  # Counted from the node's own height, not from what was asked for.
  have=$(rpc_result getblockcount '[]')
  while [ "$have" -lt "$blocks" ]; do
    n=$(( blocks - have > 1000 ? 1000 : blocks - have ))
    rpc_result generatetoaddress "[$n,\"$addr\"]" >/dev/null
    have=$(rpc_result getblockcount '[]')
  done
  end=$(date +%s.%N)
  echo "bcoin generated $blocks regtest blocks in $(python3 -c "print(round($end-$start,1))") s (cached in $chain_dir)"
  stop_bcoin
  touch "$chain_dir/.complete"
fi

start_bcoin --memory-from "$chain_dir"
height=$(rpc_result getblockcount '[]')
[ "$height" -ge "$blocks" ] || { echo "bcoin serves height $height, expected $blocks" >&2; exit 1; }
echo "load: $(uptime | sed 's/.*load average/load average/') on $(nproc) cores"
for i in $(seq "$runs"); do
  printf 'run %s: ' "$i"
  "$bin" "127.0.0.1:$p2p" "$height" regtest
done
