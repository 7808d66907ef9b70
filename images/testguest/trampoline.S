/*
 * Application-processor start code. The BSP copies [ap_trampoline, ap_trampoline_end) to
 * AP_TRAMPOLINE_BASE (a page below 1 MiB) and points SIPI at it; each AP runs it in real
 * mode, reports its APIC id on COM1 under a spinlock, counts itself and parks, or, when the
 * BSP set ap_busy (mode=count), keeps incrementing ap_ticks so a snapshot catches it running.
 * Offsets are relative to the copy, so every absolute address is BASE + (label - start).
 */
#include "trampoline.h"

#define AT(label) (AP_TRAMPOLINE_BASE + ((label) - ap_trampoline))
#define AP_STACK_TOP (AP_TRAMPOLINE_BASE + 0xff0)

    .section .text.trampoline, "ax"
    .code16
    .globl ap_trampoline
ap_trampoline:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
1:  movb $1, %al
    xchgb %al, AT(ap_lock)
    testb %al, %al
    jz 2f
    pause
    jmp 1b
2:  /* The stack is shared: it is only used while holding the lock. */
    movw $AP_STACK_TOP, %sp
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movw $AT(ap_msg_cpu), %si
    call ap_puts
    movb %bl, %al
    call ap_putdec
    movw $AT(ap_msg_online), %si
    call ap_puts
    lock incl AT(ap_count)
    movb $0, AT(ap_lock)
    cmpl $0, AT(ap_busy)
    je 3f
4:  lock incl AT(ap_ticks)
    pause
    jmp 4b
3:  cli
    hlt
    jmp 3b

/* Print the NUL-terminated string at DS:SI. */
ap_puts:
    movb (%si), %al
    testb %al, %al
    jz 1f
    call ap_putc
    incw %si
    jmp ap_puts
1:  ret

/* Print AL (0..255) in decimal. */
ap_putdec:
    xorb %ah, %ah
    movb $10, %cl
    divb %cl                        /* AL = quotient, AH = last digit */
    pushw %ax
    testb %al, %al
    jz 1f
    call ap_putdec
1:  popw %ax
    movb %ah, %al
    addb $'0', %al
    jmp ap_putc

/* Print AL on COM1 once the transmitter holding register is empty. */
ap_putc:
    movb %al, %ah
    movw $0x3fd, %dx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    movb %ah, %al
    movw $0x3f8, %dx
    outb %al, %dx
    ret

ap_msg_cpu:
    .asciz "cpu "
ap_msg_online:
    .asciz " online\n"
    .balign 4
    .globl ap_lock
ap_lock:
    .long 0
    .globl ap_count
ap_count:
    .long 0
    .globl ap_busy
ap_busy:
    .long 0
    .globl ap_ticks
ap_ticks:
    .long 0
    .globl ap_trampoline_end
ap_trampoline_end:

    .section .note.GNU-stack, "", @progbits
