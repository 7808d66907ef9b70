/* Intel MultiProcessor Specification 1.4 table lookup: which CPUs the firmware/VMM lists. */
#ifndef MPTABLE_H
#define MPTABLE_H
#include "io.h"
#define MP_MAX_CPUS 64
/* Fills ids[] with the APIC ids of enabled processors; returns their count, -1 if no table. */
int mptable_cpus(u8 *ids, int max);
#endif
