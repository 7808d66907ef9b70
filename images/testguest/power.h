/* Ways for the guest to end (i8042 reset, a deliberate triple fault) or never to (idle). */
#ifndef POWER_H
#define POWER_H
__attribute__((noreturn)) void reset(void);
__attribute__((noreturn)) void triple_fault(void);
/* Halt for good with interrupts off: the vCPU sleeps in the host kernel and uses no CPU. */
__attribute__((noreturn)) void idle_forever(void);
#endif
