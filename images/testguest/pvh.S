/*
 * PVH entry (Xen's HVM direct boot ABI, as used by QEMU, Firecracker and cloud-hypervisor):
 * the loader finds XEN_ELFNOTE_PHYS32_ENTRY and starts us in 32-bit protected mode, paging
 * off, EBX = hvm_start_info. We enter long mode with our own GDT and page tables.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578
#define HVM_CMDLINE_PADDR 24

    .section .note.pvh, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 8                         /* descsz: QEMU reads a full 64-bit word */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_entry32
    .balign 4

    .section .text.pvh, "ax"
    .code32
    .globl pvh_entry32
pvh_entry32:
    cli
    xorl %edi, %edi
    cmpl $HVM_START_MAGIC, (%ebx)
    jne 1f
    /* Only a command line below 4 GiB is reachable through our identity map. */
    cmpl $0, HVM_CMDLINE_PADDR + 4(%ebx)
    jne 1f
    movl HVM_CMDLINE_PADDR(%ebx), %edi
1:
    movl %cr4, %eax
    orl $0x20, %eax                 /* PAE */
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* LME */
    wrmsr
    lgdt pvh_gdt_desc
    movl %cr0, %eax
    orl $0x80000001, %eax           /* PG | PE */
    movl %eax, %cr0
    ljmp $0x08, $pvh_entry64

    .code64
pvh_entry64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    /* The upper half of RDI is undefined after the mode switch. */
    movl %edi, %edi
    jmp long_mode_start

    .section .rodata
    .balign 8
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
pvh_gdt_end:
pvh_gdt_desc:
    .word pvh_gdt_end - pvh_gdt - 1
    .long pvh_gdt

    .section .note.GNU-stack, "", @progbits
