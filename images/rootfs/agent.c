/*
 * coinop-agent: the guest agent of PERSONALISE.md in one process. ./init runs it once in
 * agent mode (coinop.personalise=1), after what every lease shares. In order:
 *
 *   1. dropbear started (it keeps running; stderr on the console, its log to syslog) with
 *      a placeholder host key that cannot sign for itself (host_key.c), and waited for
 *      until it listens on port 22 and can re-exec itself; the placeholder file removed.
 *      No lease can reach it yet: eth0 has no address.
 *   2. 124 to the boot timer, then the line from the personalisation port (portline.c);
 *      the golden snapshot is taken while it waits there, dropbear already listening
 *   3. the line checked (line.c): a malformed one fails before anything is applied
 *   4. entropy into the RNG and a reseed, the clock, the host name, the tenant's key
 *      (personalise.c)
 *   5. the SSH host key file from the line's host_key (host_key.c); a line without one (an
 *      older coinopd) gets a fresh key from dropbearkey, made after the reseed
 *   6. dropbear checked still running; then eth0 (its address: from here on connections
 *      can arrive, and every file they need is written)
 *   7. 123 to the boot timer (guest_ready)
 *   8. one connection to dropbear on loopback, its banner read (warm_sshd), unless it was
 *      made before the line: a guest restored ahead of its lease is rung while it waits
 *      (PERSONALISE.md, "Time to spare"), and makes that connection then, with the
 *      placeholder key back in place for it, and brings eth0 up and down once, with no
 *      address, to pay its driver's open path too (warm_before_line); its RNG made its
 *      own from RDRAND first, for the network secret that connection draws
 *   9. what it did, and the uptime at each step's end (the lab's per-phase figures),
 *      printed 2 s after guest_ready, off the tenant's first connection (report_later)
 *
 * Why dropbear before the snapshot is safe (PERSONALISE.md has the whole argument): its
 * listener re-executes itself for every connection it accepts (dropbear >= 2022.82,
 * DROPBEAR_DO_REEXEC), and the new program loads the host key from its file and seeds its
 * own PRNG from the kernel then, after this lease's key and reseed; the listener holds only
 * the placeholder, which no session can use.
 *
 * One process, not a shell running portline, coinop-personalise, dropbearkey and outb:
 * after a restore each process start costs page faults on memory the guests share, tens of
 * ms each in the nested lab. Freestanding (no libc, not even a static one: a C library's
 * start-up would cost more page faults), like ../initramfs/outb.c. Any failure is
 * `coinop-agent: error: ...` on stderr (the console), exit 1 and no 123: coinopd then
 * fails the boot at its timeout (the lease is refunded) rather than hand out a half-made
 * guest.
 */

#include "agent.h"
#include "../initramfs/raw_syscall.h"

#define GUEST_READY 123
#define HOST_KEY_FILE "/etc/dropbear/dropbear_ed25519_host_key"
#define DROPBEAR "/usr/sbin/dropbear"
#define DROPBEARKEY "/usr/bin/dropbearkey"
#define CLOCK_BOOTTIME 7
/* The socket(2) and poll(2) constants warm_sshd uses (x86-64 Linux's values; no libc). */
#define WARM_AF_INET 2
#define WARM_SOCK_STREAM_CLOEXEC (1 | 02000000)
#define WARM_POLLIN 1
#define WNOHANG 1
#define SYS_dup2 33
/* How long after guest_ready the agent's report goes to the console (see report_later). */
#define REPORT_AFTER_READY_MS 2000
/* How long dropbear may take to listen: generous for a loaded nested host. */
#define SSHD_WAIT_MS 10000
/* /proc/net/tcp's line for a socket listening on port 22 (0x16) on any IPv4 address. */
#define LISTENING_ON_22 ":0016 00000000:0000 0A "

long agent_length(const char *s)
{
	long len = 0;

	while (s[len])
		len++;
	return len;
}

