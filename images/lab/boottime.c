/*
 * boottime MARKER COMMAND [ARGS...]: runs COMMAND with its stdout on a pipe, copies every
 * line to our stdout, and reports how long after the fork the first line containing MARKER
 * appeared, as "boottime_us=N" on stderr ("boottime_us=none" if it never did). Exits with
 * COMMAND's exit code (128+signal if it was killed).
 *
 * The lab uses it to time coinop-vmm and QEMU the same way: process start to the guest's
 * userspace marker line on the serial console, with CLOCK_MONOTONIC, in L1. busybox has no
 * sub-10 ms clock a shell could read.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
	int fds[2], status;
	long long start, found = -1;
	char *line = NULL;
	size_t cap = 0;
	FILE *out;
	pid_t pid;

	if (argc < 3) {
		fprintf(stderr, "usage: boottime MARKER COMMAND [ARGS...]\n");
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
