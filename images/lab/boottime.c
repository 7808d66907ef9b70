/*
 * boottime MARKER COMMAND [ARGS...]: runs COMMAND with its stdout on a pipe, copies every
 * line to our stdout, and reports how long after the fork the first line containing MARKER
 * appeared, as "boottime_us=N" on stderr ("boottime_us=none" if it never did). Exits with
 * COMMAND's exit code (128+signal if it was killed).
 *
 * The lab uses it to time coinop-vmm and QEMU the same way: process start to the guest's
 * userspace marker line on the serial console, with CLOCK_MONOTONIC, in L1. busybox has no
 * sub-10 ms clock a shell could read.
 *
 * boottime --tcp HOST PORT MARKER SECONDS: the same wait for a server's first line: connects
 * to the IPv4 HOST:PORT again and again (an attempt refused, closed, or not connected within
 * a second is retried 10 ms later) until a line containing MARKER arrives, for at most
 * SECONDS.
 * Prints "uptime_us=N realtime_us=M start_us=S connected_us=C attempts=A" on stdout:
 * CLOCK_BOOTTIME (the clock /proc/uptime shows) and CLOCK_REALTIME (the clock of coinopd's
 * log) when the line arrived; CLOCK_BOOTTIME when this program started and when its last
 * attempt connected, and how many attempts it made (where a slow banner went). Exits 0, or 1
 * if no such line came in time. The lab's SSH-ready probe: one program start in all, and the
 * banner read the moment it arrives (a shell loop of nc, grep and sleep started three
 * programs per attempt, tens of ms each under TCG).
 *
 * boottime --create TIMES SECONDS MARKER PROBE_SECONDS COMMAND [ARGS...]: the lab's payment
 * -> SSH-ready clock in one program. Runs COMMAND (`coinop --json lease create ...`) with
 * its stdout on a pipe, copied to our stdout, and kills it if it runs longer than SECONDS.
 * The moment its output holds the reply's "ssh" object ("host":"A.B.C.D" and "port":N),
 * probes that address as --tcp does, for at most PROBE_SECONDS, while COMMAND finishes
 * beside it: the address is the tenant's once it is printed. Writes one line to the file
 * TIMES, the --tcp line's fields (start_us: when the probe started) followed by
 * "cli_start_us=F cli_reply_us=R cli_exit_us=E" (CLOCK_BOOTTIME: just before COMMAND's
 * fork, when the reply's address arrived, when COMMAND was reaped; 0 for what never
 * happened). Exits with COMMAND's status when that is not 0 (128+signal if it was killed);
 * else 0 once the marker line came, 100 if none came in time, 101 if the reply named no SSH
 * address. The shell this replaces forked a watchdog beside the CLI, killed and reaped it
 * after the CLI's exit, then started the probe: 30-60 ms of program starts under TCG
 * inside every figure, cold and restored alike.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long clock_us(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long now_us(void)
{
	return clock_us(CLOCK_MONOTONIC);
}

/* Milliseconds left until `deadline` (CLOCK_MONOTONIC, us), at most `cap`, at least 0. */
static int left_ms(long long deadline, int cap)
{
	long long left = (deadline - now_us()) / 1000;

	if (left < 0)
		return 0;
	return left < cap ? (int)left : cap;
}

/*
 * One attempt: connects to `addr` and reads until a line containing `marker` has arrived
 * (1), or the connection was refused, not made within a second, or closed (0).
 */
static int tcp_attempt(const struct sockaddr_in *addr, const char *marker, long long deadline,
		       long long *connected)
{
	char buf[1024];
	size_t used = 0;
	struct pollfd p;
	int fd, err = 0, found = 0;
	socklen_t len = sizeof(err);
	ssize_t n;
	char *nl;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) != 0 && errno != EINPROGRESS)
		goto out;
	p.fd = fd;
	p.events = POLLOUT;
	if (poll(&p, 1, left_ms(deadline, 1000)) != 1 ||
	    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
		goto out;
	*connected = clock_us(CLOCK_BOOTTIME);
	/* Connected: the server is up, and its first line may take a while (a guest's sshd
	 * forks for each connection); a reconnect would only start that over. */
	p.events = POLLIN;
	while (!found && poll(&p, 1, left_ms(deadline, 1000 * 1000)) == 1) {
		n = read(fd, buf + used, sizeof(buf) - 1 - used);
		if (n <= 0)
			break;
		used += (size_t)n;
		buf[used] = 0;
		/* Complete lines only; a full buffer without the marker drops its lines. */
		while (!found && (nl = strchr(buf, '\n'))) {
			*nl = 0;
			found = strstr(buf, marker) != NULL;
			used -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, used + 1);
		}
		if (used == sizeof(buf) - 1)
			used = 0;
	}
out:
	close(fd);
	return found;
}

/* Starts `cmd` (PATH searched) with its stdout on a pipe whose read end goes to `*out`;
 * returns its pid, or -1 with a message. */
