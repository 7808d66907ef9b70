/*
 * The guest agent's steps 1-4 (agent.h, PERSONALISE.md), each called once by agent.c in
 * the protocol's order, each ending the agent through agent_fail when it fails:
 *
 *   personalise_reseed      64 lowercase hex digits mixed into the kernel's RNG, credited as
 *                           256 bits (RNDADDENTROPY), then a forced CRNG reseed (RNDRESEEDCRNG)
 *   personalise_reseed_from_cpu  the same with 32 bytes of the CPU's RDRAND, for a guest
 *                           restored ahead of its lease before its line (not a step of the
 *                           protocol: agent.c's warm-up, PERSONALISE.md "Time to spare")
 *   personalise_clock       the wall clock (settimeofday) from S.N
 *   personalise_hostname    the host name (sethostname, and /etc/hostname)
 *   personalise_network     eth0's MAC (SIOCSIFHWADDR, before the link comes up), address and
 *                           netmask, the link up, the default route
 *   personalise_tenant_key  the tenant's key line (standard base64), written with its newline
 *                           to /root/.ssh/authorized_keys, mode 0600
 *
 * System calls, not busybox's date, hostname, ifconfig, route and base64: after a snapshot
 * restore every process the agent starts costs page faults on memory the guests share
 * (nested, each one a VM exit), and the lab measured ~20-110 ms per step as separate
 * processes. Guests restored from one golden snapshot start with the same RNG state: only
 * fresh host bits, mixed in and reseeded before anything draws from /dev/urandom, make
 * their random streams diverge; so agent.c calls the reseed first.
 */

#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

#define AUTHORIZED_KEYS "/root/.ssh/authorized_keys"
/* A key line fits the protocol's 4096-byte line, so its decoded form fits this. */
#define KEY_MAX 3072

#define SEED_BYTES 32
#define IFACE "eth0"

#include "agent.h"
#include "../initramfs/raw_syscall.h"

/* Parses a decimal number of at most `max`, up to `end` (or NUL); 1 on success. */
static int decimal(const char **s, char end, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;
	const char *p = *s;

	if (*p < '0' || *p > '9')
		return 0;
	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > max)
			return 0;
		p++;
	}
	if (*p != end)
		return 0;
	*s = p;
	*out = v;
	return 1;
}

/* Dotted IPv4 up to `end` into network byte order; 1 on success. */
static int ipv4(const char **s, char end, unsigned int *out)
{
	unsigned char b[4];
	unsigned long v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		if (!decimal(s, i < 3 ? '.' : end, 255, &v))
			return 0;
		b[i] = (unsigned char)v;
		if (i < 3)
			(*s)++;
	}
	*out = (unsigned int)b[0] | (unsigned int)b[1] << 8 | (unsigned int)b[2] << 16 |
	       (unsigned int)b[3] << 24;
	return 1;
}

/* The ioctl's argument: the header and the seed in one block, as the kernel reads it. */
static struct {
	struct rand_pool_info info;
	unsigned char bytes[SEED_BYTES];
} seed;

/* Mixes `seed` into the kernel's RNG, credited as SEED_BYTES * 8 bits, and reseeds the
 * CRNG from it; then wipes it. */
static void mix_seed_and_reseed(void)
{
	long fd, i;

	seed.info.entropy_count = SEED_BYTES * 8;
	seed.info.buf_size = SEED_BYTES;
	fd = syscall3(SYS_open, (long)"/dev/urandom", O_WRONLY, 0);
	if (fd < 0)
		agent_fail("cannot open /dev/urandom");
	if (syscall3(SYS_ioctl, fd, RNDADDENTROPY, (long)&seed) != 0)
		agent_fail("RNDADDENTROPY failed (root needed)");
	if (syscall3(SYS_ioctl, fd, RNDRESEEDCRNG, 0) != 0)
		agent_fail("RNDRESEEDCRNG failed");
	/* The seed is in the kernel now; no copy stays in this process's memory. */
	for (i = 0; i < SEED_BYTES; i++)
		((volatile unsigned char *)seed.bytes)[i] = 0;
	syscall3(SYS_close, fd, 0, 0);
}

