/*
 * The personalisation line's words (agent.h), checked before anything is applied:
 * `coinop-personalise/1 KEY=VALUE ...` (PERSONALISE.md). Words are split on spaces; a
 * later word with the same key wins; keys of a later version are ignored; an empty value
 * counts as no value. The checks here are on the characters; personalise.c checks the
 * numbers (octets, prefix, clock) as it applies them, so a bad one still fails before 123.
 */

#include <stddef.h>

#include "agent.h"

/* Whether every character of `s` is in `allowed`. */
static int only(const char *s, const char *allowed)
{
	for (; *s; s++) {
		const char *a = allowed;

		while (*a && *a != *s)
			a++;
		if (!*a)
			return 0;
	}
	return 1;
}

static int has(const char *s, char c)
{
	for (; *s; s++)
		if (*s == c)
			return 1;
	return 0;
}

static int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

#define DIGITS "0123456789"
#define HEX DIGITS "abcdef"

static int lower_hex(const char *s, long len)
{
	return s && agent_length(s) == len && only(s, HEX);
}

static const char *check(const struct lease_line *l)
{
	const char *t = l->time, *m = l->mac;
	int i;

	if (!lower_hex(l->entropy, 64))
		return "entropy= must be 64 lowercase hex digits";
	/* Digits and at most one dot, neither first nor last. */
	if (!t || !only(t, DIGITS ".") || t[0] == '.' || t[agent_length(t) - 1] == '.')
		return "time= must be SECONDS.NANOSECONDS";
	while (*t && *t != '.')
		t++;
	if (*t && has(t + 1, '.'))
		return "time= must be SECONDS.NANOSECONDS";
	if (!l->hostname || !only(l->hostname, DIGITS "abcdefghijklmnopqrstuvwxyz.-") ||
	    agent_length(l->hostname) > 63)
		return "hostname= must be [a-z0-9.-], at most 63 characters";
	if (l->ip && (!only(l->ip, DIGITS "./") || !has(l->ip, '/')))
		return "ip= must be ADDR/PREFIX";
	if (l->gw && !only(l->gw, DIGITS "."))
		return "gw= must be an IPv4 address";
	if (m) {
		for (i = 0; i < 17; i++)
			if (!m[i] || (i % 3 == 2 ? m[i] != ':' : !has(HEX, m[i])))
				return "mac= must be aa:bb:cc:dd:ee:ff";
		if (m[17])
			return "mac= must be aa:bb:cc:dd:ee:ff";
	}
	if (l->ssh_key &&
	    !only(l->ssh_key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" DIGITS "+/="))
		return "ssh_key= must be standard base64";
	if (l->host_key && !lower_hex(l->host_key, 128))
		return "host_key= must be 128 lowercase hex digits";
	return 0;
}

const char *line_parse(char *line, struct lease_line *out)
{
	static const struct {
		const char *name;
		unsigned long offset;
	} keys[] = {
		{ "entropy", offsetof(struct lease_line, entropy) },
		{ "time", offsetof(struct lease_line, time) },
		{ "hostname", offsetof(struct lease_line, hostname) },
		{ "ip", offsetof(struct lease_line, ip) },
		{ "gw", offsetof(struct lease_line, gw) },
		{ "mac", offsetof(struct lease_line, mac) },
		{ "ssh_key", offsetof(struct lease_line, ssh_key) },
		{ "host_key", offsetof(struct lease_line, host_key) },
	};
	/* Its own words of "'WORD' is not KEY=VALUE" (a word fits the line). */
	static char why[LINE_MAX + 32];
	char *p = line;
	int first = 1;
	unsigned long k;

	for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		*(const char **)((char *)out + keys[k].offset) = 0;
	while (*p) {
		char *word, *eq;

		while (*p == ' ')
			p++;
		if (!*p)
			break;
		word = p;
		while (*p && *p != ' ')
			p++;
		if (*p)
			*p++ = '\0';
		if (first) {
			if (!same(word, "coinop-personalise/1"))
				return "the line does not start with coinop-personalise/1";
			first = 0;
			continue;
		}
		for (eq = word; *eq && *eq != '='; eq++)
			;
		if (!*eq) {
			long n = 0, i;
			const char *pre = "'", *post = "' is not KEY=VALUE";

			for (i = 0; pre[i]; i++)
				why[n++] = pre[i];
			for (i = 0; word[i]; i++)
				why[n++] = word[i];
			for (i = 0; post[i]; i++)
				why[n++] = post[i];
			why[n] = '\0';
			return why;
		}
		*eq = '\0';
		for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			if (same(word, keys[k].name))
				*(const char **)((char *)out + keys[k].offset) = eq[1] ? eq + 1 : 0;
	}
	if (first)
		return "the line does not start with coinop-personalise/1";
	return check(out);
}