int agent_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void say(long fd, const char *s)
{
	long done = 0, len = agent_length(s), n;

	while (done < len && (n = syscall3(SYS_write, fd, (long)s + done, len - done)) > 0)
		done += n;
}

void agent_fail(const char *msg)
{
	say(2, "coinop-agent: error: ");
	say(2, msg);
	say(2, "\n");
	syscall3(SYS_exit, 1, 0, 0);
	__builtin_unreachable();
}

/* Appends `s` to the NUL-terminated text in `buf` of `cap` bytes (cut to fit). */
static void append(char *buf, long cap, const char *s)
{
	long len = agent_length(buf);

	while (*s && len < cap - 1)
		buf[len++] = *s++;
	buf[len] = '\0';
}

unsigned long agent_uptime_us(void)
{
	struct {
		long sec;
		long nsec;
	} ts = { 0, 0 };

	syscall3(SYS_clock_gettime, CLOCK_BOOTTIME, (long)&ts, 0);
	return (unsigned long)ts.sec * 1000000 + (unsigned long)ts.nsec / 1000;
}

/* Milliseconds since boot. */
static unsigned long uptime_ms(void)
{
	return agent_uptime_us() / 1000;
}

/* " NAME=S.mmm" per step, S.mmm its end in seconds since boot. */
static char stamps[512];

static void stamp(const char *name)
{
	unsigned long ms = uptime_ms(), sec = ms / 1000;
	char num[32];
	int i = 31, k;

	num[i] = '\0';
	for (k = 0; k < 3; k++, ms /= 10)
		num[--i] = (char)('0' + ms % 10);
	num[--i] = '.';
	do {
		num[--i] = (char)('0' + sec % 10);
		sec /= 10;
	} while (sec);
	append(stamps, sizeof(stamps), " ");
	append(stamps, sizeof(stamps), name);
	append(stamps, sizeof(stamps), "=");
	append(stamps, sizeof(stamps), num + i);
}

/* Starts `argv` (stdout to /dev/null when `quiet`); its pid. */
static long spawn(char *const argv[], char **envp, int quiet)
{
	long pid = syscall3(SYS_fork, 0, 0, 0);

	if (pid == 0) {
		if (quiet) {
			long null = syscall3(SYS_open, (long)"/dev/null", O_WRONLY, 0);

			if (null >= 0)
				syscall3(SYS_dup2, null, 1, 0);
		}
		syscall3(SYS_execve, (long)argv[0], (long)argv, (long)envp);
		say(2, "coinop-agent: error: cannot run ");
		say(2, argv[0]);
		say(2, "\n");
		syscall3(SYS_exit, 127, 0, 0);
	}
	if (pid < 0)
		agent_fail("fork failed");
	return pid;
}

/* A fresh host key by dropbearkey, for a line without host_key. */
static void make_host_key(char **envp)
{
	static char *const argv[] = { DROPBEARKEY, "-t", "ed25519", "-f", HOST_KEY_FILE, 0 };
	int status = 0;
	long pid;

	/* dropbearkey will not overwrite a key (a rebooted guest's). */
	syscall3(SYS_unlink, (long)HOST_KEY_FILE, 0, 0);
	pid = spawn(argv, envp, 1);
	if (syscall4(SYS_wait4, pid, (long)&status, 0, 0) != pid || status != 0)
		agent_fail("dropbearkey failed to make an SSH host key");
}

/* Whether a socket listens on port 22 (IPv4, where coinopd forwards the tenant to). */
static int listening_on_22(void)
{
	static char table[16384];
	long fd = syscall3(SYS_open, (long)"/proc/net/tcp", O_RDONLY, 0), len = 0, n, i;
	const char *want = LISTENING_ON_22;
	long want_len = agent_length(want);

	if (fd < 0)
		agent_fail("cannot read /proc/net/tcp");
	while (len < (long)sizeof(table) &&
	       (n = syscall3(SYS_read, fd, (long)table + len, (long)sizeof(table) - len)) > 0)
		len += n;
	syscall3(SYS_close, fd, 0, 0);
	for (i = 0; i + want_len <= len; i++) {
		long k = 0;

		while (k < want_len && table[i + k] == want[k])
			k++;
		if (k == want_len)
			return 1;
	}
	return 0;
}

