/* Ways for the guest to end (i8042 reset, a deliberate triple fault) or never to (idle). */
#ifndef POWER_H
#define POWER_H
#include "io.h"
__attribute__((noreturn)) void reset(void);
__attribute__((noreturn)) void triple_fault(void);
/* Load an IDT of `idt_limit` + 1 bytes at `idt_base` and execute `ud2`; with `announce`,
 * first print `fault: ud2 at <addr> idt <base> limit <limit>` (decimal) on COM1. */
__attribute__((noreturn)) void fault_with_idt(u64 idt_base, u16 idt_limit, int announce);
/* Halt for good with interrupts off: the vCPU sleeps in the host kernel and uses no CPU. */
__attribute__((noreturn)) void idle_forever(void);
#endif
