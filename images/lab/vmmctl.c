/*
 * vmmctl SOCKET REQUEST: sends one request line (REQUEST, a JSON object) to coinop-vmm's
 * control socket SOCKET, prints the one reply line, and exits 0 if the reply says
 * "ok":true, 1 if it does not, 2 if the socket could not be used.
 *
 * The lab's stress step (images/lab/l1-stress) drives coinop-vmm directly, without coinopd:
 * snapshot, personalise, stop. L1's busybox has no Unix-socket client.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char reply[4096];
	size_t got = 0;
	ssize_t n;
	int fd;

	if (argc != 3 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "usage: vmmctl SOCKET REQUEST\n");
		return 2;
	}
	strcpy(addr.sun_path, argv[1]);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		perror(argv[1]);
		return 2;
	}
	if (dprintf(fd, "%s\n", argv[2]) < 0) {
		perror("write");
		return 2;
	}
	/* One reply line; the VMM keeps the connection open for more requests. */
	while (got < sizeof(reply) - 1 && (n = read(fd, reply + got, sizeof(reply) - 1 - got)) > 0) {
		got += (size_t)n;
		if (memchr(reply, '\n', got))
			break;
	}
	reply[got] = 0;
	fputs(reply, stdout);
	if (got == 0 || reply[got - 1] != '\n')
		putchar('\n');
	return strstr(reply, "\"ok\":true") ? 0 : 1;
}