/* Writes `n` in decimal after `s` (NUL-terminated, room enough); returns the end. */
static char *put_decimal(char *s, unsigned long n)
{
	char digits[24];
	int i = 0;

	do {
		digits[i++] = (char)('0' + n % 10);
		n /= 10;
	} while (n);
	while (i)
		*s++ = digits[--i];
	*s = '\0';
	return s;
}

/*
 * Whether process `pid` holds its own program open, as dropbear's listener does once it
 * can re-exec itself for each connection (svr-main.c: it opens argv[0] after it listens;
 * fexecve of that fd per connection). Without that fd dropbear would serve connections
 * from a plain fork of the listener, with the listener's key: the placeholder.
 */
static int holds_own_program(long pid)
{
	static const char want[] = DROPBEAR;
	char path[64], target[sizeof(want) + 1], *end;
	long fd, n, k;

	for (fd = 0; fd < 32; fd++) {
		path[0] = '\0';
		append(path, sizeof(path), "/proc/");
		end = put_decimal(path + agent_length(path), (unsigned long)pid);
		append(end, (long)sizeof(path) - (end - path), "/fd/");
		put_decimal(path + agent_length(path), (unsigned long)fd);
		n = syscall3(SYS_readlink, (long)path, (long)target, (long)sizeof(target));
		if (n != (long)sizeof(want) - 1)
			continue;
		for (k = 0; k < n && target[k] == want[k]; k++)
			;
		if (k == n)
			return 1;
	}
	return 0;
}

/*
 * Starts dropbear before the 124 (in the foreground of its own process, -F: no fork to
 * daemonize) with the placeholder key (host_key.c) in its key file, waits until it
 * listens and holds its own program open to re-exec itself per connection, then removes
 * the placeholder file: the lease's key goes there after the line. Fails if dropbear ends
 * or takes too long. Its pid.
 *
 * Not -R (make host keys as needed): with it the listener would hold no key at all, but
 * each connection's dropbear would then offer every key type it has (DSS, RSA, ECDSA,
 * Ed25519 in Debian's build) and make a missing one on demand: a client preferring RSA
 * would get a key no reply named. Without -R dropbear offers only the types it loaded,
 * and the listener must load one to start.
 *
 * Its stderr is the console but its log goes to syslog (no -E), which the rootfs does not
 * run: dropbear logs every connection before its banner, and each console byte is a VM
 * exit on the way to SSH (in the lab the create reply -> banner gap was ~3x the old one
 * with the log there).
 */
static long start_sshd(char **envp)
{
	static char *const argv[] = { DROPBEAR, "-F", "-r", HOST_KEY_FILE, "-p", "22", 0 };
	static const long pause[2] = { 0, 1000000 }; /* 1 ms */
	unsigned long until = uptime_ms() + SSHD_WAIT_MS;
	const char *why = host_key_write_placeholder(HOST_KEY_FILE);
	long pid;
	int status = 0;

	if (why)
		agent_fail(why);
	pid = spawn(argv, envp, 0);
	while (!listening_on_22() || !holds_own_program(pid)) {
		if (syscall4(SYS_wait4, pid, (long)&status, WNOHANG, 0) == pid)
			agent_fail("dropbear ended before it listened on port 22");
		if (uptime_ms() > until)
			agent_fail("dropbear does not listen on port 22, able to re-exec itself, after 10 s");
		syscall3(SYS_nanosleep, (long)pause, 0, 0);
	}
	/* Loaded by the listener (before it listened); no connection's dropbear may find it. */
	if (syscall3(SYS_unlink, (long)HOST_KEY_FILE, 0, 0) != 0)
		agent_fail("cannot remove the placeholder SSH host key");
	return pid;
}

