/*
 * The one system call entry the freestanding guest helpers (outb, portline, personalise:
 * built with -nostdlib, so no libc and no syscall(2) wrapper) share: x86-64 Linux, up to
 * three arguments, the raw return value (negative errno on failure).
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

#endif
