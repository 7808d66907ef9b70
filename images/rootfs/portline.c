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
 *
 * The wait sleeps on the port's doorbell (PERSONALISE.md, "Wire"): the agent opens
 * /dev/ttyS1, so that Linux's 8250 driver takes the port's interrupt, writes DOORBELL_ON to
 * the scratch register, and between reads sleeps in TIOCMIWAIT until the port signals a
 * ring indicator edge: the VMM's news (the line can be read, or a ring). The line itself
 * stays out of the UART's FIFO, so the driver never takes a byte of it; `rep insb` reads it
 * as before. Polling with growing pauses made ~300 VM exits a second for as long as a guest
 * waited: in the nested lab ~400 ms of CPU a second for every guest restored ahead of its
 * lease, and L1 never idle while one waited. A port or kernel without the doorbell (the
 * open or the ioctl fails) is polled as before.
 */

#include "agent.h"
#include "../initramfs/raw_syscall.h"

#define COM2 0x2f8
#define COM2_LSR (COM2 + 5)
#define LSR_DATA_READY 0x01
#define COM2_MSR (COM2 + 6)
#define COM2_SCR (COM2 + 7)
#define MSR_RING 0x40
#define AWAITING_PERSONALISATION 124
/* vmm/src/devices/personalisation.rs: DOORBELL_ON, DOORBELL_RING_SEEN. */
#define DOORBELL_ON 0xdb
#define DOORBELL_RING_SEEN 0xda
/* x86-64 Linux's tty ioctls and open flags (no libc). */
#define TCGETS 0x5401
#define TCSETS 0x5402
#define CLOCAL 04000
#define TIOCMIWAIT 0x545c
#define TIOCGICOUNT 0x545d
#define TIOCM_RNG 0x080
#define O_RDWR 2
#define O_NOCTTY 0400
#define O_NONBLOCK 04000

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

unsigned long port_longest_pause_us, port_longest_pause_end_us, port_doorbell_wakes;
/* /dev/ttyS1 while the doorbell is on, else -1. */
static long tty = -1;
/* The driver's count of ring indicator edges when the ring was seen. */
static int rings_at_ring;

/* struct serial_icounter_struct: cts, dsr, rng, dcd, rx, tx, ... (20 ints). */
static int ring_edges(void)
{
	int count[20] = { 0 };

	syscall3(SYS_ioctl, tty, TIOCGICOUNT, (long)count);
	return count[2];
}

int port_line_waiting(void)
{
	/* With the doorbell the line stays out of the FIFO: any edge since the ring's is the
	 * line's. */
	if (tty >= 0)
		return ring_edges() != rings_at_ring;
	return inb(COM2_LSR) & LSR_DATA_READY;
}

/*
 * Has the driver keep the modem-status interrupt on from now: it does so for a port whose
 * termios lacks CLOCAL (serial ports start with it). Otherwise only a TIOCMIWAIT turns it
 * on, and a restored guest rung before its first wait (the golden guest is snapshotted
 * right after its 124) would count no ring edge during its warm-up, and so miss a line
 * that comes then (the lab: read 1.5 s late, after the whole warm-up). DCD stays asserted
 * (the port never drops it), so nothing hangs up. struct termios: c_iflag, c_oflag,
 * c_cflag, c_lflag, c_line, c_cc[19].
 */
static void keep_modem_interrupt_on(void)
{
	unsigned int termios[16] = { 0 };

	if (syscall3(SYS_ioctl, tty, TCGETS, (long)termios) != 0)
		return;
	termios[2] &= ~(unsigned int)CLOCAL;
	syscall3(SYS_ioctl, tty, TCSETS, (long)termios);
}

/* Sleeps until the port's next news; 0 if the doorbell cannot be waited on. */
static int doorbell_wait(void)
{
	if (tty < 0 || syscall3(SYS_ioctl, tty, TIOCMIWAIT, TIOCM_RNG) != 0)
		return 0;
	port_doorbell_wakes++;
	return 1;
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
	/* The doorbell: the driver's open enables the port's interrupt; the mode is asked
	 * before the 124, so the golden guest waits asleep in its snapshot. */
	tty = syscall3(SYS_open, (long)"/dev/ttyS1", O_RDWR | O_NOCTTY | O_NONBLOCK, 0);
	if (tty >= 0) {
		keep_modem_interrupt_on();
		outb(COM2_SCR, DOORBELL_ON);
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
				if (tty >= 0) {
					outb(COM2_SCR, DOORBELL_RING_SEEN);
					rings_at_ring = ring_edges();
				}
				rung();
				empty = 0;
				continue;
			}
			if (doorbell_wait())
				continue;
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
	if (tty >= 0)
		syscall3(SYS_close, tty, 0, 0);
	tty = -1;
	return len;
}
