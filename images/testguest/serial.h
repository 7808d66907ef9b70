/* COM1 output and polled input (8250 at 0x3f8, no interrupts). */
#ifndef SERIAL_H
#define SERIAL_H
#include "io.h"
void serial_putc(u8 c);
void serial_puts(const char *s);
void serial_putdec(u64 v);
u8 serial_getc(void);
#endif
