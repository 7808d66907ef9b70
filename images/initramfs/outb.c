/*
 * outb PORT VALUE: writes one byte to an x86 I/O port from userspace.
 *
 * /init uses it for the two signals coinop-vmm understands: 123 to port 0x3f0 (the boot
 * timer) and, as a last resort after reboot(2), 0xFE to port 0x64 (i8042 reset). Busybox has
 * no port-I/O applet and /dev/port needs CONFIG_DEVPORT (so PCI or ISA); ioperm(2) needs only
 * CONFIG_X86_IOPL_IOPERM. Freestanding (no libc) so it adds ~1 KiB to the initramfs.
 */

#define SYS_write 1
#define SYS_ioperm 173
#define SYS_exit 60

#include "raw_syscall.h"

static void fail(const char *msg)
{
	long len = 0;

	while (msg[len])
		len++;
	syscall3(SYS_write, 2, (long)msg, len);
	syscall3(SYS_exit, 1, 0, 0);
}

/* Decimal or 0x-prefixed hex; returns -1 on anything else or on a value above max. */
static long parse_number(const char *s, long max)
{
	long base = 10, value = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (!*s)
		return -1;
	for (; *s; s++) {
		long digit;

		if (*s >= '0' && *s <= '9')
			digit = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			digit = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			digit = *s - 'A' + 10;
		else
			return -1;
		value = value * base + digit;
		if (value > max)
			return -1;
	}
	return value;
}

__attribute__((used)) static void start(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	long port, value;

	if (argc != 3)
		fail("usage: outb PORT VALUE\n");
	port = parse_number(argv[1], 0xffff);
	value = parse_number(argv[2], 0xff);
	if (port < 0)
		fail("outb: PORT must be 0..0xffff\n");
	if (value < 0)
		fail("outb: VALUE must be 0..0xff\n");
	if (syscall3(SYS_ioperm, port, 1, 1) != 0)
		fail("outb: ioperm failed (root and CONFIG_X86_IOPL_IOPERM needed)\n");
	__asm__ volatile("outb %b0, %w1" : : "a"(value), "Nd"(port));
	syscall3(SYS_exit, 0, 0, 0);
}

RAW_ENTRY_POINT
