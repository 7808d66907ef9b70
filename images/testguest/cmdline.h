/* Kernel command line parsing. */
#ifndef CMDLINE_H
#define CMDLINE_H
#include "io.h"
void cmdline_value(u64 cmdline_paddr, const char *key, char *out, u64 out_len);
#endif
