# Shared set-up for coinop's scripts: sourced, never run. Idempotent: a second run only checks.
# Installs what a fresh Debian/Ubuntu x86_64 host needs, builds the workspace and the test
# guest, and says plainly what is missing when it can't fix it itself.

COINOP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export COINOP_ROOT
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages the build and the test guest need (gcc/binutils/make build the guest).
COINOP_APT_PACKAGES=(gcc binutils make libc6-dev curl ca-certificates python3
  # coinopd's guest networking (taps, routes, NAT, port forwards) and its tests; conntrack
  # deletes a stopped lease's tracked connections, and the tests read the table with it.
  iproute2 nftables conntrack)
# QEMU is the benchmark peer and runs the nested Linux lab.
COINOP_TEST_PACKAGES=(qemu-system-x86)

coinop_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root for: $* (run as root or install sudo)"
  fi
}

coinop_install_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
  say "installing ${missing[*]}"
  coinop_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  coinop_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

coinop_check_rust() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.85 (https://rustup.rs), then rerun"
  local v
  v=$(rustc --version | awk '{print $2}')
  case "$v" in
    1.[0-7][0-9].*|1.8[0-4].*) die "rustc $v is too old: coinop needs >= 1.85 (rustup update)";;
  esac
}

# Prints why /dev/kvm can't be used, or nothing when it can.
coinop_kvm_problem() {
  [ -e /dev/kvm ] || { echo "/dev/kvm does not exist (no KVM on this host)"; return; }
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || echo "/dev/kvm is not readable and writable by $(id -un)"
}

# Release binaries. coinop-vmm is linked statically: it starts faster without the dynamic
# loader and needs no libraries inside a jail. The explicit --target keeps the static flag
# off build scripts and proc-macros, which must stay dynamic. It aborts on panic (the
# workspace profile unwinds, for coinopd): no unwinding tables, 0.1 MiB less peak RSS.
COINOP_TARGET=x86_64-unknown-linux-gnu
COINOP_BIN=${CARGO_TARGET_DIR:-$COINOP_ROOT/target}/release
COINOP_VMM=${CARGO_TARGET_DIR:-$COINOP_ROOT/target}/$COINOP_TARGET/release/coinop-vmm
coinop_build_release() {
  cargo build --quiet --release -p coinopd -p coinop-cli -p coinop-bench
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C panic=abort" \
    cargo build --quiet --release --target "$COINOP_TARGET" -p vmm --bin coinop-vmm
}

# The filesystem's free GiB at $1, or at its nearest existing parent.
coinop_free_gib() {
  local dir=$1
  while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
  df -P -k "$dir" | awk 'NR == 2 { print int($4 / 1048576) }'
}

# coinop_make_room GIB: at least GIB GiB free where cargo builds, or a loud warning. A
# checkout's target/ only grows: every change leaves its old artefacts and incremental
# sessions behind and cargo never collects them, so a machine that builds one checkout
# change after change ends up out of disk in the middle of a link ("No space left on
# device", seen in CI). Short of room, this removes what costs least to build again, in
# order, until there is enough: the incremental caches, the debug profile's artefacts,
# then the rest of target/. All of it is this checkout's build output (or
# $CARGO_TARGET_DIR's), which cargo rebuilds as needed.
coinop_make_room() {
  local need=$1 target=${CARGO_TARGET_DIR:-$COINOP_ROOT/target} free step what
  free=$(coinop_free_gib "$target")
  # No reading (df failed): nothing is removed on a guess.
  case $free in ''|*[!0-9]*) return 0;; esac
  for step in incremental debug all; do
    [ "$free" -ge "$need" ] && return 0
    [ -d "$target" ] || break
    case $step in
      incremental) what="incremental caches";;
      debug) what="debug artefacts";;
      all) what="artefacts, all of them";;
    esac
    say "only $free GiB free for $target (the build needs ~$need GiB): removing its $what"
    case $step in
      incremental) rm -rf --one-file-system "$target"/debug/incremental "$target"/*/debug/incremental;;
      debug) cargo clean --quiet --profile dev;;
      all) cargo clean --quiet;;
    esac
    free=$(coinop_free_gib "$target")
  done
  [ "$free" -ge "$need" ] ||
    say "WARNING: only $free GiB free for $target, and the build needs ~$need GiB: it may fail with 'No space left on device'"
}

coinop_setup() {
  coinop_install_packages "${COINOP_APT_PACKAGES[@]}"
  coinop_check_rust
}
