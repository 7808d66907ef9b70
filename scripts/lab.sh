#!/usr/bin/env bash
# The Linux lab: proves coinop-vmm boots real Linux on hardware-style KVM.
#
# The host /dev/kvm can't run Linux (see "Host reality" in the architecture doc), so the
# lab goes one level down: QEMU TCG (-cpu max -M q35) gives an L1 with svm+npt; L1 runs
# Debian's cloud kernel with kvm_amd, and inside it coinop-vmm boots the L2 guest (our
# kernel + initramfs) as bzImage and PVH vmlinux with 1 and 2 vCPUs, then times it against
# QEMU microvm. Exits non-zero if any L2 boot fails, printing that boot's console.
#
#   scripts/lab.sh            LAB_RUNS=N for the side-by-side runs (default 10)
#                             LAB_TIMEOUT=S hard limit on the L1 run (default 1800)
#                             LAB_VERBOSE=1 also logs one L2 boot's full kernel console
#                             LAB_ONLY=virtio runs only the virtio step (disks, NIC)
#                             LAB_ROOTFS=1 adds images/rootfs and the SSH login check
set -euo pipefail
# The whole script is one brace group, read before it runs: editing this file while a lab
# is running (a 10-minute job) cannot derail that run.
{
source "$(dirname "$0")/lib/setup.sh"
cd "$COINOP_ROOT"

runs=${LAB_RUNS:-10}
limit=${LAB_TIMEOUT:-1800}
cache_root=${COINOP_CACHE:-/var/cache/coinop}
# --target keeps the static build apart from the workspace's normal artefacts.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$COINOP_ROOT/target}
t0=$SECONDS

coinop_setup
# qemu-system-x86 replaces a newer qemu-utils with Debian's 7.2: accepted for the lab.
coinop_install_packages qemu-system-x86 busybox-static cpio kmod xz-utils

say "L2 guest kernel (images/linux/build.sh; cached)"
l2_kernel_dir=$(images/linux/build.sh)
say "L2 initramfs (images/initramfs/build.sh; cached)"
l2_initramfs=$(images/initramfs/build.sh)

if [ "${LAB_ROOTFS:-0}" = 1 ]; then
  say "L2 root filesystem with dropbear (images/rootfs/build.sh; cached)"
  export L2_ROOTFS=$(images/rootfs/build.sh)
fi

say "coinop-vmm, release, statically linked"
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target "$target" \
  -p vmm --bin coinop-vmm
vmm=$CARGO_TARGET_DIR/$target/release/coinop-vmm

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "L1 kernel and initramfs"
images/lab/build-l1.sh "$work" "$l2_kernel_dir" "$l2_initramfs" "$vmm"

say "booting L1 under QEMU TCG (limit ${limit} s; each L2 result prints as it comes)"
# One log per run (two labs may run at once on a shared machine); last-run.log points at it.
mkdir -p "$cache_root/lab/runs"
log=$cache_root/lab/runs/$(date +%Y%m%d-%H%M%S)-$$.log
ln -sfn "$log" "$cache_root/lab/last-run.log"
set +e
timeout --kill-after=10 "$limit" qemu-system-x86_64 -accel tcg -cpu max -M q35 -m 2G -smp 2 \
  -nographic -no-reboot -kernel "$work/vmlinuz" -initrd "$work/initramfs.cpio" \
  -append "console=ttyS0 quiet panic=-1 lab.runs=$runs lab.verbose=${LAB_VERBOSE:-0} ${LAB_ONLY:+lab.only=$LAB_ONLY}" </dev/null 2>&1 |
  sed -u 's/\r$//' | tee "$log" | grep --line-buffered '^LAB '
qemu_rc=${PIPESTATUS[0]}
set -e

say "L1 run log: $log"
if ! grep -q '^LAB RESULT: PASS' "$log"; then
  if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    say "L1 did not finish within ${limit} s"
  fi
  if grep -q '^----- L2 console' "$log"; then
    say "consoles of the failed L2 boots:"
    sed -n '/^----- L2 console/,/^----- end/p' "$log" >&2
  else
    say "no L2 result; the last lines of L1's console:"
    tail -n 60 "$log" >&2
  fi
  die "lab FAILED after $((SECONDS - t0)) s"
fi
say "lab passed in $((SECONDS - t0)) s"
exit 0
}
