/* The test guest's behaviour: announce readiness, then follow `mode=` from the command line. */
#include "cmdline.h"
#include "io.h"
#include "personalise.h"
#include "power.h"
#include "serial.h"
#include "smp.h"
#include "tsc.h"

#define BOOT_TIMER_PORT 0x3f0
#define BOOT_TIMER_READY 123

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static int starts_with(const char *s, const char *prefix)
{
    while (*prefix) {
        if (*s++ != *prefix++)
            return 0;
    }
    return 1;
}

/* Parses a decimal number; returns -1 unless the whole string is digits (max 9 of them). */
static long parse_ms(const char *s)
{
    long v = 0;
    int digits = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || ++digits > 9)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return digits ? v : -1;
}

static void spin(long ms)
{
    u64 khz = tsc_khz();
    if (!khz) {
        serial_puts("spin: no tsc frequency\n");
        return;
    }
    u64 ticks = khz * (u64)ms;
    u64 start = rdtsc();
    while (rdtsc() - start < ticks)
        ;
    serial_puts("spin done\n");
}

/* Prints `kib` KiB of numbered 64-byte lines, then `flood done`: a guest that fills its console. */
static void flood(long kib)
{
    /* 56 dots: "flood " + the number's digits + " " + (56 - digits) dots + "\n" is 64 bytes. */
    static const char dots[] = "........................................................";
    for (long line = 0; line < kib * 16; line++) {
        long digits = 1;
        for (long n = line; n >= 10; n /= 10)
            digits++;
        serial_puts("flood ");
        serial_putdec((u64)line);
        serial_puts(" ");
        serial_puts(dots + digits);
        serial_puts("\n");
    }
    serial_puts("flood done\n");
}

/* The first virtio-mmio device's window (coinop-vmm's layout: virtio_mmio.device=4K@0xd0000000
 * on the command line) and its Status register. */
#define VIRTIO_MMIO_FIRST 0xd0000000UL
#define VIRTIO_MMIO_STATUS 0x70
#define VIRTIO_STATUS_DRIVER_OK 4

/* mode=virtio-fail:<n>: `n` times, resets the first virtio device and sets DRIVER_OK with
 * nothing negotiated and no queue set up, which the device must refuse (a hostile driver
 * failing its device in a loop); then prints `virtio-fail done`. */
static void virtio_fail(long n)
{
    for (long i = 0; i < n; i++) {
        mmio_write32(VIRTIO_MMIO_FIRST + VIRTIO_MMIO_STATUS, 0);
        mmio_write32(VIRTIO_MMIO_FIRST + VIRTIO_MMIO_STATUS, VIRTIO_STATUS_DRIVER_OK);
    }
    serial_puts("virtio-fail done\n");
}

/* Reports where the TSC frequency came from: the VMM's CPUID leaf is part of its contract. */
static void report_tsc(void)
{
    serial_puts("tsc ");
    serial_putdec(tsc_khz());
    serial_puts(tsc_khz_from_cpuid() ? " khz from cpuid\n" : " khz from pit\n");
}

#define COUNT_PERIOD_MS 20

/* mode=count: prints `count N` every 20 ms (by the TSC), numbering from 0, so a guest
 * restored from a snapshot shows where it continued. With more than one CPU the APs keep
 * counting too and each line adds ` ap T` (their total, which only grows). A line of
 * console input is answered with `in <line>`; Ctrl-D (0x04) resets. */
static void count(void)
{
    int cpus = smp_run(1);
    u64 period = tsc_khz() * COUNT_PERIOD_MS;
    char line[64];
    int len = 0;
    u64 next = rdtsc();
    for (u64 n = 0;;) {
        if (rdtsc() - next < (1ull << 63)) {
            serial_puts("count ");
            serial_putdec(n++);
            if (cpus > 1) {
                serial_puts(" ap ");
                serial_putdec(smp_ap_ticks());
            }
            serial_putc('\n');
            next += period;
        }
        if (!(inb(0x3fd) & 0x01))
            continue;
        u8 c = inb(0x3f8);
        if (c == 0x04)
            return;
        if (c != '\n' && len < (int)sizeof(line) - 1) {
            line[len++] = (char)c;
            continue;
        }
        line[len] = 0;
        serial_puts("in ");
        serial_puts(line);
        serial_putc('\n');
        len = 0;
    }
}

static void echo(void)
{
    for (;;) {
        u8 c = serial_getc();
        if (c == 0x04)
            return;
        serial_putc(c);
    }
}

void guest_main(u64 cmdline_paddr)
{
    char mode[32];
    serial_puts("coinop-testguest ready\n");
    cmdline_value(cmdline_paddr, "mode=", mode, sizeof(mode));

    /* Personalisation comes before readiness: it writes 124, then 123 itself. */
    if (streq(mode, "personalise") ||
        (starts_with(mode, "personalise:") && parse_ms(mode + 12) >= 0)) {
        personalise(mode[11] == ':' ? parse_ms(mode + 12) : 0, 1);
        idle_forever();
    }
    if (streq(mode, "personalise-stuck")) {
        personalise(0, 0);
        idle_forever();
    }
    if (streq(mode, "personalise-doorbell") || streq(mode, "personalise-doorbell-deaf")) {
        personalise_doorbell(streq(mode, "personalise-doorbell"));
        idle_forever();
    }
    outb(BOOT_TIMER_PORT, BOOT_TIMER_READY);

    if (mode[0] == 0 || streq(mode, "halt")) {
        /* nothing to do */
    } else if (starts_with(mode, "spin:") && parse_ms(mode + 5) >= 0) {
        spin(parse_ms(mode + 5));
    } else if (starts_with(mode, "crash:") && parse_ms(mode + 6) >= 0) {
        spin(parse_ms(mode + 6));
        triple_fault();
    } else if (starts_with(mode, "flood:") && parse_ms(mode + 6) >= 0) {
        flood(parse_ms(mode + 6));
        idle_forever();
    } else if (starts_with(mode, "virtio-fail:") && parse_ms(mode + 12) >= 0) {
        virtio_fail(parse_ms(mode + 12));
    } else if (streq(mode, "tsc")) {
        report_tsc();
    } else if (streq(mode, "echo")) {
        echo();
    } else if (streq(mode, "idle")) {
        idle_forever();
    } else if (streq(mode, "cmdline")) {
        cmdline_print(cmdline_paddr);
        idle_forever();
    } else if (streq(mode, "smp")) {
        smp_run(0);
    } else if (streq(mode, "count")) {
        count();
    } else if (streq(mode, "fault")) {
        fault_with_idt(0, 0, 1);
    } else if (streq(mode, "fault-mmio-idt")) {
        /* 3 GiB: in the 32-bit MMIO gap, no RAM and no device behind it, so the CPU's
         * read of the #UD gate exits to KVM in the middle of delivering the exception. */
        fault_with_idt(0xc0000000, 0xfff, 1);
    } else if (streq(mode, "exec-mmio")) {
        /* Code fetched from the MMIO gap: nothing KVM can emulate. */
        serial_puts("exec-mmio: jumping to 3221225472\n");
        ((void (*)(void))0xc0000000UL)();
    } else {
        serial_puts("unknown mode\n");
    }
    reset();
}
