/*
 * coinop-tcp-ts-offset: prints the TCP timestamp offset this guest's kernel gives one fixed
 * loopback connection, 127.0.0.1:40022 -> 127.0.0.1:40023 (both ends made here, nothing
 * else touched), as a decimal number.
 *
 * Why: Linux draws one secret once, at the first TCP connection after boot (net_secret,
 * net/core/secure_seq.c), and keys every connection's initial sequence number, its
 * timestamp offset and the choice of ephemeral ports with it. A guest restored from a
 * snapshot inherits the secret if it was drawn before the snapshot, or draws it from
 * whatever its RNG holds at its first connection. The offset of a fixed connection is a
 * keyed hash of that connection's addresses and ports alone: two guests that print the same
 * value share the secret (the chance that two different secrets give offsets within 2 ms
 * of each other is about 1 in a billion). The nested lab compares three leases restored
 * from one snapshot (images/lab/l1-restore, restore-net-secret; PERSONALISE.md, "Time to
 * spare").
 *
 * The offset is the kernel's TCP_TIMESTAMP reading (its millisecond TCP clock, which is
 * CLOCK_MONOTONIC's, plus the connection's offset) less CLOCK_MONOTONIC in ms, read on
 * either side of it: exact to a millisecond or two. Exit 1 with a message on stderr when a
 * step fails (a port in use, a kernel without TCP timestamps: the sysctl off gives 0).
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FROM_PORT 40022
#define TO_PORT 40023

static int fail(const char *what)
{
	fprintf(stderr, "coinop-tcp-ts-offset: %s: %m\n", what);
	return 1;
}

static uint32_t monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}

static struct sockaddr_in loopback(unsigned short port)
{
	struct sockaddr_in a;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

int main(void)
{
	struct sockaddr_in to = loopback(TO_PORT), from = loopback(FROM_PORT);
	/* Closed with a reset, not into TIME_WAIT: a second run may use the same ports. */
	struct linger reset = { 1, 0 };
	int one = 1, listener, conn;
	uint32_t before, stamp, after;
	socklen_t len = sizeof(stamp);

	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(listener, (struct sockaddr *)&to, sizeof(to)) || listen(listener, 1))
		return fail("listening on 127.0.0.1:40023");
	conn = socket(AF_INET, SOCK_STREAM, 0);
	if (conn < 0 || setsockopt(conn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(conn, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)) ||
	    bind(conn, (struct sockaddr *)&from, sizeof(from)))
		return fail("binding 127.0.0.1:40022");
	if (connect(conn, (struct sockaddr *)&to, sizeof(to)))
		return fail("connecting to 127.0.0.1:40023");
	before = monotonic_ms();
	if (getsockopt(conn, IPPROTO_TCP, TCP_TIMESTAMP, &stamp, &len))
		return fail("reading TCP_TIMESTAMP");
	after = monotonic_ms();
	/* The TCP clock read between the two: the offset within [stamp - after, stamp - before]. */
	printf("%u\n", (unsigned)(stamp - (uint32_t)(before + (after - before) / 2)));
	close(conn);
	close(listener);
	return 0;
}
