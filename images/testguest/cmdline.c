/* Finds `key=value` among space-separated words of the NUL-terminated command line, and
 * prints the whole line (mode=cmdline: what the guest was given, for tests of the host). */
#include "cmdline.h"
#include "serial.h"

/* A VMM's command line is bounded (Linux: 2 KiB); never run off into guest memory. */
#define CMDLINE_MAX 4096

static int word_starts_with(const char *w, const char *key)
{
    while (*key) {
        if (*w++ != *key++)
            return 0;
    }
    return 1;
}

void cmdline_value(u64 cmdline_paddr, const char *key, char *out, u64 out_len)
{
    out[0] = 0;
    if (!cmdline_paddr)
        return;
    const char *s = (const char *)cmdline_paddr;
    u64 key_len = 0;
    while (key[key_len])
        key_len++;
    for (u64 i = 0; i < CMDLINE_MAX && s[i]; i++) {
        if ((i == 0 || s[i - 1] == ' ') && word_starts_with(&s[i], key)) {
            u64 j = 0;
            i += key_len;
            while (j + 1 < out_len && i < CMDLINE_MAX && s[i] && s[i] != ' ')
                out[j++] = s[i++];
            out[j] = 0;
            return;
        }
    }
}

void cmdline_print(u64 cmdline_paddr)
{
    const char *s = (const char *)cmdline_paddr;
    serial_puts("cmdline: ");
    for (u64 i = 0; cmdline_paddr && i < CMDLINE_MAX && s[i]; i++)
        serial_putc((u8)s[i]);
    serial_puts("\n");
}
