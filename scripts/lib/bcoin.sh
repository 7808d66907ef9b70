# bcoin, a Bitcoin full node written in JavaScript by people outside this project: the real
# peer the P2P header-sync and on-chain payment tests talk to (regtest, loopback only).
# Sourced, or run directly (prints the install dir). Idempotent and cached: the install is
# keyed by the pinned versions and the Node major, and a finished one is marked with .ok.
#
# bcoin 1.0.2's own `bdb` pulls a leveldown that no longer builds against current Node, so
# leveldown 6 (prebuilt N-API binaries, no compiler needed) replaces bdb's nested copy. With
# NODE_BACKEND=js bcoin uses its JavaScript crypto and skips its native add-ons.

COINOP_BCOIN_VERSION=1.0.2
COINOP_LEVELDOWN_VERSION=6.1.1

coinop_bcoin_dir() {
  local node_major key base
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 1
  key=$(printf 'bcoin@%s leveldown@%s node%s' "$COINOP_BCOIN_VERSION" "$COINOP_LEVELDOWN_VERSION" "$node_major" \
    | sha256sum | cut -c1-12)
  if [ -n "${COINOP_CACHE_DIR:-}" ]; then base=$COINOP_CACHE_DIR
  elif [ -w /var/cache ] || [ -w /var/cache/coinop ]; then base=/var/cache/coinop
  else base=${XDG_CACHE_HOME:-$HOME/.cache}/coinop
  fi
  printf '%s/bcoin-%s\n' "$base" "$key"
}

# Installs bcoin if needed; exports COINOP_BCOIN_DIR (holds node_modules/bcoin). Returns
# non-zero, saying why, if node/npm are missing or the install fails.
coinop_install_bcoin() {
  command -v node >/dev/null && command -v npm >/dev/null || {
    echo "bcoin: node and npm are needed (apt-get install nodejs npm)" >&2; return 1; }
  local dir
  dir=$(coinop_bcoin_dir) || return 1
  if [ ! -e "$dir/.ok" ]; then
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp" || return 1
    echo "bcoin: installing bcoin@$COINOP_BCOIN_VERSION into $dir" >&2
    (
      set -e
      cd "$tmp"
      printf '{"name":"coinop-bcoin","private":true}\n' >package.json
      npm install --silent --no-audit --no-fund --ignore-scripts "bcoin@$COINOP_BCOIN_VERSION" >&2
      npm install --silent --no-audit --no-fund --no-save --ignore-scripts "leveldown@$COINOP_LEVELDOWN_VERSION" >&2
      if [ -d node_modules/bdb/node_modules/leveldown ]; then
        rm -rf node_modules/bdb/node_modules/leveldown
        # A link, not a copy: Node resolves a module from its real path, so leveldown 6
        # finds its own abstract-leveldown rather than the old one nested beside bdb.
        ln -s ../../leveldown node_modules/bdb/node_modules/leveldown
      fi
      NODE_BACKEND=js node -e 'new (require("bdb/node_modules/leveldown"))("/nonexistent")' >&2
      touch .ok
    ) || { rm -rf "$tmp"; echo "bcoin: install failed" >&2; return 1; }
    # Another run may have finished first: keep whichever is complete.
    if [ -e "$dir/.ok" ]; then rm -rf "$tmp"; else rm -rf "$dir"; mv "$tmp" "$dir"; fi
  fi
  export COINOP_BCOIN_DIR=$dir
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  coinop_install_bcoin && printf '%s\n' "$COINOP_BCOIN_DIR"
fi
