/* Small system calls Swift 6 cannot make cleanly (GNU extensions, C globals). */
#define _GNU_SOURCE
#include <sched.h>
#include <pthread.h>
#include <stdio.h>
#include <numa.h>
#include <sys/mman.h>
#include <errno.h>
#include <unistd.h>
#include "CSupport/system.h"

int ptlab_current_cpu(void) { return sched_getcpu(); }

int ptlab_numa_node_allowed(int node)
{
    return numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned int)node);
}

void ptlab_warn(const char *message)
{
    fputs(message, stderr);
    fflush(stderr);
}

/* The CPUs this process may run on (taskset, a cpuset), read once as the
 * library loads, before any thread is pinned: what pinning may choose from
 * and what unpinning gives back. */
static cpu_set_t ptlab_allowed_cpus;

__attribute__((constructor)) static void ptlab_read_allowed_cpus(void)
{
    if (sched_getaffinity(0, sizeof(ptlab_allowed_cpus), &ptlab_allowed_cpus) != 0)
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
            CPU_SET(cpu, &ptlab_allowed_cpus);
}

int ptlab_cpu_allowed(int cpu)
{
    return cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &ptlab_allowed_cpus);
}

int ptlab_pin_to_cpu(int cpu)
{
    if (!ptlab_cpu_allowed(cpu))
        return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int ptlab_unpin(void)
{
    return pthread_setaffinity_np(pthread_self(), sizeof(ptlab_allowed_cpus), &ptlab_allowed_cpus);
}