void personalise_reseed(const char *hex)
{
	long i;

	for (i = 0; i < SEED_BYTES; i++) {
		int hi = agent_hex_digit(hex[2 * i]), lo;

		if (hi < 0)
			agent_fail("entropy= must be 64 lowercase hex digits");
		lo = agent_hex_digit(hex[2 * i + 1]);
		if (lo < 0)
			agent_fail("entropy= must be 64 lowercase hex digits");
		seed.bytes[i] = (unsigned char)(hi << 4 | lo);
	}
	if (hex[2 * SEED_BYTES])
		agent_fail("entropy= must be 64 lowercase hex digits");
	mix_seed_and_reseed();
}

/* Whether the CPU has RDRAND (CPUID leaf 1, ECX bit 30): without it the instruction faults. */
static int cpu_has_rdrand(void)
{
	unsigned int a = 1, b, c = 0, d;

	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return (c >> 30) & 1;
}

/* One RDRAND value into *out: 1, or 0 when the CPU gave none in 10 tries (the retry count
 * Intel's guidance gives for a transient underflow). */
static int rdrand64(unsigned long *out)
{
	int i;

	for (i = 0; i < 10; i++) {
		unsigned char ok;

		__asm__ volatile("rdrand %0; setc %1" : "=r"(*out), "=qm"(ok) : : "cc");
		if (ok)
			return 1;
	}
	return 0;
}

/*
 * Makes the kernel's RNG this guest's own before its line brings the host's entropy: a
 * guest restored from a snapshot starts with the golden guest's RNG state, and what the
 * kernel draws from it once and keeps (its network secret, at the first TCP connection:
 * tcp_ts_offset.c says what it keys) could be every restored guest's (PERSONALISE.md,
 * "Time to spare", says when). 32 bytes of RDRAND, which each vCPU executes anew after
 * the restore, are mixed in and credited (as a kernel booted with random.trust_cpu=on
 * credits them), and the CRNG reseeded: every draw after this one is this guest's. The
 * line's host entropy is mixed in as ever later. Returns 0, or 1 when the CPU offers no
 * RDRAND, or one that fails or repeats itself (nothing changed: the caller must then draw
 * nothing).
 */
int personalise_reseed_from_cpu(void)
{
	unsigned long v[SEED_BYTES / 8];
	long i, k;
	int fine = cpu_has_rdrand();

	for (i = 0; fine && i < SEED_BYTES / 8; i++) {
		fine = rdrand64(&v[i]);
		/* A repeat is a broken RDRAND (some AMD parts' returned all ones after a
		 * resume; Linux's own check at boot looks for the same): such bytes are no one's. */
		for (k = 0; fine && k < i; k++)
			fine = v[k] != v[i];
	}
	if (fine) {
		for (i = 0; i < SEED_BYTES; i++)
			seed.bytes[i] = (unsigned char)(v[i / 8] >> (8 * (i % 8)));
		mix_seed_and_reseed();
	}
	/* Wiped either way, as the seed once mixed in. */
	for (i = 0; i < SEED_BYTES / 8; i++)
		((volatile unsigned long *)v)[i] = 0;
	return !fine;
}

void personalise_clock(const char *s)
{
	/* struct timeval, as the kernel's x86-64 ABI has it. */
	struct {
		long sec;
		long usec;
	} tv;
	unsigned long sec = 0, nsec = 0;
	int digits = 0;

	if (!decimal(&s, '.', (unsigned long)-1 / 10, &sec))
		agent_fail("time= must be SECONDS.NANOSECONDS");
	s++;
	/* Up to 9 fraction digits, scaled to nanoseconds. */
	while (*s >= '0' && *s <= '9' && digits < 9) {
		nsec = nsec * 10 + (unsigned long)(*s++ - '0');
		digits++;
	}
	if (*s || digits == 0)
		agent_fail("time= must be SECONDS.NANOSECONDS");
	while (digits++ < 9)
		nsec *= 10;
	tv.sec = (long)sec;
	tv.usec = (long)(nsec / 1000);
	if (syscall3(SYS_settimeofday, (long)&tv, 0, 0) != 0)
		agent_fail("setting the clock failed");
}

