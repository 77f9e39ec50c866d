/*
 * syscalls.h - the system calls `ptlab compare` makes that Swift cannot
 *
 * No kernel counterpart: plumbing for replaying traces on the live
 * kernel. mremap takes its new address as a variadic fifth argument, which
 * Swift cannot pass, and memfd_create needs _GNU_SOURCE.
 */
#ifndef PTLAB_SYSCALLS_H
#define PTLAB_SYSCALLS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* mremap(@old_address, @length, @length, MREMAP_MAYMOVE|MREMAP_FIXED,
 * @new_address): MAP_FAILED and errno on failure. */
void *ptlab_mremap_fixed(void *old_address, size_t length, void *new_address);
/* A memfd (shmem file) of @size bytes, close-on-exec: its fd, or -1 and errno. */
int ptlab_memfd(size_t size);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_SYSCALLS_H */
