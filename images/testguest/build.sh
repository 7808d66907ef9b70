#!/bin/sh
# Builds the coinop test guest into OUTDIR: testguest.elf (Linux 64-bit boot protocol entry)
# and testguest-pvh.elf (same code plus the PVH note and its 32-bit entry).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
SRC=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-gcc}
LD=${LD:-ld}
mkdir -p "$OUT/obj"

# KVM's instruction emulator runs this guest here: general registers only, no CET
# (endbr64), no string instructions for copies, no red zone. Low addresses (BDA at 0x400)
# are real memory, hence no null-pointer assumptions.
CFLAGS="-std=gnu11 -O2 -m64 -march=x86-64 -mtune=generic -mgeneral-regs-only -mno-red-zone
 -ffreestanding -fno-builtin -fno-pic -fno-pie -nostdlib -fno-stack-protector
 -fcf-protection=none -fno-asynchronous-unwind-tables -fno-unwind-tables
 -fno-tree-loop-distribute-patterns -mstringop-strategy=loop -mcmodel=small
 -fno-delete-null-pointer-checks --param=min-pagesize=0
 -Wall -Wextra -Werror"
ASFLAGS="-m64 -fno-pic -fno-pie -Wa,--fatal-warnings"
LDFLAGS="-nostdlib -static --no-dynamic-linker -z noexecstack -z max-page-size=0x1000
 --build-id=none -T $SRC/link.ld"

COMMON=""
for c in main serial cmdline tsc mptable smp power personalise; do
    # shellcheck disable=SC2086 # flag lists are meant to split
    $CC $CFLAGS -c "$SRC/$c.c" -o "$OUT/obj/$c.o"
    COMMON="$COMMON $OUT/obj/$c.o"
done
for s in entry64 trampoline pvh; do
    # shellcheck disable=SC2086
    $CC $ASFLAGS -I"$SRC" -c "$SRC/$s.S" -o "$OUT/obj/$s.o"
done
COMMON="$COMMON $OUT/obj/entry64.o $OUT/obj/trampoline.o"

# shellcheck disable=SC2086
$LD $LDFLAGS -o "$OUT/testguest.elf.tmp" $COMMON
# shellcheck disable=SC2086
$LD $LDFLAGS -o "$OUT/testguest-pvh.elf.tmp" $COMMON "$OUT/obj/pvh.o"
mv "$OUT/testguest.elf.tmp" "$OUT/testguest.elf"
mv "$OUT/testguest-pvh.elf.tmp" "$OUT/testguest-pvh.elf"