static void copy_iface(struct ifreq *ifr)
{
	const char *name = IFACE;
	int i;

	for (i = 0; name[i]; i++)
		ifr->ifr_name[i] = name[i];
}

static void ifioctl(long sock, unsigned long request, struct ifreq *ifr, const char *what)
{
	if (syscall3(SYS_ioctl, sock, (long)request, (long)ifr) != 0)
		agent_fail(what);
}

static void set_inet(struct sockaddr *sa, unsigned int addr)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;

	in->sin_family = AF_INET;
	in->sin_addr.s_addr = addr;
}

void personalise_network(const char *mac, const char *ip, const char *gw)
{
	static struct ifreq ifr;
	unsigned int addr = 0, mask = 0, via = 0;
	unsigned long prefix = 0;
	long sock;
	int i;

	if (ip) {
		const char *s = ip;

		if (!ipv4(&s, '/', &addr))
			agent_fail("ip= must be ADDR/PREFIX");
		s++;
		if (!decimal(&s, '\0', 32, &prefix))
			agent_fail("ip= must be ADDR/PREFIX, the prefix at most 32");
		/* Network byte order: the first `prefix` bits of the address. */
		for (i = 0; i < (int)prefix; i++)
			((unsigned char *)&mask)[i / 8] |= (unsigned char)(0x80 >> (i % 8));
	}
	if (gw) {
		const char *s = gw;

		if (!ip)
			agent_fail("gw= needs ip=");
		if (!ipv4(&s, '\0', &via))
			agent_fail("gw= must be an IPv4 address");
	}
	sock = syscall3(SYS_socket, AF_INET, SOCK_DGRAM, 0);
	if (sock < 0)
		agent_fail("cannot open a socket for eth0's settings");
	copy_iface(&ifr);
	if (mac) {
		for (i = 0; i < 6; i++) {
			int hi = agent_hex_digit(mac[3 * i]), lo = agent_hex_digit(mac[3 * i + 1]);
			char sep = mac[3 * i + 2];

			if (hi < 0 || lo < 0 || sep != (i < 5 ? ':' : '\0'))
				agent_fail("mac= must be aa:bb:cc:dd:ee:ff");
			ifr.ifr_hwaddr.sa_data[i] = (char)(hi << 4 | lo);
		}
		ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		ifioctl(sock, SIOCSIFHWADDR, &ifr, "setting eth0's MAC failed");
	}
	if (ip) {
		set_inet(&ifr.ifr_addr, addr);
		ifioctl(sock, SIOCSIFADDR, &ifr, "setting eth0's address failed");
		set_inet(&ifr.ifr_netmask, mask);
		ifioctl(sock, SIOCSIFNETMASK, &ifr, "setting eth0's netmask failed");
		ifioctl(sock, SIOCGIFFLAGS, &ifr, "reading eth0's flags failed");
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		ifioctl(sock, SIOCSIFFLAGS, &ifr, "bringing up eth0 failed");
	}
	if (gw) {
		static struct rtentry route;

		set_inet(&route.rt_dst, 0);
		set_inet(&route.rt_genmask, 0);
		set_inet(&route.rt_gateway, via);
		route.rt_flags = RTF_UP | RTF_GATEWAY;
		if (syscall3(SYS_ioctl, sock, SIOCADDRT, (long)&route) != 0)
			agent_fail("adding the default route failed");
	}
	syscall3(SYS_close, sock, 0, 0);
}

