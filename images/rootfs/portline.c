/*
 * portline: asks coinop-vmm for the lease's personalisation line and prints it.
 *
 * Writes 124 to the boot timer (port 0x3f0: "awaiting personalisation", where coinopd
 * snapshots a golden image), then reads one line from the personalisation port (the second
 * UART, 0x2f8) by polling its line status register, and prints it with its newline on
 * stdout. See PERSONALISE.md.
 *
 * Why not /dev/ttyS1: under Linux's 8250 driver (interrupt-driven, IRQ 3) the lab saw the
 * receive stop at exactly 256 bytes (the driver's per-interrupt budget; rx:256 in
 * /proc/tty/driver/serial) and never resume, so a line with an SSH key never arrived.
 * Polling the UART from userspace needs no interrupt at all; the kernel never opens the
 * port (nothing in the rootfs does), so nothing else reads its receive buffer.
 *
 * One VM exit per KiB: the data register is read with `rep insb` into a 1 KiB buffer that
 * does not cross a page, which KVM hands coinop-vmm as one exit; the VMM fills it with the
 * next line bytes and then 0s (the line's bytes are printable ASCII and a newline, never
 * 0; PERSONALISE.md), so the 0s are dropped and the line status register is not read at
 * all. (A restored lease waits on these exits: nested, as in the lab, each costs ~0.2 ms,
 * so byte by byte a 400-byte line cost ~60 ms.)
 *
 * Freestanding (no libc), like ../initramfs/outb.c. Exits 1 with a message on stderr when
 * the ports cannot be reached or no newline comes within the protocol's 4096 bytes.
 */

#define SYS_write 1
#define SYS_nanosleep 35
#define SYS_ioperm 173
#define SYS_exit 60

#define COM2 0x2f8
#define BOOT_TIMER 0x3f0
#define AWAITING_PERSONALISATION 124
/* The protocol's longest line, plus its newline. */
#define LINE_MAX (4096 + 1)

static char line[LINE_MAX];
/* KVM's emulator batches at most 1 KiB of a `rep insb` per exit, never across a page:
 * aligned to its size, the chunk is always one exit. */
#define CHUNK 1024
static unsigned char chunk[CHUNK] __attribute__((aligned(CHUNK)));

#include "../initramfs/raw_syscall.h"

static void fail(const char *msg)
{
	long len = 0;

	while (msg[len])
		len++;
	syscall3(SYS_write, 2, (long)msg, len);
	syscall3(SYS_exit, 1, 0, 0);
}

/* `rep insb` of `count` bytes from `port` into `buf`. The buffer's page must be present and
 * writable: should the emulator's write fault, the bytes it already took from the VMM are
 * lost (the instruction restarts with a fresh read). */
static void insb(unsigned short port, void *buf, unsigned long count)
{
	__asm__ volatile("rep insb" : "+D"(buf), "+c"(count) : "d"(port) : "memory");
}

static void outb(unsigned short port, unsigned char value)
{
	__asm__ volatile("outb %b0, %w1" : : "a"(value), "Nd"(port));
}

__attribute__((used)) static void start(void)
{
	/* 200 us between polls of an empty port: each poll is a VM exit. */
	static const long pause[2] = { 0, 200000 };
	long len = 0, done;

	if (syscall3(SYS_ioperm, COM2, 8, 1) != 0 || syscall3(SYS_ioperm, BOOT_TIMER, 1, 1) != 0)
		fail("portline: ioperm failed (root and CONFIG_X86_IOPL_IOPERM needed)\n");
	outb(BOOT_TIMER, AWAITING_PERSONALISATION);
	for (int ended = 0; !ended;) {
		long got = 0;

		/* Faults the (bss) page in before the emulator writes to it: see insb(). */
		*(volatile unsigned char *)chunk = 0;
		insb(COM2, chunk, CHUNK);
		for (long i = 0; i < CHUNK && !ended; i++) {
			char c = (char)chunk[i];

			if (c == 0)
				continue;
			if (len == LINE_MAX)
				fail("portline: no newline within 4096 bytes\n");
			line[len++] = c;
			got++;
			ended = c == '\n';
		}
		if (got == 0)
			syscall3(SYS_nanosleep, (long)pause, 0, 0);
	}
	for (done = 0; done < len;) {
		long n = syscall3(SYS_write, 1, (long)line + done, len - done);

		if (n <= 0)
			fail("portline: cannot write the line\n");
		done += n;
	}
	syscall3(SYS_exit, 0, 0, 0);
}

/* The kernel enters with argc at (%rsp); the ABI wants a 16-byte-aligned stack at a call. */
__asm__(".globl _start\n"
	"_start:\n"
	"	and $-16, %rsp\n"
	"	call start\n"
	"	hlt\n");
