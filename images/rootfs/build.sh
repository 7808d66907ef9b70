#!/usr/bin/env bash
# Builds coinop's root filesystem image: busybox-static plus dropbear (SSH server, built
# statically from Debian's source by ./dropbear.sh), an init that runs the guest agent of
# PERSONALISE.md (coinop-agent, ./agent.c and the parts ./agent.h lists: dropbear started
# before the snapshot point, then the lease's entropy, clock, host name, SSH key, SSH host
# key and address from the personalisation port, then guest_ready) or takes the lease's
# data from the kernel command line (see ./init), and ../initramfs/outb.c for the boot
# timer signal of that mode. ext4, 64 MiB, made with mke2fs -d (no loop mount, no root
# needed for that).
#
#   images/rootfs/build.sh [OUTFILE]
#
# Cached under $COINOP_CACHE/rootfs/<key>, keyed by (the busybox-static version, the
# dropbear build (./dropbear.sh: Debian's source, static), init, outb.c, raw_syscall.h, the
# agent's sources, tcp_ts_offset.c, this script). Prints the image path; also writes
# dbclient (the matching SSH client) and dropbearkey under <key>/client/ for the lab.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${COINOP_CACHE:-/var/cache/coinop}
out=${1:-}
say() { printf '==> rootfs: %s\n' "$*" >&2; }
die() { printf 'error: rootfs: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages)"
command -v mke2fs >/dev/null || die "mke2fs missing (e2fsprogs)"
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
}
bb_version=$(dpkg-query -W -f='${Version}' busybox-static)
# Dropbear built from Debian's source, static (./dropbear.sh says why; cached).
dropbear_dir=$("$here/dropbear.sh")
outb_src=$here/../initramfs/outb.c
# The guest agent: every source it is built from (agent.h lists the parts).
agent_srcs=("$here/agent.c" "$here/portline.c" "$here/line.c" "$here/personalise.c" "$here/host_key.c")
agent_headers=("$here/agent.h" "$here/../initramfs/raw_syscall.h")
ts_offset_src=$here/tcp_ts_offset.c
key=$( { echo "$bb_version ${dropbear_dir##*/}"; cat "$here/init" "$outb_src" "${agent_srcs[@]}" "${agent_headers[@]}" "$ts_offset_src" "$0"; } |
  sha256sum | cut -c1-16)
dir=$cache_root/rootfs/$key
image=$dir/rootfs.ext4

if [ -f "$image" ]; then
  say "cache hit (key $key)"
else
  say "building (busybox-static $bb_version, dropbear ${dropbear_dir##*/}, key $key)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  root=$tmp/root
  mkdir -p "$root"/{bin,dev,etc,proc,sys,run,tmp,root,usr/bin,usr/sbin}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  ln -s bin "$root/sbin"
  install -m 0755 "$dropbear_dir/usr/sbin/dropbear" "$root/usr/sbin/dropbear"
  install -m 0755 "$dropbear_dir/usr/bin/dropbearkey" "$root/usr/bin/dropbearkey"
  install -m 0755 "$here/init" "$root/sbin/coinop-init"
  # The boot timer signal (see ../initramfs/outb.c): coinopd counts a lease as booted on it.
  gcc -static -nostdlib -s -O2 -fno-stack-protector -fno-pie -no-pie -Wall -Wextra -Werror \
    -o "$root/bin/outb" "$outb_src"
  # The guest agent, one process: freestanding like outb (-ffreestanding: no strlen or
  # memset calls emitted).
  gcc -static -nostdlib -ffreestanding -s -O2 -fno-stack-protector -fno-pie -no-pie -Wall -Wextra -Werror \
    -o "$root/bin/coinop-agent" "${agent_srcs[@]}"
  # What a guest can check of its own uniqueness: the TCP timestamp offset of one fixed
  # loopback connection, keyed by the kernel's one-time network secret (./tcp_ts_offset.c;
  # the lab compares two restored leases'). Static, with the C library: nothing of it runs
  # on a lease's way to SSH.
  gcc -static -s -O2 -Wall -Wextra -Werror -o "$root/usr/bin/coinop-tcp-ts-offset" "$ts_offset_src"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  # '*': no password can log in, yet the account is not blank (dropbear refuses users with
  # an empty password field whatever the auth method) nor locked ('!'): keys only.
  echo 'root:*:0:0:99999:7:::' >"$root/etc/shadow"
  echo 'root:x:0:' >"$root/etc/group"
  echo /bin/sh >"$root/etc/shells"
  echo "coinop rootfs $key" >"$root/etc/coinop-rootfs"
  chmod 1777 "$root/tmp"
  rm -rf "$dir/client"
  mkdir -p "$dir/client/usr/bin"
  install -m 0755 "$dropbear_dir/usr/bin/dbclient" "$dropbear_dir/usr/bin/dropbearkey" "$dir/client/usr/bin/"
  # mke2fs says "Creating regular file" on stdout, which must carry only the image path.
  # Inode tables and journal zeroed here, once, and marked so: with the default lazy init
  # every guest's kernel (ext4lazyinit) zeroes ~3 MiB of inode tables after its read-write
  # remount, into its own overlay, on every boot: disk writes under a cold boot, and the
  # bulk of what a golden snapshot's overlay held for each restored lease to copy.
  mke2fs -q -t ext4 -d "$root" -E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0 \
    -L coinop-root "$image.tmp" 64M >&2
  lazy=$(dumpe2fs "$image.tmp" 2>/dev/null | grep '^Group [0-9]' | grep -vc ITABLE_ZEROED || true)
  [ "$lazy" = 0 ] || die "mke2fs left $lazy block groups' inode tables for the guest to zero"
  mv "$image.tmp" "$image"
fi
[ -n "$out" ] && cp "$image" "$out" && say "copied to $out"
say "image: $image ($(du -h "$image" | cut -f1) used)"
echo "$image"
