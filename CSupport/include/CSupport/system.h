/*
 * system.h - the system calls Swift cannot make cleanly
 *
 * No kernel counterpart: this is plumbing. Each function exists because
 * the call it wraps is out of Swift's reach, not to add behaviour: mremap
 * takes its new address as a variadic fifth argument, CPU affinity goes
 * through the cpu_set_t macros (GNU extensions) and libnuma's node mask is
 * a C global. The model uses them to pin walkers to CPUs and to learn
 * which NUMA nodes it may allocate on; the harness's own system calls
 * (mremap, memfd for `ptlab compare`) are in CHarness/syscalls.h.
 */
#ifndef PTLAB_SYSTEM_H
#define PTLAB_SYSTEM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* sched_getcpu(). */
int ptlab_current_cpu(void);
/* Whether the process may run on @cpu (its affinity when it started). */
int ptlab_cpu_allowed(int cpu);
/* Pin the calling thread to @cpu; 0 on success, else an errno (EINVAL for
 * a CPU the process may not use). */
int ptlab_pin_to_cpu(int cpu);
/* Let the calling thread run on the process's CPUs again. */
int ptlab_unpin(void);
/* Whether @node is in libnuma's numa_all_nodes_ptr (libnuma). */
int ptlab_numa_node_allowed(int node);
/* @message to stderr, flushed. */
void ptlab_warn(const char *message);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_SYSTEM_H */
