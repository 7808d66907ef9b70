/* Ways for the guest to end: i8042 reset and a deliberate triple fault. */
#ifndef POWER_H
#define POWER_H
__attribute__((noreturn)) void reset(void);
__attribute__((noreturn)) void triple_fault(void);
#endif
