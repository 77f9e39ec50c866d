/*
 * Reading the running kernel's configuration in-process (zlib), not through
 * a zcat child: Foundation's Process starts threads whose stacks are
 * touched later, and a page table they allocate while `ptlab compare`
 * measures a kernel op shows up in this process's VmPTE.
 */
#include <string.h>
#include <zlib.h>
#include "CSupport.h"

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
