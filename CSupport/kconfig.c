/*
 * Reading the running kernel's configuration in-process (zlib), not through
 * a zcat child: Foundation's Process starts threads whose stacks are
 * touched later, and a page table they allocate while `ptlab compare`
 * measures a kernel op shows up in this process's VmPTE.
 */
#include <string.h>
#include <zlib.h>
#include "CSupport.h"

long ptlab_kconfig_read(const char *path, void *buf, size_t cap)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        return -1;
    char spill[4096];
    long total = 0;
    int n;
    do {
        /* Past @cap, keep decompressing only to count: the caller learns
         * how big a buffer the whole file needs. */
        char *dst = spill;
        unsigned want = sizeof(spill);
        if ((size_t)total < cap) {
            size_t room = cap - (size_t)total;
            dst = (char *)buf + total;
            want = room < (1u << 20) ? (unsigned)room : (1u << 20);
        }
        n = gzread(f, dst, want);
        if (n > 0)
            total += n;
    } while (n > 0);
    int err = Z_OK;
    gzerror(f, &err);
    /* A truncated or corrupt stream is as unreadable as a missing file: half
     * a config would report options as absent that the kernel has. */
    if (gzclose(f) != Z_OK || n < 0 || err != Z_OK)
        return -1;
    return total;
}

int ptlab_kernel_config_has(const char *line)
{
    gzFile f = gzopen("/proc/config.gz", "rb");
    if (!f)
        return -1;
    char buf[512];
    size_t want = strlen(line);
    int found = 0;
    while (gzgets(f, buf, sizeof(buf))) {
        size_t n = strlen(buf);
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
            buf[--n] = 0;
        if (n == want && memcmp(buf, line, n) == 0) {
            found = 1;
            break;
        }
    }
    int err = 0;
    gzerror(f, &err);
    gzclose(f);
    return (!found && err != Z_OK && err != Z_STREAM_END) ? -1 : found;
}
