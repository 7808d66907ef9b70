/*
 * The one system call entry the freestanding guest helpers (outb, and the rootfs's guest
 * agent: built with -nostdlib, so no libc and no syscall(2) wrapper) share: x86-64 Linux,
 * up to four arguments, the raw return value (negative errno on failure).
 */
#ifndef COINOP_RAW_SYSCALL_H
#define COINOP_RAW_SYSCALL_H

static inline long syscall3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

/* The fourth argument goes in r10 (the syscall ABI's, not the C ABI's rcx). */
static inline long syscall4(long nr, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

/*
 * The program's entry, once per program (in the file that defines `start(long *stack)`):
 * the kernel enters with argc at (%rsp); the ABI wants a 16-byte-aligned stack at a call.
 */
#define RAW_ENTRY_POINT                                                                    \
	__asm__(".globl _start\n"                                                          \
		"_start:\n"                                                                \
		"	mov %rsp, %rdi\n"                                                  \
		"	and $-16, %rsp\n"                                                  \
		"	call start\n"                                                      \
		"	hlt\n");

#endif