/* dropbear started by start_sshd still runs (it serves every connection from then on). */
static void check_sshd(long pid)
{
	int status = 0;

	if (syscall4(SYS_wait4, pid, (long)&status, WNOHANG, 0) != 0)
		agent_fail("dropbear is no longer running");
}

/*
 * One connection to dropbear on 127.0.0.1:22: its banner read, then closed. Between
 * guest_ready and the tenant's first connection the guest is idle (coinopd's reply, the
 * tenant's client, the network); this connection spends that time on the first
 * connection's costs: the listener's fork, the re-executed dropbear's program and its key
 * file, the kernel's TCP paths. In a restored guest those touch memory its VM has not
 * mapped since the restore (each page a nested-paging fault on the host), and the pages
 * the tenant's connection then needs are mostly the same ones. Best effort: it never fails
 * the agent, and gives up after 2 s, or as soon as `give_up` (when given; asked every 5 ms)
 * says so. dropbear logs it as a connection from 127.0.0.1 that ended before
 * authentication.
 */
static void warm_sshd(int (*give_up)(void))
{
	/* struct sockaddr_in for 127.0.0.1:22, in network byte order. */
	struct {
		unsigned short family, port;
		unsigned char addr[4];
		char zero[8];
	} to = { WARM_AF_INET, 22 << 8, { 127, 0, 0, 1 }, { 0 } };
	struct {
		int fd;
		short events, revents;
	} in;
	static char banner[256];
	long fd = syscall3(SYS_socket, WARM_AF_INET, WARM_SOCK_STREAM_CLOEXEC, 0), slice, ready = 0;

	if (fd < 0)
		return;
	if (syscall3(SYS_connect, fd, (long)&to, sizeof(to)) == 0) {
		in.fd = (int)fd;
		in.events = WARM_POLLIN;
		slice = give_up ? 5 : 2000;
		for (long waited = 0; waited < 2000 && ready == 0; waited += slice) {
			if (give_up && give_up())
				break;
			in.revents = 0;
			ready = syscall3(SYS_poll, (long)&in, 1, slice);
		}
		if (ready > 0)
			syscall3(SYS_read, fd, (long)banner, sizeof(banner));
	}
	syscall3(SYS_close, fd, 0, 0);
}

/* Whether warm_before_line ran, when (uptime ms) it started, how long it took (ms) and
 * whether the line cut it short, for the report. */
static int warmed_before_line, warm_cut_short;
static unsigned long warm_before_line_at, warm_before_line_ms;

/* warm_sshd's give_up before the line: bytes of the line wait (noted for the report). */
static int line_came(void)
{
	if (port_line_waiting())
		warm_cut_short = 1;
	return warm_cut_short;
}

/*
 * The port rang: this guest was restored ahead of its lease and has time to spare until
 * a create takes it. It spends it on warm_sshd's connection now instead of after
 * guest_ready, where it would share the lease's vCPU with the tenant's first connection.
 * eth0 has no address yet, so this loopback connection is the only one that can reach
 * dropbear: its re-executed program needs a host key to get as far as its banner, so the
 * placeholder (which cannot sign: host_key.c) is put back for it and removed again
 * before the line is read, the state the golden guest was snapshotted in. Nothing of any
 * lease exists yet, and the kernel RNG is reseeded with the line's entropy after this.
 * But the connection is the guest's first over TCP, at which the kernel draws the
 * network secret it keeps for good (TCP sequence numbers, timestamp offsets, ephemeral
 * ports: tcp_ts_offset.c), from the RNG state the restore brought. Whether that made it
 * every warm lease's depended on how far the golden guest's RNG had got at the snapshot
 * (PERSONALISE.md, "Time to spare"); so the RNG is made this guest's first, from the
 * CPU's RDRAND (personalise_reseed_from_cpu), and a CPU without a usable RDRAND gets no
 * warm-up before the line. A line that comes meanwhile (a create took this guest as soon as it
 * was restored) ends the wait for the banner once seen; the re-executed dropbear still
 * shares the vCPU until it is done (PERSONALISE.md: such lines were read late in the lab).
 */
