/* mode=personalise[:<ms>]: after `<ms>` of quiet spinning, report whether COM2 (the
 * personalisation port, 0x2f8) already holds data, write 124 to the boot timer ("awaiting
 * personalisation"), read one line from COM2, print it on the console as
 * `personalised: <line>` in one go (a snapshot taken while waiting must not split it) and
 * whether COM2 still holds data, then write 123 (ready). The delay lets a test hand the VMM
 * its line before the 124. mode=personalise-stuck does the same but never writes 123: an
 * agent that takes its line and then hangs, which the host must not wait on for long.
 *
 * The line is read as images/rootfs/PERSONALISE.md allows: poll LSR until data is ready,
 * then `rep insb` a whole chunk of the data register, one VM exit for up to 1 KiB; the
 * VMM fills it with line bytes, then 0s (the line holds no 0), which are dropped.
 *
 * While it waits it also watches MSR's ring indicator (coinopd rings a guest restored ahead
 * of its lease: the VMM's `ring`) and says after the line whether it saw one, so tests can
 * tell which guests were rung.
 *
 * mode=personalise-doorbell is the same guest in doorbell mode, as the rootfs agent is: it
 * writes 0xdb to COM2's scratch register before its 124, so the line stays out of the FIFO
 * and only data-register reads take it (polled here, 1 KiB at a time), and it heeds a ring
 * (writes 0xda) as soon as MSR shows one. mode=personalise-doorbell-deaf never heeds its
 * ring but takes its line: to the host, a guest whose listener hangs. */
#include "personalise.h"
#include "serial.h"
#include "tsc.h"

#define COM2 0x2f8
#define COM2_LSR (COM2 + 5)
#define LSR_DATA_READY 0x01
#define COM2_MSR (COM2 + 6)
#define MSR_RING 0x40
#define COM2_SCR (COM2 + 7)
#define DOORBELL_ON 0xdb
#define DOORBELL_RING_SEEN 0xda
#define BOOT_TIMER_PORT 0x3f0
#define BOOT_TIMER_AWAITING 124
#define BOOT_TIMER_READY 123
/* The VMM refuses longer lines; anything past this would be dropped, not overflow. */
#define LINE_MAX 4096
/* KVM batches at most 1 KiB of a `rep insb` per exit, and never across a page: aligned to
 * its size, a chunk never crosses one. */
#define CHUNK 1024

static char line[LINE_MAX + 1];
static u8 chunk[CHUNK] __attribute__((aligned(CHUNK)));

void personalise(long delay_ms, int ready)
{
    if (delay_ms > 0)
        tsc_delay_us(tsc_khz(), (u64)delay_ms * 1000);
    serial_puts(inb(COM2_LSR) & LSR_DATA_READY ? "personalise: com2 had data before 124\n"
                                                : "personalise: com2 empty before 124\n");
    outb(BOOT_TIMER_PORT, BOOT_TIMER_AWAITING);
    int len = 0;
    int ended = 0;
    /* The line is the only input: anything behind its newline is a VMM bug. */
    int more = 0;
    int rung = 0;
    while (!ended) {
        while (!(inb(COM2_LSR) & LSR_DATA_READY)) {
            rung |= inb(COM2_MSR) & MSR_RING;
            cpu_relax();
        }
        insb(COM2, chunk, CHUNK);
        for (int i = 0; i < CHUNK; i++) {
            u8 c = chunk[i];
            if (ended) {
                more |= c != 0;
            } else if (c == '\n') {
                ended = 1;
            } else if (c != 0 && len < LINE_MAX) {
                line[len++] = (char)c;
            }
        }
    }
    line[len] = 0;
    more |= inb(COM2_LSR) & LSR_DATA_READY;
    serial_puts("personalised: ");
    serial_puts(line);
    serial_puts(more ? "\npersonalise: com2 had data after the line\n"
                     : "\npersonalise: com2 empty after the line\n");
    serial_puts(rung ? "personalise: rung before the line\n" : "personalise: not rung\n");
    if (ready)
        outb(BOOT_TIMER_PORT, BOOT_TIMER_READY);
}

void personalise_doorbell(int heed)
{
    outb(COM2_SCR, DOORBELL_ON);
    outb(BOOT_TIMER_PORT, BOOT_TIMER_AWAITING);
    int len = 0;
    int ended = 0;
    int rung = 0;
    int heeded = 0;
    while (!ended) {
        /* The data register reads 0 while nothing waits: no LSR in doorbell mode. */
        insb(COM2, chunk, CHUNK);
        int got = 0;
        for (int i = 0; i < CHUNK && !ended; i++) {
            u8 c = chunk[i];
            if (c == '\n') {
                ended = 1;
            } else if (c != 0) {
                got = 1;
                if (len < LINE_MAX)
                    line[len++] = (char)c;
            }
        }
        if (!got && !ended) {
            if (inb(COM2_MSR) & MSR_RING) {
                rung = 1;
                if (heed && !heeded) {
                    outb(COM2_SCR, DOORBELL_RING_SEEN);
                    heeded = 1;
                }
            }
            cpu_relax();
        }
    }
    line[len] = 0;
    serial_puts("personalised: ");
    serial_puts(line);
    serial_puts(!rung    ? "\npersonalise: not rung\n"
                : heeded ? "\npersonalise: rung before the line, heeded\n"
                         : "\npersonalise: rung before the line, not heeded\n");
    outb(BOOT_TIMER_PORT, BOOT_TIMER_READY);
}
