/*
 * Entry for the Linux 64-bit boot protocol and the long-mode start shared with the PVH
 * entry. The VMM's identity map only covers 1 GiB, and the xAPIC sits at 0xFEE00000, so
 * the guest switches to its own static tables (4 GiB of 2 MiB pages) before running C.
 */
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_CMD_LINE_PTR 0x228

    .section .text.entry, "ax"
    .code64
    .globl entry64
entry64:
    /* RSI = boot_params; the command line address is split across two fields. */
    cli
    movl BP_CMD_LINE_PTR(%rsi), %edi
    movl BP_EXT_CMD_LINE_PTR(%rsi), %eax
    shlq $32, %rax
    orq %rax, %rdi

    /* RDI = physical address of the command line, or 0. */
    .globl long_mode_start
long_mode_start:
    movl $pml4, %eax
    movq %rax, %cr3
    movq $stack_top, %rsp
    xorl %ebp, %ebp
    call guest_main
1:  cli
    hlt
    jmp 1b

    .section .data.pagetables, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x3
    .quad pd + 0x1000 + 0x3
    .quad pd + 0x2000 + 0x3
    .quad pd + 0x3000 + 0x3
    .fill 508, 8, 0
pd:
    /* Present, writable, 2 MiB page; the top GiB (MMIO: LAPIC, IOAPIC) uncached. */
    .set page, 0
    .rept 1536
    .quad (page << 21) | 0x83
    .set page, page + 1
    .endr
    .rept 512
    .quad (page << 21) | 0x9b
    .set page, page + 1
    .endr

    .section .bss.stack, "aw", @nobits
    .balign 16
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
