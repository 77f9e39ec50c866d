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

int ptlab_pin_to_cpu(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int ptlab_unpin(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}
