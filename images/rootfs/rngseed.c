/*
 * rngseed HEX: mixes 256 bits of host randomness (64 hex digits) into the kernel's RNG,
 * credited as 256 bits of entropy (RNDADDENTROPY), then forces the CRNG to reseed from it
 * at once (RNDRESEEDCRNG).
 *
 * The guest agent (./init) runs it first thing after a lease's personalisation line
 * arrives: guests restored from one golden snapshot start with the same RNG state, and
 * only fresh host bits, mixed in and reseeded before anything draws from /dev/urandom
 * (SSH host keys above all), make their random streams diverge. A shell cannot issue the
 * ioctls, and the rootfs has no libc for a C program: freestanding like
 * ../initramfs/outb.c.
 */

#include <linux/random.h>

#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_ioctl 16
#define SYS_exit 60
#define O_WRONLY 1

#define SEED_BYTES 32

static long syscall3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static void fail(const char *msg)
{
	long len = 0;

	while (msg[len])
		len++;
	syscall3(SYS_write, 2, (long)msg, len);
	syscall3(SYS_exit, 1, 0, 0);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The ioctl's argument: the header and the seed in one block, as the kernel reads it. */
static struct {
	struct rand_pool_info info;
	unsigned char bytes[SEED_BYTES];
} seed;

__attribute__((used)) static void start(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	const char *hex;
	long fd, i;

	if (argc != 2)
		fail("usage: rngseed HEX (64 lowercase hex digits)\n");
	hex = argv[1];
	for (i = 0; i < SEED_BYTES; i++) {
		int hi = hex_digit(hex[2 * i]), lo;

		if (hi < 0)
			fail("rngseed: HEX must be 64 lowercase hex digits\n");
		lo = hex_digit(hex[2 * i + 1]);
		if (lo < 0)
			fail("rngseed: HEX must be 64 lowercase hex digits\n");
		seed.bytes[i] = (unsigned char)(hi << 4 | lo);
	}
	if (hex[2 * SEED_BYTES])
		fail("rngseed: HEX must be 64 lowercase hex digits\n");
	seed.info.entropy_count = SEED_BYTES * 8;
	seed.info.buf_size = SEED_BYTES;
	fd = syscall3(SYS_open, (long)"/dev/urandom", O_WRONLY, 0);
	if (fd < 0)
		fail("rngseed: cannot open /dev/urandom\n");
	if (syscall3(SYS_ioctl, fd, RNDADDENTROPY, (long)&seed) != 0)
		fail("rngseed: RNDADDENTROPY failed (root needed)\n");
	if (syscall3(SYS_ioctl, fd, RNDRESEEDCRNG, 0) != 0)
		fail("rngseed: RNDRESEEDCRNG failed\n");
	/* The seed is in the kernel now; no copy stays in this process's memory. */
	for (i = 0; i < SEED_BYTES; i++)
		((volatile unsigned char *)seed.bytes)[i] = 0;
	syscall3(SYS_close, fd, 0, 0);
	syscall3(SYS_exit, 0, 0, 0);
}

/* The kernel enters with argc at (%rsp); the ABI wants a 16-byte-aligned stack at a call. */
__asm__(".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call start\n"
	"	hlt\n");
