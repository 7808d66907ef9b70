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
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
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

static int tcp_marker(char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	struct timespec pause = { .tv_sec = 0, .tv_nsec = 10 * 1000 * 1000 };
	long long deadline, uptime, realtime, started = clock_us(CLOCK_BOOTTIME), connected = 0;
	int attempts = 0;
	char *end;
	long port = strtol(argv[3], &end, 10), seconds;

	seconds = strtol(argv[5], NULL, 10);
	if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1 || *end || port < 1 || port > 65535 ||
	    seconds < 1) {
		fprintf(stderr, "boottime --tcp: bad address %s:%s or seconds %s\n", argv[2],
			argv[3], argv[5]);
		return 2;
	}
	addr.sin_port = htons((unsigned short)port);
	deadline = now_us() + seconds * 1000000LL;
	while (now_us() < deadline) {
		attempts++;
		if (tcp_attempt(&addr, argv[4], deadline, &connected)) {
			uptime = clock_us(CLOCK_BOOTTIME);
			realtime = clock_us(CLOCK_REALTIME);
			printf("uptime_us=%lld realtime_us=%lld start_us=%lld connected_us=%lld "
			       "attempts=%d\n",
			       uptime, realtime, started, connected, attempts);
			return 0;
		}
		nanosleep(&pause, NULL);
	}
	return 1;
}

int main(int argc, char **argv)
{
	int fds[2], status;
	long long start, found = -1;
	char *line = NULL;
	size_t cap = 0;
	FILE *out;
	pid_t pid;

	if (argc == 6 && strcmp(argv[1], "--tcp") == 0)
		return tcp_marker(argv);
	if (argc < 3) {
		fprintf(stderr, "usage: boottime MARKER COMMAND [ARGS...]\n"
				"       boottime --tcp HOST PORT MARKER SECONDS\n");
		return 2;
	}
	if (pipe(fds) != 0) {
		perror("boottime: pipe");
		return 2;
	}
	start = now_us();
	pid = fork();
	if (pid < 0) {
		perror("boottime: fork");
		return 2;
	}
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		close(fds[0]);
		close(fds[1]);
		execvp(argv[2], argv + 2);
		fprintf(stderr, "boottime: cannot run %s\n", argv[2]);
		_exit(127);
	}
	close(fds[1]);
	out = fdopen(fds[0], "r");
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
