# shellcheck shell=bash
# Real Cashu wallets that nobody here wrote, for coinop's interop tests: installed
# idempotently into a cache directory keyed by the pinned versions, so a second run only
# checks. Sourced by scripts/test.sh; also run directly by a Rust test that finds a wallet
# missing (`bash scripts/lib/cashu_wallets.sh cashu-ts` installs it and prints its dir), so
# `cargo test` alone works too. Each wallet has its own function below.

COINOP_CASHU_CACHE=${COINOP_CASHU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/coinop/cashu-wallets}

# Installs `$2...` with `$1` (a command that fills the directory given as its last
# argument) into the cache dir `$dir` once: built in a temporary sibling, then renamed into
# place, so a half-finished install is never taken for a finished one and two installers
# racing both end up with one complete copy.
coinop_cashu_cache_install() {
  local dir=$1
  shift
  [ -f "$dir/.installed" ] && return 0
  mkdir -p "$COINOP_CASHU_CACHE" || return 1
  local tmp
  tmp=$(mktemp -d "$COINOP_CASHU_CACHE/.install.XXXXXX") || return 1
  if ! "$@" "$tmp"; then
    rm -rf "$tmp"
    return 1
  fi
  touch "$tmp/.installed"
  if ! mv -T "$tmp" "$dir" 2>/dev/null; then
    # Another installer finished first: its copy is as good as ours.
    rm -rf "$tmp"
    [ -f "$dir/.installed" ] || return 1
  fi
}

# --- cashu-ts (npm @cashu/cashu-ts), with undici for its requests over a Unix socket ------

COINOP_CASHU_TS_VERSION=4.13.0
COINOP_UNDICI_VERSION=7.30.3

coinop_cashu_ts_dir() {
  echo "$COINOP_CASHU_CACHE/cashu-ts-$COINOP_CASHU_TS_VERSION-undici-$COINOP_UNDICI_VERSION"
}

coinop_cashu_ts_npm_install() {
  local into=$1
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "cashu-ts needs node and npm (Debian: apt-get install nodejs npm)" >&2
    return 1
  fi
  printf '{"private": true, "type": "module"}\n' >"$into/package.json"
  # cashu-ts declares node >= 22.4 but runs on the node 20 Debian/NodeSource ship; the
  # interop test proves it does.
  npm install --prefix "$into" --no-audit --no-fund --loglevel=error --engine-strict=false \
    --save-exact "@cashu/cashu-ts@$COINOP_CASHU_TS_VERSION" "undici@$COINOP_UNDICI_VERSION" >&2
}

# Installs cashu-ts (once) and prints the directory whose node_modules holds it.
coinop_install_cashu_ts() {
  local dir
  dir=$(coinop_cashu_ts_dir)
  coinop_cashu_cache_install "$dir" coinop_cashu_ts_npm_install || return 1
  echo "$dir"
}

# --- nutshell (PyPI `cashu`, the Python reference wallet), in its own venv ----------------

# 0.19.2: the newest release whose dependencies all resolve from PyPI (0.20 and 0.21 pin
# breez-sdk-spark versions PyPI no longer serves). marshmallow 4 breaks the environs 9
# that nutshell's settings use.
COINOP_NUTSHELL_VERSION=0.19.2
COINOP_NUTSHELL_MARSHMALLOW='marshmallow<4'

coinop_nutshell_dir() {
  echo "$COINOP_CASHU_CACHE/nutshell-$COINOP_NUTSHELL_VERSION-marshmallow-lt4"
}

coinop_nutshell_pip_install() {
  local into=$1
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "nutshell needs python3 with venv (Debian: apt-get install python3-venv)" >&2
    return 1
  fi
  python3 -m venv "$into/venv" >&2 || return 1
  "$into/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "cashu==$COINOP_NUTSHELL_VERSION" "$COINOP_NUTSHELL_MARSHMALLOW" >&2 || return 1
  # The venv's own `cashu` script names the temporary dir in its #! line, and the install
  # is renamed into place after this: the CLI is started through the venv's python instead
  # (its pyvenv.cfg is found relative to it, so the venv survives the rename).
  mkdir -p "$into/bin"
  cat >"$into/bin/cashu" <<'SCRIPT'
#!/bin/sh
exec "$(dirname "$0")/../venv/bin/python" -c \
  'import sys; from cashu.wallet.cli.cli import cli; sys.argv[0] = "cashu"; sys.exit(cli())' "$@"
SCRIPT
  chmod +x "$into/bin/cashu"
}

# Installs nutshell (once) and prints the directory whose bin/cashu is its CLI.
coinop_install_nutshell() {
  local dir
  dir=$(coinop_nutshell_dir)
  coinop_cashu_cache_install "$dir" coinop_nutshell_pip_install || return 1
  echo "$dir"
}

# --- run directly: install the wallet named by $1 and print where it is ------------------

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    cashu-ts) coinop_install_cashu_ts ;;
    nutshell) coinop_install_nutshell ;;
    *)
      echo "usage: $0 cashu-ts|nutshell" >&2
      exit 2
      ;;
  esac
fi
