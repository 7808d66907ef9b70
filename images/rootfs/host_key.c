/*
 * The guest's SSH host key, made by coinopd and sent in the line (`host_key`, agent.h),
 * written as dropbear's own Ed25519 private key file: what `dropbearkey -t ed25519` writes
 * and dropbear reads (dropbear 2022.83, Debian bookworm's source, ./dropbear.sh: signkey.c and
 * ed25519.c, buf_put_ed25519_priv_key), in the SSH wire encoding of RFC 4253 section 5:
 *
 *   uint32 11, "ssh-ed25519"     the key type, as an SSH string
 *   uint32 64                    the key's length
 *   32 bytes                     the private key (RFC 8032's 32-byte seed)
 *   32 bytes                     the public key
 *
 * 83 bytes, big-endian lengths. The line's value is the last 64 bytes in hex, so the guest
 * needs no Ed25519 arithmetic (and no process: this replaced `dropbearkey -t ed25519`,
 * ~220 ms of a restored lease's way to SSH in the nested lab).
 *
 * It also writes the placeholder key dropbear's listener starts with, before any lease's
 * key exists (host_key_write_placeholder: why it is safe, in PERSONALISE.md).
 *
 * Self-contained (only system calls): a host-side test compiles it with a driver of its own
 * and checks the file with dropbear's `dropbearkey -y`, and the placeholder with dropbear
 * itself.
 */

#include "agent.h"
#include "../initramfs/raw_syscall.h"

#define KEY_TYPE "ssh-ed25519"
#define KEY_TYPE_LEN 11
#define KEY_BYTES 64
#define FILE_BYTES (4 + KEY_TYPE_LEN + 4 + KEY_BYTES)
/*
 * The placeholder: an all-zero seed, and as its "public half" the encoding of y = 2, which
 * is no point of Ed25519's curve ((y^2 - 1) / (d y^2 + 1) is not a square mod 2^255 - 19).
 * Dropbear 2022.83 takes the public half from the file as it is (ed25519.c,
 * buf_get_ed25519_priv_key) and signs with the seed: no signature it (or anyone) makes can
 * verify against a key that is no point, so a session served with this key fails its key
 * exchange at the client ("incorrect signature"), whatever the client trusts. Nothing in it
 * is secret: every guest holds the same one.
 */
#define PLACEHOLDER_HEX                                                                    \
	"0000000000000000000000000000000000000000000000000000000000000000"                 \
	"0200000000000000000000000000000000000000000000000000000000000000"

static int nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void put_u32(unsigned char *p, unsigned int v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

const char *host_key_write(const char *hex, const char *path)
{
	static unsigned char file[FILE_BYTES];
	unsigned char *key = file + 4 + KEY_TYPE_LEN + 4;
	const char *why = 0;
	long fd, done, i;

	for (i = 0; i < KEY_BYTES; i++) {
		int hi = nibble(hex[2 * i]), lo = hi < 0 ? -1 : nibble(hex[2 * i + 1]);

		if (lo < 0)
			return "host_key= must be 128 lowercase hex digits";
		key[i] = (unsigned char)(hi << 4 | lo);
	}
	if (hex[2 * KEY_BYTES])
		return "host_key= must be 128 lowercase hex digits";
	put_u32(file, KEY_TYPE_LEN);
	for (i = 0; i < KEY_TYPE_LEN; i++)
		file[4 + i] = (unsigned char)KEY_TYPE[i];
	put_u32(file + 4 + KEY_TYPE_LEN, KEY_BYTES);
	/* Created 0600; an existing file (a rebooted guest's) is made 0600 before the write. */
	fd = syscall3(SYS_open, (long)path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		why = "cannot write the SSH host key file";
	} else if (syscall3(SYS_fchmod, fd, 0600, 0) != 0) {
		why = "cannot make the SSH host key file private";
	} else {
		for (done = 0; done < FILE_BYTES; done += i) {
			i = syscall3(SYS_write, fd, (long)file + done, FILE_BYTES - done);
			if (i <= 0) {
				why = "cannot write the SSH host key file";
				break;
			}
		}
	}
	if (fd >= 0 && syscall3(SYS_close, fd, 0, 0) != 0 && !why)
		why = "cannot write the SSH host key file";
	/* The private key is in the file now; no copy stays in this process's memory. */
	for (i = 0; i < KEY_BYTES; i++)
		((volatile unsigned char *)key)[i] = 0;
	return why;
}

const char *host_key_write_placeholder(const char *path)
{
	return host_key_write(PLACEHOLDER_HEX, path);
}
