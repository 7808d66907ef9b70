/*
 * The guest agent's ask and read (agent.h): writes 124 to the boot timer (port 0x3f0:
 * "awaiting personalisation", where coinopd snapshots a golden image), then reads one line
 * from the personalisation port (the second UART, 0x2f8). See PERSONALISE.md.
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
 */

#include "agent.h"
#include "../initramfs/raw_syscall.h"

#define COM2 0x2f8
#define COM2_LSR (COM2 + 5)
#define LSR_DATA_READY 0x01
#define COM2_MSR (COM2 + 6)
#define MSR_RING 0x40
#define AWAITING_PERSONALISATION 124

/* KVM's emulator batches at most 1 KiB of a `rep insb` per exit, never across a page:
 * aligned to its size, the chunk is always one exit. */
#define CHUNK 1024
static unsigned char chunk[CHUNK] __attribute__((aligned(CHUNK)));

/* `rep insb` of `count` bytes from `port` into `buf`. The buffer's page must be present and
 * writable: should the emulator's write fault, the bytes it already took from the VMM are
 * lost (the instruction restarts with a fresh read). */
static void insb(unsigned short port, void *buf, unsigned long count)
{
	__asm__ volatile("rep insb" : "+D"(buf), "+c"(count) : "d"(port) : "memory");
}

static unsigned char inb(unsigned short port)
{
	unsigned char value;

	__asm__ volatile("inb %w1, %b0" : "=a"(value) : "Nd"(port));
	return value;
}

static void outb(unsigned short port, unsigned char value)
{
	__asm__ volatile("outb %b0, %w1" : : "a"(value), "Nd"(port));
}

/*
 * The pause after the n-th poll in a row that found the port empty: 200 us at first (a
 * cold boot's or a restore's line comes within ms of the 124), then, after ~100 ms of
 * nothing, doubling up to 3.2 ms. A guest restored ahead of its lease (coinopd's warm
 * restores) may wait minutes: at 200 us it would make ~5,000 exits a second, a whole CPU
 * of the nested lab's L1 and a few percent of a core on hardware, for nobody; at 3.2 ms,
 * ~300, and its line waits 1.6 ms on average.
 */
static long pause_ns(long empty_polls)
{
	long ns = 200000;

	for (long n = empty_polls - 500; n > 0 && ns < 3200000; n -= 50)
		ns *= 2;
	return ns;
}

unsigned long port_longest_pause_us, port_longest_pause_end_us;

int port_line_waiting(void)
{
	return inb(COM2_LSR) & LSR_DATA_READY;
}

long port_line_read(char *line, const char **why, void (*rung)(void))
{
	long pause[2] = { 0, 0 };
	long len = 0, empty = 0;
	int ring_answered = 0;

	if (syscall3(SYS_ioperm, COM2, 8, 1) != 0 || syscall3(SYS_ioperm, BOOT_TIMER, 1, 1) != 0) {
		*why = "ioperm failed (root and CONFIG_X86_IOPL_IOPERM needed)";
		return 0;
	}
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
			if (len == LINE_MAX) {
				*why = "no newline within 4096 bytes";
				return 0;
			}
			line[len++] = c;
			got++;
			ended = c == '\n';
		}
		if (got == 0) {
			/* Only while nothing of the line has come: one exit more per empty poll, and
			 * none once the ring was answered. */
			if (!ring_answered && len == 0 && (inb(COM2_MSR) & MSR_RING)) {
				ring_answered = 1;
				rung();
				empty = 0;
				continue;
			}
			pause[1] = pause_ns(++empty);
			{
				unsigned long t0 = agent_uptime_us(), t1;

				syscall3(SYS_nanosleep, (long)pause, 0, 0);
				t1 = agent_uptime_us();
				if (t1 - t0 > port_longest_pause_us) {
					port_longest_pause_us = t1 - t0;
					port_longest_pause_end_us = t1;
				}
			}
		} else {
			empty = 0;
		}
	}
	return len;
}
