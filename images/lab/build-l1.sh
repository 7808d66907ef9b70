#!/usr/bin/env bash
# Builds the lab's L1: Debian's cloud kernel (vmlinuz) and an uncompressed initramfs holding
# busybox, the kernel's kvm + kvm-amd modules (and their dependencies, per modinfo),
# coinop-vmm, QEMU (for the microvm comparison), the boot timer helper, and the L2 kernel
# and initramfs. With L2_ROOTFS also images/rootfs and its SSH client; with LAB_COINOPD and
# LAB_COINOP (release binaries) also coinopd and its CLI, with nft, iproute2's ip, ldd and
# the netfilter modules coinopd's guest networking needs (the l1-coinopd step).
#
#   images/lab/build-l1.sh OUTDIR L2_KERNEL_DIR L2_INITRAMFS COINOP_VMM
#
# Writes OUTDIR/vmlinuz and OUTDIR/initramfs.cpio. The cloud kernel package is downloaded
# (apt-get download, not installed) once into $COINOP_CACHE/lab (default /var/cache/coinop).
# The initramfs is uncompressed on purpose: L1 runs under TCG, where gunzip is slow.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${COINOP_CACHE:-/var/cache/coinop}
[ $# = 4 ] || { echo "usage: $0 OUTDIR L2_KERNEL_DIR L2_INITRAMFS COINOP_VMM" >&2; exit 2; }
outdir=$1 l2_kernel_dir=$2 l2_initramfs=$3 vmm=$4

say() { printf '==> lab: %s\n' "$*" >&2; }
die() { printf 'error: lab: %s\n' "$*" >&2; exit 1; }

# Prints the directory holding the extracted linux-image-*-cloud-amd64 package.
fetch_cloud_kernel() {
  local pkg version dir tmp
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt-get update?)"
  version=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
  dir=$cache_root/lab/$pkg-$version
  if [ ! -d "$dir/boot" ]; then
    say "downloading $pkg $version (extracted, not installed)"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt-get download fetches as the _apt user
    (cd "$tmp" && apt-get download -q "$pkg=$version" >&2)
    mkdir -p "$dir.tmp"
    dpkg-deb -x "$tmp"/*.deb "$dir.tmp"
    rm -rf "$tmp" "$dir"
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# Prints the modules kvm-amd needs, dependencies first, one path a line.
module_load_order() {
  local moddir=$1 name=$2 path dep
  path=$(find "$moddir" -name "$name.ko*" | head -n1)
  [ -n "$path" ] || die "module $name not found under $moddir"
  for dep in $(modinfo -F depends "$path" | tr ',' ' '); do
    module_load_order "$moddir" "$dep"
  done
  echo "$path"
}

# Copies a dynamically linked program and every library it loads into the root; a library
# the host's loader cannot find is an error, not a skip.
copy_with_libs() {
  local root=$1 prog=$2 lib missing
  mkdir -p "$root$(dirname "$prog")"
  cp -L "$prog" "$root$prog"
  missing=$(ldd "$prog" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' ')
  [ -z "$missing" ] || die "$prog needs libraries this host lacks: $missing"
  for lib in $(ldd "$prog" 2>/dev/null | grep -o '/[^ ]*'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# coinopd and coinop in /usr/bin; nft, iproute2's ip and conntrack in /usr/sbin (busybox's
# ip in /bin stays first on L1's PATH, coinopd's PATH puts /usr/sbin first); ldd (coinopd
# runs it on the VMM at start-up) with the bash it is written in; the /etc files nft and ip
# read.
add_coinopd() {
  local root=$1 p f
  [ -n "${LAB_COINOP:-}" ] || die "LAB_COINOPD without LAB_COINOP"
  for p in "$LAB_COINOPD" "$LAB_COINOP"; do
    p=$(readlink -f "$p")
    [ -x "$p" ] || die "$p missing"
    copy_with_libs "$root" "$p"
    [ "$p" = "/usr/bin/$(basename "$p")" ] || mv "$root$p" "$root/usr/bin/$(basename "$p")"
  done
  mkdir -p "$root/usr/sbin"
  for p in nft ip conntrack; do
    f=$(command -v "$p") || die "$p missing on the build host (nftables, iproute2, conntrack)"
    f=$(readlink -f "$f")
    copy_with_libs "$root" "$f"
    [ "$f" = "/usr/sbin/$p" ] || mv "$root$f" "$root/usr/sbin/$p"
  done
  copy_with_libs "$root" "$(readlink -f "$(command -v bash)")"
  rm -f "$root/bin/bash"  # busybox may offer a bash applet: ldd needs the real one
  cp -L "$(command -v bash)" "$root/bin/bash"
  cp -L "$(command -v ldd)" "$root/usr/bin/ldd"
  mkdir -p "$root/etc"
  for f in /etc/protocols /etc/services /etc/iproute2; do
    [ -e "$f" ] && cp -a "$f" "$root/etc/"
  done
  say "L1 coinopd: $(basename "$LAB_COINOPD"), $(basename "$LAB_COINOP"), nft, ip, conntrack, ldd"
}

main() {
  local kdir root moddir m
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (scripts/lab.sh installs it)"
  kdir=$(fetch_cloud_kernel)
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$outdir" "$root"/{bin,dev,proc,sys,tmp,l2,lib/modules/lab,usr/bin,usr/share/qemu}
  cp "$kdir"/boot/vmlinuz-* "$outdir/vmlinuz"

  moddir=$(echo "$kdir"/lib/modules/*)
  : >"$root/lib/modules/lab/order"
  local name
  local extra_modules=tun
  # coinopd's ip coinop table: nat chains, dnat, masquerade, fib, ct state, ct count;
  # ctnetlink, which conntrack deletes a stopped lease's tracked connections through; and
  # the ip6 coinop table's reject (IPv6 connections to the forwarded ports are reset).
  [ -n "${LAB_COINOPD:-}" ] && extra_modules="$extra_modules nf_tables nft_chain_nat nft_nat nft_masq nft_fib_ipv4 nft_ct nft_connlimit nf_conntrack_netlink nft_reject_ipv6"
  for m in $( { module_load_order "$moddir" kvm-amd; for m in $extra_modules; do module_load_order "$moddir" "$m"; done; } |
    awk '!seen[$0]++'); do
    name=$(basename "$m")
    name=${name%.xz}
    name=${name%.zst}
    # busybox insmod reads plain ELF only.
    case "$m" in
      *.xz) xz -dc "$m" >"$root/lib/modules/lab/$name" ;;
      *.zst) zstd -qdc "$m" >"$root/lib/modules/lab/$name" ;;
      *) cp "$m" "$root/lib/modules/lab/$name" ;;
    esac
    echo "$name" >>"$root/lib/modules/lab/order"
  done
  say "L1 modules: $(tr '\n' ' ' <"$root/lib/modules/lab/order")"

  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  ln -s bin "$root/sbin"
  install -m 0755 "$here/l1-init" "$root/init"
  install -m 0644 "$here/l1-virtio" "$root/lib/l1-virtio"
  install -m 0644 "$here/l1-coinopd" "$root/lib/l1-coinopd"
  install -m 0644 "$here/l1-restore" "$root/lib/l1-restore"
  install -m 0644 "$here/l1-stress" "$root/lib/l1-stress"
  gcc -static -O2 -Wall -Wextra -Werror -o "$root/bin/boottime" "$here/boottime.c"
  gcc -static -O2 -Wall -Wextra -Werror -o "$root/bin/vmmctl" "$here/vmmctl.c"
  copy_with_libs "$root" "$(readlink -f "$vmm")"
  [ "$(readlink -f "$vmm")" = /usr/bin/coinop-vmm ] || mv "$root$(readlink -f "$vmm")" "$root/usr/bin/coinop-vmm"
  copy_with_libs "$root" "$(command -v qemu-system-x86_64)"
  [ -e "$root/usr/bin/qemu-system-x86_64" ] || ln -s "$(command -v qemu-system-x86_64)" "$root/usr/bin/qemu-system-x86_64"
  for f in bios-microvm.bin qboot.rom pvh.bin linuxboot_dma.bin linuxboot.bin; do
    cp -L "/usr/share/qemu/$f" "$root/usr/share/qemu/"
  done
  cp "$l2_kernel_dir/bzImage" "$l2_kernel_dir/vmlinux" "$root/l2/"
  cp "$l2_initramfs" "$root/l2/initramfs.cpio.gz"
  cp "$outdir/vmlinuz" "$root/l2/debian-vmlinuz"
  # Optional: images/rootfs (root disk with dropbear) and its SSH client, for the virtio step.
  if [ -n "${L2_ROOTFS:-}" ]; then
    cp "$L2_ROOTFS" "$root/l2/rootfs.ext4"
    cp -a "$(dirname "$L2_ROOTFS")/client/." "$root/"
  fi
  [ -n "${LAB_COINOPD:-}" ] && add_coinopd "$root"
  mknod -m 600 "$root/dev/console" c 5 1
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$outdir/initramfs.cpio"
  say "L1 initramfs: $outdir/initramfs.cpio ($(du -h "$outdir/initramfs.cpio" | cut -f1))"
}

main
