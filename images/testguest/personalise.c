/* mode=personalise[:<ms>]: after `<ms>` of quiet spinning, report whether COM2 (the
 * personalisation port, 0x2f8) already holds data, write 124 to the boot timer ("awaiting
 * personalisation"), read one line from COM2 by polling its LSR, print it on the console as
 * `personalised: <line>` in one go (a snapshot taken while waiting must not split it) and
 * whether COM2 still holds data, then write 123 (ready). The delay lets a test hand the VMM
 * its line before the 124. */
#include "personalise.h"
#include "serial.h"
#include "tsc.h"

#define COM2 0x2f8
#define COM2_LSR (COM2 + 5)
#define LSR_DATA_READY 0x01
#define BOOT_TIMER_PORT 0x3f0
#define BOOT_TIMER_AWAITING 124
#define BOOT_TIMER_READY 123
/* The VMM refuses longer lines; anything past this would be dropped, not overflow. */
#define LINE_MAX 4096

static char line[LINE_MAX + 1];

static u8 com2_getc(void)
{
    while (!(inb(COM2_LSR) & LSR_DATA_READY))
        cpu_relax();
    return inb(COM2);
}

void personalise(long delay_ms)
{
    if (delay_ms > 0)
        tsc_delay_us(tsc_khz(), (u64)delay_ms * 1000);
    serial_puts(inb(COM2_LSR) & LSR_DATA_READY ? "personalise: com2 had data before 124\n"
                                                : "personalise: com2 empty before 124\n");
    outb(BOOT_TIMER_PORT, BOOT_TIMER_AWAITING);
    int len = 0;
    for (;;) {
        u8 c = com2_getc();
        if (c == '\n')
            break;
        if (len < LINE_MAX)
            line[len++] = (char)c;
    }
    line[len] = 0;
    /* The line is the only input: anything behind its newline is a VMM bug. */
    int more = inb(COM2_LSR) & LSR_DATA_READY;
    serial_puts("personalised: ");
    serial_puts(line);
    serial_puts(more ? "\npersonalise: com2 had data after the line\n"
                     : "\npersonalise: com2 empty after the line\n");
    outb(BOOT_TIMER_PORT, BOOT_TIMER_READY);
}
