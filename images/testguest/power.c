/* The VMM ends on an i8042 reset (0xFE to port 0x64) and reports a triple fault as a crash. */
#include "power.h"
#include "io.h"
#include "serial.h"

void reset(void)
{
    outb(0x64, 0xfe);
    for (;;)
        __asm__ volatile("cli; hlt");
}

void idle_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* The faulting instruction, global so fault_with_idt can print its address. */
extern const char fault_ud2[];

void fault_with_idt(u64 idt_base, u16 idt_limit, int announce)
{
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idt = { idt_limit, idt_base };
    if (announce) {
        /* What the VMM's crash report must match: where the guest faulted, and its IDT. */
        serial_puts("fault: ud2 at ");
        serial_putdec((u64)fault_ud2);
        serial_puts(" idt ");
        serial_putdec(idt_base);
        serial_puts(" limit ");
        serial_putdec(idt_limit);
        serial_puts("\n");
    }
    __asm__ volatile("cli; lidt %0\n"
                     ".globl fault_ud2\n"
                     "fault_ud2: ud2"
                     :
                     : "m"(idt));
    for (;;)
        ;
}

void triple_fault(void)
{
    /* With a zero-limit IDT, #UD cannot be delivered: #GP, #DF, then shutdown. */
    fault_with_idt(0, 0, 0);
}
