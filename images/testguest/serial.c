/* COM1 driver: every register access is a VM exit, so nothing beyond polling LSR. */
#include "serial.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

void serial_putc(u8 c)
{
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY))
        cpu_relax();
    outb(COM1, c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc((u8)*s++);
}

void serial_putdec(u64 v)
{
    char buf[21];
    int i = sizeof(buf) - 1;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    serial_puts(&buf[i]);
}

u8 serial_getc(void)
{
    while (!(inb(COM1_LSR) & LSR_DATA_READY))
        cpu_relax();
    return inb(COM1);
}
