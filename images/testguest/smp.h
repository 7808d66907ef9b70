/* Wakes every application processor listed in the MP table and reports them. */
#ifndef SMP_H
#define SMP_H
void smp_run(void);
#endif
