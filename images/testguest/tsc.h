/* TSC frequency: from the VMM's CPUID leaf 0x40000010, else measured against the PIT. */
#ifndef TSC_H
#define TSC_H
#include "io.h"
u64 tsc_khz(void);
/* Whether the VMM advertises the frequency (else tsc_khz() measured it). */
int tsc_khz_from_cpuid(void);
void tsc_delay_us(u64 khz, u64 us);
#endif
