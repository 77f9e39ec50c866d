/*
 * syscalls.h - the system calls `ptlab compare` makes that Swift cannot
 *
 * No kernel counterpart: plumbing for replaying traces on the live
 * kernel. mremap takes its new address as a variadic fifth argument, which
 * Swift cannot pass, memfd_create needs _GNU_SOURCE, and PAGEMAP_SCAN is
 * an ioctl on a struct newer than this system's headers.
 */
#ifndef PTLAB_SYSCALLS_H
#define PTLAB_SYSCALLS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* mremap(@old_address, @length, @length, MREMAP_MAYMOVE|MREMAP_FIXED, and
 * with @dontunmap MREMAP_DONTUNMAP, @new_address): MAP_FAILED and errno on
 * failure. */
void *ptlab_mremap_fixed(void *old_address, size_t length, void *new_address, int dontunmap);
/* A memfd (shmem file) of @size bytes, close-on-exec: its fd, or -1 and errno. */
int ptlab_memfd(size_t size);
/* Bytes of [@start, @end) mapped by huge PMDs (PAGEMAP_SCAN's PAGE_IS_HUGE
 * on an open /proc/self/pagemap): a walk of that range alone, where
 * /proc/self/smaps walks every VMA of the process. -1 and errno when the
 * kernel has no PAGEMAP_SCAN (before 6.7: ENOTTY or EINVAL). */
long ptlab_huge_mapped_bytes(int pagemap_fd, uint64_t start, uint64_t end);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_SYSCALLS_H */
