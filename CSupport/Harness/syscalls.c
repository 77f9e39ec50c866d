/* The system calls `ptlab compare` makes on the live kernel that Swift 6
 * cannot make cleanly. */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <errno.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include "CHarness/syscalls.h"

/* MREMAP_DONTUNMAP (5.7), which older glibc headers do not name. */
#define PTLAB_MREMAP_DONTUNMAP 4
/* mremap is variadic (the new address is the fifth argument), which Swift
 * cannot call. */
void *ptlab_mremap_fixed(void *old_address, size_t length, void *new_address, int dontunmap)
{
    return mremap(old_address, length, length,
                  MREMAP_MAYMOVE | MREMAP_FIXED | (dontunmap ? PTLAB_MREMAP_DONTUNMAP : 0), new_address);
}

/* memfd_create + ftruncate: a shmem file of @size bytes, or -1 with errno. */
int ptlab_memfd(size_t size)
{
    int fd = memfd_create("ptlab-trace", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* PAGEMAP_SCAN (Linux 6.7, include/uapi/linux/fs.h), spelled out for
 * headers that predate it. */
struct ptlab_page_region {
    uint64_t start, end, categories;
};
struct ptlab_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PTLAB_PAGEMAP_SCAN 0xC0606610UL   /* _IOWR('f', 16, struct pm_scan_arg) */
#define PTLAB_PAGE_IS_HUGE (1ULL << 6)    /* PMD-mapped THP, or hugetlb */

long ptlab_huge_mapped_bytes(int pagemap_fd, uint64_t start, uint64_t end)
{
    struct ptlab_page_region vec[64];
    long total = 0;
    uint64_t at = start;
    while (at < end) {
        struct ptlab_pm_scan_arg arg = {
            .size = sizeof(arg), .start = at, .end = end,
            .vec = (uint64_t)(uintptr_t)vec, .vec_len = 64,
            .category_mask = PTLAB_PAGE_IS_HUGE, .return_mask = PTLAB_PAGE_IS_HUGE,
        };
        long n = ioctl(pagemap_fd, PTLAB_PAGEMAP_SCAN, &arg);
        if (n < 0)
            return -1;
        for (long i = 0; i < n; i++)
            total += (long)(vec[i].end - vec[i].start);
        if (arg.walk_end <= at)
            break;
        at = arg.walk_end;
    }
    return total;
}