/*
 * eth0 up, then down again, with no address: for a guest restored ahead of its lease (the
 * port rang), which pays the NIC's open path now, while nobody waits, instead of in the
 * line's eth0 step (the driver's queues, its receive buffers: memory the restored VM has
 * not mapped yet, each page a nested-paging fault on the host). With no address, and no
 * IPv6 in the kernel, the interface sends nothing and answers nothing meanwhile, and it is
 * down again before the line, as the golden guest left it; the line's MAC and address
 * then go on as on any guest. Best effort: a guest without eth0, or a refused "up",
 * changes nothing (the eth0 step pays as before); a refused "down" fails the agent, as
 * a half-made guest is never handed out.
 */
void personalise_network_warm(void)
{
	static struct ifreq ifr;
	long sock = syscall3(SYS_socket, AF_INET, SOCK_DGRAM, 0);

	if (sock < 0)
		return;
	copy_iface(&ifr);
	if (syscall3(SYS_ioctl, sock, SIOCGIFFLAGS, (long)&ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
		ifr.ifr_flags |= IFF_UP;
		if (syscall3(SYS_ioctl, sock, SIOCSIFFLAGS, (long)&ifr) == 0) {
			ifr.ifr_flags &= ~IFF_UP;
			ifioctl(sock, SIOCSIFFLAGS, &ifr, "bringing eth0 down after its warm-up failed");
		}
	}
	syscall3(SYS_close, sock, 0, 0);
}

/* A standard base64 digit's value, or -1. */
static int b64_digit(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

void personalise_tenant_key(const char *b64)
{
	static unsigned char key[KEY_MAX + 1];
	long len = 0, i, n = agent_length(b64), fd, done;

	/* Groups of four digits, '=' padding only at the very end. */
	if (n == 0 || n % 4)
		agent_fail("ssh_key= is not valid base64");
	for (i = 0; i < n; i += 4) {
		int d[4], k, pad = 0;

		for (k = 0; k < 4; k++) {
			char c = b64[i + k];

			if (c == '=' && i + 4 == n && k >= 2 && (k == 3 || b64[i + 3] == '=')) {
				d[k] = 0;
				pad++;
			} else if ((d[k] = b64_digit(c)) < 0 || pad) {
				agent_fail("ssh_key= is not valid base64");
			}
		}
		if (len + 3 - pad > KEY_MAX)
			agent_fail("ssh_key= is too long");
		key[len++] = (unsigned char)(d[0] << 2 | d[1] >> 4);
		if (pad < 2)
			key[len++] = (unsigned char)((d[1] & 15) << 4 | d[2] >> 2);
		if (pad < 1)
			key[len++] = (unsigned char)((d[2] & 3) << 6 | d[3]);
	}
	key[len++] = '\n'; /* the key line's end */
	fd = syscall3(SYS_open, (long)AUTHORIZED_KEYS, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		agent_fail("cannot write " AUTHORIZED_KEYS);
	/* An existing file keeps its mode through O_CREAT: set it. */
	if (syscall3(SYS_fchmod, fd, 0600, 0) != 0)
		agent_fail("cannot make " AUTHORIZED_KEYS " private");
	for (done = 0; done < len;) {
		long w = syscall3(SYS_write, fd, (long)key + done, len - done);

		if (w <= 0)
			agent_fail("cannot write " AUTHORIZED_KEYS);
		done += w;
	}
	syscall3(SYS_close, fd, 0, 0);
}

void personalise_hostname(const char *name)
{
	long len = agent_length(name), fd;

	if (len == 0 || len > 63)
		agent_fail("hostname= must be 1 to 63 characters");
	if (syscall3(SYS_sethostname, (long)name, len, 0) != 0)
		agent_fail("setting the host name failed");
	/* Also where a login shell's tools look. */
	fd = syscall3(SYS_open, (long)"/etc/hostname", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || syscall3(SYS_write, fd, (long)name, len) != len ||
	    syscall3(SYS_write, fd, (long)"\n", 1) != 1)
		agent_fail("cannot write /etc/hostname");
	syscall3(SYS_close, fd, 0, 0);
}