static pid_t spawn_piped(char **cmd, int *out)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds) != 0) {
		perror("boottime: pipe");
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		perror("boottime: fork");
		return -1;
	}
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		close(fds[0]);
		close(fds[1]);
		execvp(cmd[0], cmd);
		fprintf(stderr, "boottime: cannot run %s\n", cmd[0]);
		_exit(127);
	}
	close(fds[1]);
	*out = fds[0];
	return pid;
}

/* What a probe saw, in the --tcp line's terms. */
struct probe {
	long long started, connected, uptime, realtime;
	int attempts;
};

/*
 * Connects to `addr` again and again (an attempt refused, closed, or not connected within a
 * second is retried 10 ms later) until a line containing `marker` arrives (1), for at most
 * `seconds` (0).
 */
static int probe_tcp(const struct sockaddr_in *addr, const char *marker, long seconds,
		     struct probe *p)
{
	struct timespec pause = { .tv_sec = 0, .tv_nsec = 10 * 1000 * 1000 };
	long long deadline = now_us() + seconds * 1000000LL;

	p->started = clock_us(CLOCK_BOOTTIME);
	while (now_us() < deadline) {
		p->attempts++;
		if (tcp_attempt(addr, marker, deadline, &p->connected)) {
			p->uptime = clock_us(CLOCK_BOOTTIME);
			p->realtime = clock_us(CLOCK_REALTIME);
			return 1;
		}
		nanosleep(&pause, NULL);
	}
	return 0;
}

static void print_probe(FILE *f, const struct probe *p)
{
	fprintf(f, "uptime_us=%lld realtime_us=%lld start_us=%lld connected_us=%lld attempts=%d",
		p->uptime, p->realtime, p->started, p->connected, p->attempts);
}

/* "HOST" and "PORT" as given into `addr`, or a message and 0. */
static int parse_addr(const char *host, const char *port_text, struct sockaddr_in *addr)
{
	char *end;
	long port = strtol(port_text, &end, 10);

	addr->sin_family = AF_INET;
	if (inet_pton(AF_INET, host, &addr->sin_addr) != 1 || end == port_text || *end ||
	    port < 1 || port > 65535) {
		fprintf(stderr, "boottime: bad address %s:%s\n", host, port_text);
		return 0;
	}
	addr->sin_port = htons((unsigned short)port);
	return 1;
}

static int tcp_marker(char **argv)
{
	struct sockaddr_in addr = { 0 };
	struct probe p = { 0 };
	long seconds = strtol(argv[5], NULL, 10);

	if (seconds < 1) {
		fprintf(stderr, "boottime --tcp: bad seconds %s\n", argv[5]);
		return 2;
	}
	if (!parse_addr(argv[2], argv[3], &addr))
		return 2;
	if (!probe_tcp(&addr, argv[4], seconds, &p))
		return 1;
	print_probe(stdout, &p);
	putchar('\n');
	return 0;
}

/*
 * The SSH address of a create reply in `text`: the "host" and "port" inside its
 * `"ssh":{...}` object, once that object has been read whole. 1 when found.
 */
static int reply_ssh(const char *text, char *host, size_t host_len, char *port, size_t port_len)
{
	const char *ssh = strstr(text, "\"ssh\":{"), *end, *h, *q, *pt;
	size_t n;

	if (!ssh || !(end = strchr(ssh, '}')))
		return 0;
	h = strstr(ssh, "\"host\":\"");
	pt = strstr(ssh, "\"port\":");
	if (!h || h > end || !pt || pt > end)
		return 0;
	h += strlen("\"host\":\"");
	q = strchr(h, '"');
	n = q ? (size_t)(q - h) : 0;
	if (!q || q > end || n == 0 || n >= host_len)
		return 0;
	memcpy(host, h, n);
	host[n] = 0;
	pt += strlen("\"port\":");
	n = strspn(pt, "0123456789");
	if (n == 0 || n >= port_len)
		return 0;
	memcpy(port, pt, n);
	port[n] = 0;
	return 1;
}

/* The command --create runs, reaped by its own thread so its exit time is known to the µs
 * while the main thread probes. */
struct child {
	pid_t pid;
	int status;
	long long exited;
};

static void *reap(void *arg)
{
	struct child *c = arg;

	while (waitpid(c->pid, &c->status, 0) < 0 && errno == EINTR)
		;
	c->exited = clock_us(CLOCK_BOOTTIME);
	return NULL;
}

/* Copies what is readable on `fd` to stdout and appends it to `buf` (NUL-terminated, the
 * first `cap` - 1 bytes kept), waiting until `deadline`: 1 while more may come, 0 at end of
 * file or the deadline (`*late` then set). */
static int copy_some(int fd, char *buf, size_t cap, size_t *used, long long deadline, int *late)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char chunk[4096];
	ssize_t n;
	size_t keep;

	if (poll(&p, 1, left_ms(deadline, 1000)) != 1) {
		if (now_us() >= deadline) {
			*late = 1;
			return 0;
		}
		return 1;
	}
	n = read(fd, chunk, sizeof(chunk));
	if (n < 0)
		return errno == EINTR || errno == EAGAIN;
	if (n == 0)
		return 0;
	fwrite(chunk, 1, (size_t)n, stdout);
	keep = (size_t)n < cap - 1 - *used ? (size_t)n : cap - 1 - *used;
	memcpy(buf + *used, chunk, keep);
	*used += keep;
	buf[*used] = 0;
	return 1;
}

