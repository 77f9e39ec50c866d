/*
 * Registry of per-thread page caches, so that per-node counters can be
 * summed and a dying thread's cached pages go back to the allocator.
 */
#include <pthread.h>
#include <stddef.h>
#include "CSupport/pcp.h"

_Thread_local struct ptlab_pcp ptlab_pcp_local;
void *_Atomic ptlab_loaded_allocator_ptr;
/* One in 256 (FreeLatency.defaultSampleShift); the parameter sets it. */
_Atomic uint32_t ptlab_latency_mask = 255;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ptlab_pcp *registry;
static int64_t retired_allocated[PTLAB_PCP_MAX_NODES];
static int64_t retired_numa_hit[PTLAB_PCP_MAX_NODES];
static int64_t retired_nr_pagetable[PTLAB_PCP_MAX_NODES];
static int64_t retired_events[PTLAB_NR_EVENTS];
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;
static void (*_Atomic drain_hook)(struct ptlab_pcp *);

void ptlab_pcp_set_drain_hook(void (*hook)(struct ptlab_pcp *))
{
    atomic_store(&drain_hook, hook);
}

/* Thread exit: give cached pages back, fold the deltas, forget the cache. */
static void pcp_thread_exit(void *arg)
{
    struct ptlab_pcp *pcp = arg;
    void (*hook)(struct ptlab_pcp *) = atomic_load(&drain_hook);
    if (hook)
        hook(pcp);
    pthread_mutex_lock(&registry_lock);
    for (struct ptlab_pcp **pp = &registry; *pp; pp = &(*pp)->next_registered) {
        if (*pp == pcp) {
            *pp = pcp->next_registered;
            break;
        }
    }
    for (int n = 0; n < PTLAB_PCP_MAX_NODES; n++) {
        retired_allocated[n] += atomic_load_explicit(&pcp->allocated_delta[n], memory_order_relaxed);
        retired_numa_hit[n] += atomic_load_explicit(&pcp->numa_hit_delta[n], memory_order_relaxed);
        retired_nr_pagetable[n] += atomic_load_explicit(&pcp->nr_pagetable_delta[n], memory_order_relaxed);
    }
    for (int e = 0; e < PTLAB_NR_EVENTS; e++)
        retired_events[e] += atomic_load_explicit(&pcp->events[e], memory_order_relaxed);
    pthread_mutex_unlock(&registry_lock);
    pcp->registered = 0;
}

static void make_exit_key(void) { pthread_key_create(&exit_key, pcp_thread_exit); }

struct ptlab_pcp *ptlab_pcp_register(void)
{
    struct ptlab_pcp *pcp = &ptlab_pcp_local;
    if (pcp->registered)
        return pcp;
    pthread_once(&exit_key_once, make_exit_key);
    pthread_setspecific(exit_key, pcp);
    pthread_mutex_lock(&registry_lock);
    pcp->next_registered = registry;
    registry = pcp;
    pcp->registered = 1;
    pthread_mutex_unlock(&registry_lock);
    return pcp;
}

/* One per-node delta array (at @offset in every cache) summed over every
 * cache, living or exited. */
static int64_t sum_node_deltas(size_t offset, const int64_t *retired, int node)
{
    pthread_mutex_lock(&registry_lock);
    int64_t sum = retired[node];
    for (struct ptlab_pcp *p = registry; p; p = p->next_registered) {
        _Atomic int64_t *deltas = (_Atomic int64_t *)((char *)p + offset);
        sum += atomic_load_explicit(&deltas[node], memory_order_relaxed);
    }
    pthread_mutex_unlock(&registry_lock);
    return sum;
}

int64_t ptlab_pcp_sum_allocated(int node)
{
    return sum_node_deltas(offsetof(struct ptlab_pcp, allocated_delta), retired_allocated, node);
}

int64_t ptlab_pcp_sum_numa_hit(int node)
{
    return sum_node_deltas(offsetof(struct ptlab_pcp, numa_hit_delta), retired_numa_hit, node);
}

int64_t ptlab_pcp_sum_nr_pagetable(int node)
{
    return sum_node_deltas(offsetof(struct ptlab_pcp, nr_pagetable_delta), retired_nr_pagetable, node);
}

/* One event at a time over every cache, acquiring each: see enum ptlab_event. */
void ptlab_pcp_sum_events(int64_t out[PTLAB_NR_EVENTS])
{
    pthread_mutex_lock(&registry_lock);
    for (int e = 0; e < PTLAB_NR_EVENTS; e++) {
        out[e] = retired_events[e];
        for (struct ptlab_pcp *p = registry; p; p = p->next_registered)
            out[e] += atomic_load_explicit(&p->events[e], memory_order_acquire);
    }
    pthread_mutex_unlock(&registry_lock);
}

int64_t ptlab_pcp_sum_event(enum ptlab_event ev)
{
    int64_t all[PTLAB_NR_EVENTS];
    ptlab_pcp_sum_events(all);
    return all[ev];
}

void ptlab_pcp_reset_counters(void)
{
    pthread_mutex_lock(&registry_lock);
    for (int n = 0; n < PTLAB_PCP_MAX_NODES; n++) {
        retired_allocated[n] = 0;
        retired_numa_hit[n] = 0;
        retired_nr_pagetable[n] = 0;
    }
    for (struct ptlab_pcp *p = registry; p; p = p->next_registered)
        for (int n = 0; n < PTLAB_PCP_MAX_NODES; n++) {
            atomic_store_explicit(&p->allocated_delta[n], 0, memory_order_relaxed);
            atomic_store_explicit(&p->numa_hit_delta[n], 0, memory_order_relaxed);
            atomic_store_explicit(&p->nr_pagetable_delta[n], 0, memory_order_relaxed);
        }
    pthread_mutex_unlock(&registry_lock);
}