static void warm_before_line(void)
{
	unsigned long start = uptime_ms();

	warm_before_line_at = start;

	if (personalise_reseed_from_cpu())
		return; /* warm_sshd after guest_ready instead, as on a guest never rung */
	if (host_key_write_placeholder(HOST_KEY_FILE))
		return; /* Best effort, as warm_sshd: the tenant's connection pays instead. */
	warm_sshd(line_came);
	if (syscall3(SYS_unlink, (long)HOST_KEY_FILE, 0, 0) != 0)
		agent_fail("cannot remove the placeholder SSH host key after the warm-up");
	/* The NIC's open path too, unless the line is already here. */
	if (!line_came())
		personalise_network_warm();
	/* Said only while nobody waits (each console byte is a VM exit): that the spare time is
	 * spent, for an operator reading a warm guest's console, and for the lab, which waits
	 * for it before it measures a warm lease on a quiet host (images/lab/l1-restore,
	 * restore_wait_warm). */
	if (!line_came())
		say(1, "coinop-agent: warmed\n");
	warmed_before_line = 1;
	warm_before_line_ms = uptime_ms() - start;
	port_longest_pause_us = 0; /* from here on: the wait for the line after the warm-up */
}

/*
 * Waits until REPORT_AFTER_READY_MS after `ready_ms` (uptime at guest_ready). Every byte the
 * agent writes to the console is a VM exit (the UART takes one byte per write), and its
 * report is ~400 bytes: written right after guest_ready, those exits fell on the tenant's
 * first connection, which arrives then. In the nested lab that cost a warm lease's first
 * connect 70-150 ms (87-213 ms against 9-26 ms with the report 1.5 s later) and its
 * banner more; on bare metal it is under a millisecond, and the wait costs nothing either
 * way (the agent sleeps). A lease stopped before then ends without the report: it is
 * only the operator's (and the lab's) record of the steps, whose stamps are taken as they
 * happen, not when printed.
 */
static void report_later(unsigned long ready_ms)
{
	unsigned long waited = uptime_ms() - ready_ms, left;
	long pause[2];

	if (waited >= REPORT_AFTER_READY_MS)
		return;
	left = REPORT_AFTER_READY_MS - waited;
	pause[0] = (long)(left / 1000);
	pause[1] = (long)(left % 1000) * 1000000;
	syscall3(SYS_nanosleep, (long)pause, 0, 0);
}

static void guest_ready(void)
{
	if (syscall3(SYS_ioperm, BOOT_TIMER, 1, 1) != 0)
		agent_fail("ioperm failed (root and CONFIG_X86_IOPL_IOPERM needed)");
	__asm__ volatile("outb %b0, %w1" : : "a"((unsigned char)GUEST_READY), "Nd"(BOOT_TIMER));
}

