#!/usr/bin/env bash
# Builds coinop's guest initramfs: busybox-static, the outb helper and /init, as a gzip'd
# newc cpio owned by root.
#
#   images/initramfs/build.sh [OUTFILE]
#
# Cached under $COINOP_CACHE/initramfs/<key> (default /var/cache/coinop), keyed by the hash
# of (busybox-static version, init, outb.c, raw_syscall.h, this script). With OUTFILE the image is also
# copied there. The only line on stdout is the path of the image.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${COINOP_CACHE:-/var/cache/coinop}
out=${1:-}

say() { printf '==> initramfs: %s\n' "$*" >&2; }
die() { printf 'error: initramfs: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and creates /dev/console in the image)"
for p in busybox-static cpio gzip gcc libc6-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ -n "${missing[*]:-}" ]; then
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(dpkg-query -W -f='${Version}' busybox-static)
key=$( { echo "busybox-static $version"; cat "$here/init" "$here/outb.c" "$here/raw_syscall.h" "$here/virtio-check" "$0"; } | sha256sum | cut -c1-16)
dir=$cache_root/initramfs/$key
image=$dir/initramfs.cpio.gz

if [ -f "$image" ]; then
  say "cache hit (key $key)"
else
  say "building (busybox-static $version, key $key)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  root=$tmp/root
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,root}
  cp /bin/busybox "$root/bin/busybox"
  # Every applet as a link, made here so the guest spends no boot time on `--install`.
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  ln -s bin "$root/sbin"
  gcc -static -nostdlib -s -O2 -fno-stack-protector -fno-pie -no-pie -Wall -Wextra -Werror \
    -o "$root/bin/outb" "$here/outb.c"
  install -m 0755 "$here/init" "$root/init"
  install -m 0755 "$here/virtio-check" "$root/bin/virtio-check"
  # The kernel opens /dev/console for init before /init can mount devtmpfs.
  mknod -m 600 "$root/dev/console" c 5 1
  mkdir -p "$dir"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9) > "$image.tmp"
  mv "$image.tmp" "$image"
fi
if [ -n "$out" ]; then
  cp "$image" "$out"
  say "copied to $out"
fi
say "image: $image ($(du -h "$image" | cut -f1))"
echo "$image"
