/* INIT/SIPI/SIPI through the xAPIC, AP code in trampoline.S, bounded wait on the BSP. */
#include "smp.h"
#include "io.h"
#include "mptable.h"
#include "serial.h"
#include "trampoline.h"
#include "tsc.h"

#define MSR_APIC_BASE 0x1b
#define APIC_SVR 0xf0
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define APIC_SVR_ENABLE 0x100
#define ICR_DELIVERY_PENDING (1u << 12)
#define ICR_INIT 0x4500          /* INIT, assert */
#define ICR_STARTUP 0x4600       /* STARTUP, assert; vector = page number */
#define AP_WAIT_US 1000000

extern char ap_trampoline[], ap_trampoline_end[], ap_lock[], ap_count[], ap_busy[], ap_ticks[];

static u64 apic_base(void)
{
    return rdmsr(MSR_APIC_BASE) & 0xfffff000ul;
}

static u8 my_apic_id(void)
{
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    return (u8)(b >> 24);
}

static void send_ipi(u64 apic, u8 dest, u32 icr)
{
    while (mmio_read32(apic + APIC_ICR_LO) & ICR_DELIVERY_PENDING)
        cpu_relax();
    mmio_write32(apic + APIC_ICR_HI, (u32)dest << 24);
    mmio_write32(apic + APIC_ICR_LO, icr);
}

static volatile u32 *in_copy(char *label)
{
    return (volatile u32 *)(u64)(AP_TRAMPOLINE_BASE + (label - ap_trampoline));
}

static void copy_trampoline(void)
{
    volatile u8 *dst = (volatile u8 *)AP_TRAMPOLINE_BASE;
    for (long i = 0; i < ap_trampoline_end - ap_trampoline; i++)
        dst[i] = (u8)ap_trampoline[i];
}

static void lock(volatile u32 *l)
{
    u8 old;
    do {
        old = 1;
        __asm__ volatile("xchgb %0, %1" : "+q"(old), "+m"(*(volatile u8 *)l) : : "memory");
        if (old)
            cpu_relax();
    } while (old);
}

static void print_cpu_online(u8 id)
{
    serial_puts("cpu ");
    serial_putdec(id);
    serial_puts(" online\n");
}

int smp_run(int busy_aps)
{
    u8 ids[MP_MAX_CPUS];
    int n = mptable_cpus(ids, MP_MAX_CPUS);
    if (n < 0) {
        serial_puts("smp: no mp table\n");
        return 1;
    }
    u64 khz = tsc_khz();
    u8 self = my_apic_id();
    print_cpu_online(self);

    copy_trampoline();
    *in_copy(ap_busy) = (u32)busy_aps;
    u64 apic = apic_base();
    /* A software-disabled LAPIC may drop IPIs; enable it via the spurious vector register. */
    mmio_write32(apic + APIC_SVR, APIC_SVR_ENABLE | 0xff);
    u32 vector = AP_TRAMPOLINE_BASE >> 12;
    u32 expected = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] == self)
            continue;
        expected++;
        send_ipi(apic, ids[i], ICR_INIT);
        tsc_delay_us(khz, 1000);
        send_ipi(apic, ids[i], ICR_STARTUP | vector);
        tsc_delay_us(khz, 200);
        send_ipi(apic, ids[i], ICR_STARTUP | vector);
    }

    volatile u32 *count = in_copy(ap_count);
    u64 deadline = khz * (AP_WAIT_US / 1000);
    u64 start = rdtsc();
    while (*count < expected && rdtsc() - start < deadline)
        cpu_relax();
    /* Late APs must not interleave with the summary line. */
    lock(in_copy(ap_lock));
    serial_puts("smp: ");
    serial_putdec(*count + 1);
    serial_puts(" cpus online\n");
    int online = (int)*count + 1;
    *in_copy(ap_lock) = 0;
    return online;
}

u32 smp_ap_ticks(void)
{
    return *in_copy(ap_ticks);
}
