/* TSC frequency discovery and busy-wait delays. */
#include "tsc.h"

#define CPUID_HYPERVISOR_BASE 0x40000000
#define CPUID_TIMING_LEAF 0x40000010
#define PIT_HZ 1193182
#define PIT_CALIBRATION_MS 10

static u64 khz_from_cpuid(void)
{
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    if (!(c & (1u << 31)))          /* no hypervisor: the leaf means nothing */
        return 0;
    cpuid(CPUID_HYPERVISOR_BASE, &a, &b, &c, &d);
    if (a < CPUID_TIMING_LEAF)
        return 0;
    cpuid(CPUID_TIMING_LEAF, &a, &b, &c, &d);
    return a;
}

/* Count TSC ticks while PIT channel 2 (mode 0, gate via port 0x61) runs down 10 ms. */
static u64 khz_from_pit(void)
{
    u32 count = PIT_HZ / 1000 * PIT_CALIBRATION_MS;
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01));
    outb(0x43, 0xb0);
    outb(0x42, (u8)(count & 0xff));
    outb(0x42, (u8)(count >> 8));
    u64 start = rdtsc();
    while (!(inb(0x61) & 0x20))
        ;
    return (rdtsc() - start) / PIT_CALIBRATION_MS;
}

u64 tsc_khz(void)
{
    static u64 cached;
    if (!cached) {
        cached = khz_from_cpuid();
        if (!cached)
            cached = khz_from_pit();
    }
    return cached;
}

int tsc_khz_from_cpuid(void)
{
    return khz_from_cpuid() != 0;
}

void tsc_delay_us(u64 khz, u64 us)
{
    u64 ticks = khz * us / 1000;
    u64 start = rdtsc();
    while (rdtsc() - start < ticks)
        cpu_relax();
}
