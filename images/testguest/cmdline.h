/* Kernel command line parsing. */
#ifndef CMDLINE_H
#define CMDLINE_H
#include "io.h"
void cmdline_value(u64 cmdline_paddr, const char *key, char *out, u64 out_len);
/* Prints "cmdline: <the whole command line>" and a newline on COM1. */
void cmdline_print(u64 cmdline_paddr);
#endif
