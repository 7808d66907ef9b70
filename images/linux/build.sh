#!/usr/bin/env bash
# Builds coinop's guest kernel (vmlinux with a PVH entry, and bzImage) from Debian's
# linux-source-6.1 with guest.config applied on top of tinyconfig.
#
#   images/linux/build.sh [OUTDIR]
#
# The artefacts are cached under $COINOP_CACHE/linux/<key> (default /var/cache/coinop),
# keyed by the hash of (linux-source package version, guest.config, this script): a second
# run is a no-op. With OUTDIR, bzImage, vmlinux and config are also copied there.
# Progress goes to stderr; the only line on stdout is the directory holding the artefacts.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/guest.config
cache_root=${COINOP_CACHE:-/var/cache/coinop}
outdir=${1:-}
src_pkg=linux-source-6.1
build_deps=(build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 kmod)

say() { printf '==> linux: %s\n' "$*" >&2; }
die() { printf 'error: linux: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root for: $*"
  fi
}

install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

copy_out() {
  local dir=$1
  if [ -n "$outdir" ]; then
    mkdir -p "$outdir"
    cp "$dir/bzImage" "$dir/vmlinux" "$dir/config" "$outdir/"
    say "copied to $outdir"
  fi
  say "bzImage: $dir/bzImage ($(du -h "$dir/bzImage" | cut -f1))"
  say "vmlinux: $dir/vmlinux ($(du -h "$dir/vmlinux" | cut -f1), PVH entry)"
  echo "$dir"
}

# Every option the fragment sets must have survived into .config with the same value.
verify_config() {
  local config=$1 bad=0 line sym
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        grep -qxF "$line" "$config" || { say "MISSING: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo 'absent')"; bad=1; } ;;
      "# CONFIG_"*" is not set")
        sym=${line#\# }; sym=${sym%% *}
        if grep -q "^$sym=" "$config"; then say "MISSING: wanted $line, got: $(grep "^$sym=" "$config")"; bad=1; fi ;;
    esac
  done < "$fragment"
  [ $bad = 0 ] || die "the kernel config lacks options guest.config asks for (unmet dependencies?)"
}

# Prints "N objects compiled" every 20 s while make runs, so a 7-minute build isn't silent.
show_progress() {
  local log=$1
  while sleep 20; do
    say "building: $(grep -c -E '^  (CC|AS|LD|AR)' "$log" 2>/dev/null || echo 0) steps done, last: $(tail -n1 "$log" 2>/dev/null | cut -c1-70)"
  done
}

build() {
  local dir=$1 work=$dir.build log
  rm -rf "$work"
  mkdir -p "$work"
  log=$work/build.log
  say "extracting /usr/src/$src_pkg.tar.xz"
  tar -C "$work" -xJf "/usr/src/$src_pkg.tar.xz"
  local tree=$work/$src_pkg
  say "configuring: tinyconfig + $fragment"
  make -C "$tree" -s ARCH=x86_64 tinyconfig >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "make tinyconfig failed"; }
  (cd "$tree" && ./scripts/kconfig/merge_config.sh -m .config "$fragment") >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "merge_config.sh failed"; }
  make -C "$tree" -s ARCH=x86_64 olddefconfig >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "make olddefconfig failed"; }
  verify_config "$tree/.config"
  say "compiling with make -j$(nproc) at nice 19 (about 7 minutes on 2 cores; log: $log)"
  show_progress "$log" &
  local progress=$!
  local rc=0
  nice -n 19 make -C "$tree" ARCH=x86_64 -j"$(nproc)" vmlinux bzImage >>"$log" 2>&1 || rc=$?
  kill "$progress" 2>/dev/null || true
  wait "$progress" 2>/dev/null || true
  [ $rc = 0 ] || { tail -n 40 "$log" >&2; die "kernel build failed (log: $log)"; }
  command -v readelf >/dev/null && { readelf -n "$tree/vmlinux" | grep -q 'Xen' || die "vmlinux has no PVH (Xen) ELF note"; }
  mkdir -p "$dir.tmp"
  cp "$tree/vmlinux" "$tree/arch/x86/boot/bzImage" "$dir.tmp/"
  cp "$tree/.config" "$dir.tmp/config"
  mv "$dir.tmp" "$dir"
  rm -rf "$work"
}

main() {
  install_packages "$src_pkg" "${build_deps[@]}"
  local version key dir
  version=$(dpkg-query -W -f='${Version}' "$src_pkg")
  key=$( { echo "$src_pkg $version"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
  dir=$cache_root/linux/$key
  if [ -f "$dir/bzImage" ] && [ -f "$dir/vmlinux" ]; then
    say "cache hit ($src_pkg $version, key $key)"
    copy_out "$dir"
    return
  fi
  mkdir -p "$cache_root/linux"
  # One build per key at a time: CI and a developer on the same machine share the cache.
  exec 9>"$dir.lock"
  flock 9
  if [ ! -f "$dir/bzImage" ]; then
    say "cache miss: building $src_pkg $version (key $key)"
    local t0=$SECONDS
    build "$dir"
    say "built in $((SECONDS - t0)) s"
  fi
  copy_out "$dir"
}

main