/* Joins `thread` if it ends before `deadline` (CLOCK_MONOTONIC, us): 1, else 0. */
static int join_by(pthread_t thread, long long deadline)
{
	long long at = clock_us(CLOCK_REALTIME) + (deadline - now_us());
	struct timespec until = { .tv_sec = at / 1000000, .tv_nsec = at % 1000000 * 1000 };

	return pthread_timedjoin_np(thread, NULL, &until) == 0;
}

static int create_and_probe(char **argv)
{
	static char reply[64 * 1024];
	char host[64] = "", port[8] = "";
	struct sockaddr_in addr = { 0 };
	struct probe p = { 0 };
	struct child c = { 0 };
	long long cli_start, cli_reply = 0, deadline;
	long seconds = strtol(argv[3], NULL, 10), probe_seconds = strtol(argv[5], NULL, 10);
	int out, found = 0, late = 0, banner = 0, rc;
	size_t used = 0;
	pthread_t reaper;
	FILE *times;

	if (seconds < 1 || probe_seconds < 1) {
		fprintf(stderr, "boottime --create: bad seconds %s or %s\n", argv[3], argv[5]);
		return 2;
	}
	cli_start = clock_us(CLOCK_BOOTTIME);
	deadline = now_us() + seconds * 1000000LL;
	c.pid = spawn_piped(argv + 6, &out);
	if (c.pid < 0)
		return 2;
	if (pthread_create(&reaper, NULL, reap, &c) != 0) {
		fprintf(stderr, "boottime: cannot start the thread that reaps %s\n", argv[6]);
		kill(c.pid, SIGKILL);
		return 2;
	}
	while (!found && copy_some(out, reply, sizeof(reply), &used, deadline, &late))
		found = reply_ssh(reply, host, sizeof(host), port, sizeof(port));
	if (found) {
		cli_reply = clock_us(CLOCK_BOOTTIME);
		fflush(stdout);
		if (parse_addr(host, port, &addr))
			banner = probe_tcp(&addr, argv[4], probe_seconds, &p);
		else
			found = 0;
	}
	/* The rest of the command's output, and its end (killed at its deadline). */
	while (!late && copy_some(out, reply, sizeof(reply), &used, deadline, &late))
		;
	fflush(stdout);
	/* A command that closed its stdout may still run: its end is awaited until the same
	 * deadline. */
	if (!late && !join_by(reaper, deadline))
		late = 1;
	if (late) {
		fprintf(stderr, "boottime: %s still ran after %ld s; killed\n", argv[6], seconds);
		kill(c.pid, SIGKILL);
		pthread_join(reaper, NULL);
	}
	times = fopen(argv[2], "w");
	if (times) {
		print_probe(times, &p);
		fprintf(times, " cli_start_us=%lld cli_reply_us=%lld cli_exit_us=%lld\n", cli_start,
			cli_reply, c.exited);
		fclose(times);
	} else {
		perror(argv[2]);
	}
	if (WIFSIGNALED(c.status))
		return 128 + WTERMSIG(c.status);
	rc = WEXITSTATUS(c.status);
	if (rc != 0)
		return rc;
	if (!found) {
		fprintf(stderr, "boottime: the reply of %s named no SSH host and port\n", argv[6]);
		return 101;
	}
	if (!banner) {
		fprintf(stderr, "boottime: no line with %s from %s:%s within %ld s\n", argv[4], host,
			port, probe_seconds);
		return 100;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int fd, status;
	long long start, found = -1;
	char *line = NULL;
	size_t cap = 0;
	FILE *out;
	pid_t pid;

	if (argc == 6 && strcmp(argv[1], "--tcp") == 0)
		return tcp_marker(argv);
	if (argc >= 7 && strcmp(argv[1], "--create") == 0)
		return create_and_probe(argv);
	if (argc < 3) {
		fprintf(stderr, "usage: boottime MARKER COMMAND [ARGS...]\n"
				"       boottime --tcp HOST PORT MARKER SECONDS\n"
				"       boottime --create TIMES SECONDS MARKER PROBE_SECONDS COMMAND [ARGS...]\n");
		return 2;
	}
	start = now_us();
	pid = spawn_piped(argv + 2, &fd);
	if (pid < 0)
		return 2;
	out = fdopen(fd, "r");
	if (!out) {
		perror("boottime: fdopen");
		return 2;
	}
	while (getline(&line, &cap, out) >= 0) {
		if (found < 0 && strstr(line, argv[1]))
			found = now_us() - start;
		fputs(line, stdout);
	}
	fflush(stdout);
	if (waitpid(pid, &status, 0) < 0) {
		perror("boottime: waitpid");
		return 2;
	}
	if (found >= 0)
		fprintf(stderr, "boottime_us=%lld\n", found);
	else
		fprintf(stderr, "boottime_us=none\n");
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
