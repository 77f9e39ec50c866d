/*
 * system.h - the system calls Swift cannot make cleanly
 *
 * No kernel counterpart: this is plumbing. Each function exists because
 * the call it wraps is out of Swift's reach, not to add behaviour: mremap
 * takes its new address as a variadic fifth argument, CPU affinity goes
 * through the cpu_set_t macros (GNU extensions), libnuma's node mask is a
 * C global, and memfd_create needs _GNU_SOURCE. The lab uses them to pin
 * walkers to CPUs, to replay mremap and shmem mappings against the live
 * kernel (`ptlab compare`), and to check NUMA placement.
 */
#ifndef PTLAB_SYSTEM_H
#define PTLAB_SYSTEM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* sched_getcpu(). */
int ptlab_current_cpu(void);
/* Pin the calling thread to @cpu; 0 on success, else an errno. */
int ptlab_pin_to_cpu(int cpu);
/* Let the calling thread run on any CPU again. */
int ptlab_unpin(void);
/* mremap(@old_address, @length, @length, MREMAP_MAYMOVE|MREMAP_FIXED,
 * @new_address): MAP_FAILED and errno on failure. */
void *ptlab_mremap_fixed(void *old_address, size_t length, void *new_address);
/* A memfd (shmem file) of @size bytes, close-on-exec: its fd, or -1 and errno. */
int ptlab_memfd(size_t size);
/* Whether @node is in libnuma's numa_all_nodes_ptr (libnuma). */
int ptlab_numa_node_allowed(int node);
/* @message to stderr, flushed. */
void ptlab_warn(const char *message);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_SYSTEM_H */
