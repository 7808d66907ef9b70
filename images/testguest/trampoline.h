/* Where the AP start code is copied: page-aligned, below 1 MiB, clear of the VMM's
 * zero page / PVH start info (0x6000-0x7fff) and the MP table (EBDA / 0xF0000). */
#ifndef TRAMPOLINE_H
#define TRAMPOLINE_H
#define AP_TRAMPOLINE_BASE 0x8000
#endif