__attribute__((used)) static void start(long *sp)
{
	static char line[LINE_MAX + 1];
	static char report[1024];
	static char listening_at[32];
	long argc = sp[0], len, i, sshd;
	unsigned long ready_ms;
	char **envp = (char **)(sp + 1 + argc + 1);
	struct lease_line l;
	const char *why = 0;

	/* 1. dropbear, before the snapshot point. Its uptime goes in the report: for a restored
	 * guest it is the golden boot's. */
	sshd = start_sshd(envp);
	put_decimal(listening_at, uptime_ms());
	/* 2. Ask, and read the line. */
	len = port_line_read(line, &why, warm_before_line);
	if (len == 0) {
		append(report, sizeof(report), "reading the personalisation port failed: ");
		append(report, sizeof(report), why);
		agent_fail(report);
	}
	line[len - 1] = '\0'; /* its newline */
	stamp("line");
	/* 3. Check it whole before anything is applied. */
	why = line_parse(line, &l);
	if (why) {
		append(report, sizeof(report), "malformed personalisation line: ");
		append(report, sizeof(report), why);
		agent_fail(report);
	}
	stamp("parse");
	/* 4. Entropy first: nothing may draw from the RNG before the reseed. */
	personalise_reseed(l.entropy);
	stamp("reseed");
	personalise_clock(l.time);
	personalise_hostname(l.hostname);
	stamp("clock_name");
	if (l.ssh_key)
		personalise_tenant_key(l.ssh_key);
	stamp("key");
	/* 5. The SSH host key. */
	if (l.host_key) {
		why = host_key_write(l.host_key, HOST_KEY_FILE);
		/* In the file now: no copy stays in the line. */
		for (i = 0; l.host_key[i]; i++)
			((volatile char *)l.host_key)[i] = '0';
		if (why)
			agent_fail(why);
	} else {
		make_host_key(envp);
	}
	stamp("hostkey");
	/* 6. dropbear still there; then eth0, last: until it has its address no connection can
	 * reach dropbear, and by then every file a connection's dropbear reads is this
	 * lease's. gw= only with an address (as the command-line mode). */
	check_sshd(sshd);
	stamp("sshd");
	if (l.mac || l.ip)
		personalise_network(l.mac, l.ip, l.ip ? l.gw : 0);
	stamp("eth0");
	/* 7. guest_ready. What the agent says follows it, later still: every byte written to
	 * the console's UART is a VM exit, so none is on the lease's way to SSH. */
	guest_ready();
	ready_ms = uptime_ms();
	stamp("ready");
	/* 8. The tenant's first connection's costs, paid while nobody waits (unless paid
	 * before the line already). */
	if (!warmed_before_line)
		warm_sshd(0);
	stamp("sshd_warm");
	append(report, sizeof(report), "coinop-agent: personalised host=");
	append(report, sizeof(report), l.hostname);
	append(report, sizeof(report), " ip=");
	append(report, sizeof(report), l.ip ? l.ip : "none");
	append(report, sizeof(report), " mac=");
	append(report, sizeof(report), l.mac ? l.mac : "kept");
	append(report, sizeof(report), l.ssh_key ? " ssh=key" : " ssh=nokey");
	append(report, sizeof(report), l.host_key ? " host_key=given" : " host_key=made");
	append(report, sizeof(report), " sshd_listening_since_uptime_ms=");
	append(report, sizeof(report), listening_at);
	if (warmed_before_line) {
		static char warm_ms[24];

		put_decimal(warm_ms, warm_before_line_ms);
		append(report, sizeof(report), " sshd_warmed_before_line_ms=");
		append(report, sizeof(report), warm_ms);
		put_decimal(warm_ms, warm_before_line_at);
		append(report, sizeof(report), " from_uptime_ms=");
		append(report, sizeof(report), warm_ms);
		if (warm_cut_short)
			append(report, sizeof(report), " cut_short_by_the_line");
	}
	{
		/* The lab's diagnostic of late wake-ups while waiting for the line (after the
		 * warm-up, when there was one): a pause of 0.2-3.2 ms that lasted far longer. */
		static char pause_ms[24];

		put_decimal(pause_ms, port_longest_pause_us / 1000);
		append(report, sizeof(report), " longest_pause_ms=");
		append(report, sizeof(report), pause_ms);
		put_decimal(pause_ms, port_longest_pause_end_us / 1000);
		append(report, sizeof(report), " ending_at_uptime_ms=");
		append(report, sizeof(report), pause_ms);
		put_decimal(pause_ms, port_doorbell_wakes);
		append(report, sizeof(report), " doorbell_wakes=");
		append(report, sizeof(report), pause_ms);
	}
	append(report, sizeof(report), "\n");
	append(report, sizeof(report), "coinop-agent: uptime at each step's end:");
	append(report, sizeof(report), stamps);
	append(report, sizeof(report), "\n");
	report_later(ready_ms);
	say(1, report);
	syscall3(SYS_exit, 0, 0, 0);
}

RAW_ENTRY_POINT
