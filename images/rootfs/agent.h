/*
 * The guest agent's parts (PERSONALISE.md), one job per file, linked into one freestanding
 * program, coinop-agent (no libc in the rootfs for it: see agent.c):
 *
 *   agent.c        the order of the steps, dropbear, guest_ready, the step stamps
 *   portline.c     the 124 and the line's read from the personalisation port
 *   line.c         the line's words, checked
 *   personalise.c  entropy, clock, host name, eth0, the tenant's key
 *   host_key.c     the SSH host key from the line, as dropbear's key file; the placeholder
 *                  key dropbear's listener starts with
 */
#ifndef COINOP_AGENT_H
#define COINOP_AGENT_H

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_ioctl 16
#define SYS_nanosleep 35
#define SYS_poll 7
#define SYS_socket 41
#define SYS_connect 42
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_unlink 87
#define SYS_readlink 89
#define SYS_fchmod 91
#define SYS_settimeofday 164
#define SYS_sethostname 170
#define SYS_ioperm 173
#define SYS_clock_gettime 228
#define O_RDONLY 0
#define O_WRONLY 1
#define O_CREAT 0100
#define O_TRUNC 01000

#define BOOT_TIMER 0x3f0
/* The protocol's longest line, plus its newline. */
#define LINE_MAX (4096 + 1)

/* agent.c: says `coinop-agent: error: MSG` on stderr (the console) and exits 1. */
void agent_fail(const char *msg) __attribute__((noreturn));
long agent_length(const char *s);
/* A lowercase hex digit's value, or -1. */
int agent_hex_digit(char c);
/* Microseconds since boot (CLOCK_BOOTTIME, the clock /proc/uptime counts). */
unsigned long agent_uptime_us(void);

/*
 * portline.c: writes 124 to the boot timer, then reads the line from the personalisation
 * port into `line` (at most LINE_MAX bytes, with its newline). Returns its length with
 * the newline, or 0 with `*why` set. Should the port ring (its modem status register's
 * ring indicator: coinopd's `ring`, PERSONALISE.md "Time to spare") before any byte of the
 * line has come, `rung` is called once, and the read goes on after it returns.
 */
long port_line_read(char *line, const char **why, void (*rung)(void));
/* portline.c: whether bytes of the line wait in the port (its LSR's data-ready bit, or
 * with the doorbell a ring indicator edge since the ring's). Only after port_line_read has
 * enabled the port's I/O (that is: from `rung`). */
int port_line_waiting(void);
/* portline.c: the longest pause between two polls of the port, and when it ended (µs of
 * uptime): a lab diagnostic of late wake-ups (polling only); and how often the doorbell
 * woke the agent (0: it polled). */
extern unsigned long port_longest_pause_us, port_longest_pause_end_us, port_doorbell_wakes;

/* line.c: the values of the line's keys; 0 for an optional key the line lacks. */
struct lease_line {
	const char *entropy, *time, *hostname, *ip, *gw, *mac, *ssh_key, *host_key;
};

/*
 * Splits `line` (NUL-terminated, without its newline) in place into `out` and checks it.
 * Returns 0, or why the line is malformed.
 */
const char *line_parse(char *line, struct lease_line *out);

/* personalise.c: each step, or agent_fail naming what failed. */
void personalise_reseed(const char *hex);
/* personalise.c: RDRAND's bytes into the RNG and a reseed, before a restored guest's line
 * (agent.c's warm-up); 0, or 1 when the CPU has no RDRAND or one that failed or repeated a
 * value (nothing done). */
int personalise_reseed_from_cpu(void);
void personalise_clock(const char *time);
void personalise_hostname(const char *name);
void personalise_network(const char *mac, const char *ip, const char *gw);
void personalise_network_warm(void);
void personalise_tenant_key(const char *b64);

/*
 * host_key.c: writes the Ed25519 key of `hex` (the line's host_key: seed then public key,
 * 128 lowercase hex digits) to `path` in dropbear's key file format, mode 0600. Returns 0
 * or why not. Needs nothing of the agent: a host-side test links it alone.
 */
const char *host_key_write(const char *hex, const char *path);

/*
 * host_key.c: writes the placeholder key dropbear's listener is started with before any
 * lease's key exists: an Ed25519 key file whose public half is no curve point, so no
 * session served with it can pass a client's signature check (PERSONALISE.md). Returns 0
 * or why not.
 */
const char *host_key_write_placeholder(const char *path);

#endif
