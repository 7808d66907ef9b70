/* The VMM ends on an i8042 reset (0xFE to port 0x64) and reports a triple fault as a crash. */
#include "power.h"
#include "io.h"

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

void triple_fault(void)
{
    /* With a zero-limit IDT, #UD cannot be delivered: #GP, #DF, then shutdown. */
    static const struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } empty_idt = { 0, 0 };
    __asm__ volatile("cli; lidt %0; ud2" : : "m"(empty_idt));
    for (;;)
        ;
}
