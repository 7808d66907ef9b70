/* Finds the MP floating pointer in the standard places and walks the configuration table. */
#include "mptable.h"

#define MP_FLOAT_SIG 0x5f504d5fu /* "_MP_" */
#define MP_CONF_SIG 0x504d4350u  /* "PCMP" */
#define MP_ENTRY_PROCESSOR 0
#define MP_PROCESSOR_ENABLED 0x01
#define MP_MAX_ENTRIES 1024

static u8 checksum(const u8 *p, u64 len)
{
    u8 sum = 0;
    for (u64 i = 0; i < len; i++)
        sum = (u8)(sum + p[i]);
    return sum;
}

static const u8 *scan(u64 start, u64 len)
{
    for (u64 a = start; a + 16 <= start + len; a += 16) {
        const u8 *p = (const u8 *)a;
        if (*(const u32 *)p == MP_FLOAT_SIG && checksum(p, 16) == 0)
            return p;
    }
    return 0;
}

/* Search order of the spec: first KiB of the EBDA, last KiB of base memory, BIOS ROM. */
static const u8 *find_floating_pointer(void)
{
    u64 ebda = (u64)(*(const u16 *)0x40e) << 4;
    u64 base_kib = *(const u16 *)0x413;
    const u8 *p = 0;
    if (ebda)
        p = scan(ebda, 1024);
    if (!p)
        p = scan(((base_kib ? base_kib : 640) - 1) * 1024, 1024);
    if (!p)
        p = scan(0xf0000, 0x10000);
    return p;
}

int mptable_cpus(u8 *ids, int max)
{
    const u8 *fp = find_floating_pointer();
    if (!fp)
        return -1;
    u32 conf_addr = *(const u32 *)(fp + 4);
    if (!conf_addr)
        return -1;
    const u8 *conf = (const u8 *)(u64)conf_addr;
    if (*(const u32 *)conf != MP_CONF_SIG)
        return -1;
    u16 length = *(const u16 *)(conf + 4);
    u16 entries = *(const u16 *)(conf + 34);
    const u8 *e = conf + 44;
    const u8 *end = conf + length;
    int n = 0;
    for (u16 i = 0; i < entries && i < MP_MAX_ENTRIES && e < end; i++) {
        if (e[0] == MP_ENTRY_PROCESSOR) {
            if ((e[3] & MP_PROCESSOR_ENABLED) && n < max)
                ids[n++] = e[1];
            e += 20;
        } else if (e[0] <= 4) {
            e += 8;
        } else {
            break; /* unknown entry type: its size is unknown too */
        }
    }
    return n;
}
