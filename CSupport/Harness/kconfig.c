/*
 * Reading the running kernel's configuration in-process (zlib), not through
 * a zcat child: Foundation's Process starts threads whose stacks are
 * touched later, and a page table they allocate while `ptlab compare`
 * measures a kernel op shows up in this process's VmPTE.
 */
#include <zlib.h>
#include "CHarness/kconfig.h"

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
