/* Wakes every application processor listed in the MP table and reports them; returns how
 * many CPUs are online. With busy_aps the APs keep counting instead of halting. */
#ifndef SMP_H
#define SMP_H
#include "io.h"
int smp_run(int busy_aps);
/* How often the busy APs have counted so far (all of them together). */
u32 smp_ap_ticks(void);
#endif
