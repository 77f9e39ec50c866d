/*
 * pcp.h - the allocator's shared state: zones, per-thread page lists, and
 * counters kept per thread
 *
 * The kernel's page allocator is fast because its common case touches
 * nothing shared: an order-0 page comes from and goes back to the per-CPU
 * list (struct per_cpu_pages), zone->lock is taken only to refill or drain
 * a batch, and the statistics are per-CPU deltas (vm_event, vmstat diffs)
 * that readers sum. The lab has the same three layers, per thread instead
 * of per CPU, and keeps them in C for the reason the kernel keeps them
 * per CPU: every freeing path runs through them, often on liburcu's worker
 * thread, and a locked instruction on a shared line there (or, reached
 * from Swift, a retain and release) cost more than the freeing itself
 * (BENCHMARKS.md).
 *
 *  - struct ptlab_zone, ptlab_zone_*(): one node's buddy free area and
 *    zone->lock, two cache lines of their own;
 *  - struct ptlab_pcp, ptlab_pcp_pop/push/take_block/pop_below(): the
 *    per-thread list, in static TLS so that a free from liburcu's worker
 *    allocates nothing; the drains give back whole naturally aligned
 *    blocks where they can, one buddy insertion instead of a merge per
 *    page;
 *  - enum ptlab_event, ptlab_pcp_*_add(), ptlab_pcp_sum_*(): counters
 *    written only by their owner thread and summed over every thread,
 *    living or exited, when read (the RCU books in rcu.h are kept here);
 *  - ptlab_loaded_allocator(): the allocator RCU callbacks free into.
 */
#ifndef PTLAB_PCP_H
#define PTLAB_PCP_H

#include <stdint.h>
#include <stdatomic.h>
#include "sanitizer.h"
#include "spinlock.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PTLAB_MAX_ORDER 18   /* the largest chunk_order PageAllocator accepts */

/*
 * One node's buddy free area and its lock, as in struct zone; the list
 * heads share the lock's lines, which the holder has in cache anyway. In C
 * rather than a Swift class: reached through a class reference, every
 * refill and drain paid a retain and a release (locked adds on a line that
 * the producer's refills and the RCU worker's drains both wrote) and a
 * dynamic exclusivity check, more than the list work itself (BENCHMARKS.md).
 */
struct ptlab_zone {
    ptlab_spinlock_t lock;                      /* zone->lock */
    uint32_t chunks_mapped;                     /* chunks brought up from libnuma */
    uint32_t free_head[PTLAB_MAX_ORDER + 1];    /* free_area[order]: PFN + 1 of a free block; 0 = none */
    uint64_t pcp_blocks_in;                     /* pcp drains given back as whole blocks */
    uint64_t pcp_pages_in;                      /* ... and page by page */
    uint32_t pad[6];                            /* to two whole lines, so zones never share one */
};
_Static_assert(sizeof(struct ptlab_zone) == 128, "struct ptlab_zone is two cache lines");

static inline void ptlab_zone_init(struct ptlab_zone *z)
{
    *z = (struct ptlab_zone){ 0 };
    ptlab_spin_init(&z->lock);
}
static inline void ptlab_zone_lock(struct ptlab_zone *z)
{
    ptlab_spin_lock(&z->lock);
    ptlab_tsan_acquire(z);
}
static inline void ptlab_zone_unlock(struct ptlab_zone *z)
{
    ptlab_tsan_release(z);
    ptlab_spin_unlock(&z->lock);
}
/* free_head as a pointer: Swift imports a C array as a tuple. */
static inline uint32_t *ptlab_zone_free_heads(struct ptlab_zone *z) { return z->free_head; }
/* Field by field, under the lock: a Swift `zone.pointee.chunks_mapped += 1`
 * is an access to the whole struct, lock word included, which a thread
 * spinning for the lock writes at the same time (a race to TSan). */
static inline uint32_t ptlab_zone_chunks_mapped(const struct ptlab_zone *z) { return z->chunks_mapped; }
static inline void ptlab_zone_add_chunk(struct ptlab_zone *z) { z->chunks_mapped++; }
static inline void ptlab_zone_count_pcp_drain(struct ptlab_zone *z, int whole_block)
{
    if (whole_block)
        z->pcp_blocks_in++;
    else
        z->pcp_pages_in++;
}
static inline uint64_t ptlab_zone_pcp_blocks_in(const struct ptlab_zone *z) { return z->pcp_blocks_in; }
static inline uint64_t ptlab_zone_pcp_pages_in(const struct ptlab_zone *z) { return z->pcp_pages_in; }

#define PTLAB_PCP_MAX_NODES 8
/* pcp->high: eight batches of 64, where the kernel's high mark starts
 * (pcp->high_min is four batches and grows with a zone's free memory). */
#define PTLAB_PCP_HIGH 512

/*
 * Counters bumped on every deferred free, kept per thread as the kernel
 * keeps vm_events per CPU: a locked add on a shared line costs a freeing
 * path more than the rest of its work (BENCHMARKS.md). They outlive any
 * allocator. The order is the order ptlab_pcp_sum_events reads them in:
 * what callbacks have done before what callers queued, so that a sum never
 * shows a callback whose call it has not counted.
 */
enum ptlab_event {
    PTLAB_EV_RCU_INVOKED,
    PTLAB_EV_RCU_DONE_BYTES,
    PTLAB_EV_RCU_QUEUED,
    PTLAB_EV_RCU_QUEUED_BYTES,        /* handed to liburcu, whatever admission said */
    PTLAB_EV_RCU_RESERVED_BYTES,      /* unbounded calls; bounded ones reserve globally */
    PTLAB_EV_TABLES_ALLOCATED,
    PTLAB_EV_TABLES_FREED,
    PTLAB_NR_EVENTS
};

/*
 * Per-thread cache of free order-0 pages, like the kernel's per-cpu pageset.
 * Owned by one thread; the per-node counters are vm_stat_diff-style deltas
 * that only the owner writes, summed over all caches by readers. Lives in
 * static TLS so that a free from liburcu's worker thread allocates nothing.
 */
struct ptlab_pcp {
    struct ptlab_pcp *next_registered;
    uint64_t epoch;                          /* allocator epoch it belongs to */
    uint32_t count[PTLAB_PCP_MAX_NODES];
    uint32_t pfns[PTLAB_PCP_MAX_NODES][PTLAB_PCP_HIGH];
    _Atomic int64_t allocated_delta[PTLAB_PCP_MAX_NODES];
    _Atomic int64_t numa_hit_delta[PTLAB_PCP_MAX_NODES];   /* per-cpu vm_event, like NUMA_HIT */
    _Atomic int64_t nr_pagetable_delta[PTLAB_PCP_MAX_NODES]; /* NR_PAGETABLE, a per-cpu vmstat */
    _Atomic int64_t events[PTLAB_NR_EVENTS];
    uint32_t latency_tick;                   /* deferred frees queued, for sampling */
    int registered;
};
extern _Thread_local struct ptlab_pcp ptlab_pcp_local;
static inline struct ptlab_pcp *ptlab_this_pcp(void) { return &ptlab_pcp_local; }
/*
 * The loaded PageAllocator, unretained, for RCU callbacks. A Swift static
 * would cost each callback a lazy-initialisation check and a retain and
 * release (locked instructions on a line every freeing thread shares).
 */
extern void *_Atomic ptlab_loaded_allocator_ptr;
static inline void *ptlab_loaded_allocator(void)
{
    return atomic_load_explicit(&ptlab_loaded_allocator_ptr, memory_order_acquire);
}
static inline void ptlab_set_loaded_allocator(void *allocator)
{
    atomic_store_explicit(&ptlab_loaded_allocator_ptr, allocator, memory_order_release);
}
/*
 * Whether this thread's next deferred free is one of those whose
 * queue-to-free latency is timed: one in 2^shift (ptlab_latency_set_shift),
 * counted per thread, not chosen by PFN, so that a run recycling a handful of
 * table pages is still sampled. The mask is read relaxed on every queueing
 * (a plain load on x86) and set between runs.
 */
extern _Atomic uint32_t ptlab_latency_mask;
static inline int ptlab_latency_sample(void)
{
    return (++ptlab_pcp_local.latency_tick & atomic_load_explicit(&ptlab_latency_mask, memory_order_relaxed)) == 0;
}
/* @shift at most 31 (FreeLatency.sampleShifts allows 0...16). */
static inline void ptlab_latency_set_shift(uint32_t shift)
{
    atomic_store_explicit(&ptlab_latency_mask, (1u << shift) - 1, memory_order_relaxed);
}
static inline uint32_t ptlab_latency_shift(void)
{
    return (uint32_t)__builtin_popcount(atomic_load_explicit(&ptlab_latency_mask, memory_order_relaxed));
}
/* Add this thread's cache to the registry once; returns it. */
struct ptlab_pcp *ptlab_pcp_register(void);
/* Sum of allocated_delta[node] over every cache, living or exited. */
int64_t ptlab_pcp_sum_allocated(int node);
/* Sum of numa_hit_delta[node] likewise. */
int64_t ptlab_pcp_sum_numa_hit(int node);
/* Zero every cache's per-node deltas (not the events): a new allocator
 * starts its books at zero. Only safe while no other thread allocates or
 * frees. */
void ptlab_pcp_reset_counters(void);
/* Called on thread exit with the dying thread's cache, to return its pages. */
void ptlab_pcp_set_drain_hook(void (*hook)(struct ptlab_pcp *));
/* This thread's cache, registered (so that sums see it) on first use. */
static inline struct ptlab_pcp *ptlab_pcp_counting(void)
{
    struct ptlab_pcp *pcp = &ptlab_pcp_local;
    if (__builtin_expect(!pcp->registered, 0))
        ptlab_pcp_register();
    return pcp;
}
/*
 * Add to one of this cache's counters: only its owner writes them, so a load
 * and a store, no locked instruction. Release, so that a sum which sees the
 * add also sees what happened before it (see enum ptlab_event); on x86 that
 * is a plain store too.
 */
static inline void ptlab_pcp_owner_add(_Atomic int64_t *counter, int64_t d)
{
    int64_t v = atomic_load_explicit(counter, memory_order_relaxed);
    atomic_store_explicit(counter, v + d, memory_order_release);
}
static inline void ptlab_pcp_event_add(struct ptlab_pcp *pcp, enum ptlab_event ev, int64_t d)
{
    ptlab_pcp_owner_add(&pcp->events[ev], d);
}
/* Every event summed over every cache, living or exited, in enum order. */
void ptlab_pcp_sum_events(int64_t out[PTLAB_NR_EVENTS]);
int64_t ptlab_pcp_sum_event(enum ptlab_event ev);
int64_t ptlab_pcp_sum_nr_pagetable(int node);
static inline void ptlab_pcp_add_nr_pagetable(struct ptlab_pcp *pcp, int node, int64_t d)
{
    ptlab_pcp_owner_add(&pcp->nr_pagetable_delta[node], d);
}
static inline void ptlab_pcp_add_allocated(struct ptlab_pcp *pcp, int node, int64_t d)
{
    ptlab_pcp_owner_add(&pcp->allocated_delta[node], d);
}
static inline void ptlab_pcp_count_numa_hit(struct ptlab_pcp *pcp, int node)
{
    ptlab_pcp_owner_add(&pcp->numa_hit_delta[node], 1);
}

/* Pop a cached PFN for @node; returns PFN + 1, or 0 when the cache is empty. */
static inline uint32_t ptlab_pcp_pop(struct ptlab_pcp *pcp, int node)
{
    uint32_t n = pcp->count[node];
    if (!n)
        return 0;
    pcp->count[node] = n - 1;
    return pcp->pfns[node][n - 1] + 1;
}
/* Push a PFN for @node; 0 when the cache is at its high mark. */
static inline int ptlab_pcp_push(struct ptlab_pcp *pcp, int node, uint32_t pfn)
{
    uint32_t n = pcp->count[node];
    if (n >= PTLAB_PCP_HIGH)
        return 0;
    pcp->pfns[node][n] = pfn;
    pcp->count[node] = n + 1;
    return 1;
}
/* Push the @count PFNs from @head up, highest first, so that pops hand them
 * out in address order: a refill with a whole block. 0, and nothing pushed,
 * when they would not all fit under the high mark. */
static inline int ptlab_pcp_push_run(struct ptlab_pcp *pcp, int node, uint32_t head, uint32_t count)
{
    uint32_t n = pcp->count[node];
    if (count > PTLAB_PCP_HIGH - n)
        return 0;
    for (uint32_t i = 0; i < count; i++)
        pcp->pfns[node][n + i] = head + count - 1 - i;
    pcp->count[node] = n + count;
    return 1;
}
/* Whether @want PFNs from @w are one naturally aligned block, in any order. */
static inline int ptlab_pcp_window_is_block(const uint32_t *w, uint32_t want, uint32_t *base)
{
    uint32_t b = w[0] & ~(want - 1);
    if (w[0] == b) {
        /* A flood's run, in order: no bitmap, no chain of dependent ORs. */
        uint32_t i = 1;
        while (i < want && w[i] == b + i)
            i++;
        if (i == want) {
            *base = b;
            return 1;
        }
    }
    uint64_t seen = 0;
    for (uint32_t i = 0; i < want; i++) {
        uint32_t off = w[i] - b;
        if (off >= want || ((seen >> off) & 1))
            return 0;
        seen |= 1ull << off;
    }
    *base = b;
    return 1;
}
/*
 * How many of the newest entries for @node belong to a block of 2^@order
 * that is not yet whole, reading them as the run of consecutive PFNs a
 * flood frees: (newest + 1) mod 2^@order.
 */
static inline uint32_t ptlab_pcp_partial_block(const struct ptlab_pcp *pcp, int node, unsigned order)
{
    uint32_t n = pcp->count[node];
    return n ? (pcp->pfns[node][n - 1] + 1) & ((1u << order) - 1) : 0;
}
/*
 * Drop one naturally aligned block of 2^@order (at most 64) cached PFNs
 * for @node and return its first PFN + 1, or 0 if none is found where
 * looked: so that a drain gives back a whole block, one buddy insertion
 * instead of a merge per page. The RCU worker frees a flood's tables in
 * the order they were allocated, so the newest entries are a run of
 * consecutive PFNs, and two windows are tried: the newest 2^@order
 * entries, then those just below the newest, still partial, block.
 */
static inline uint32_t ptlab_pcp_take_block(struct ptlab_pcp *pcp, int node, unsigned order)
{
    uint32_t n = pcp->count[node], want = 1u << order;
    if (order > 6 || n < want)
        return 0;
    uint32_t *pfns = pcp->pfns[node];
    uint32_t partial = ptlab_pcp_partial_block(pcp, node, order);
    uint32_t above[2] = { 0, partial };
    for (int t = 0; t < (partial ? 2 : 1); t++) {
        uint32_t o = above[t], base;
        if (n < want + o)
            break;
        if (!ptlab_pcp_window_is_block(&pfns[n - want - o], want, &base))
            continue;
        for (uint32_t i = 0; i < o; i++)
            pfns[n - want - o + i] = pfns[n - o + i];
        pcp->count[node] = n - want;
        return base + 1;
    }
    return 0;
}
/*
 * Pop the entry for @node just below the newest @keep, which stay on top;
 * returns PFN + 1, or 0 if there is none. A drain that finds no whole block
 * gives pages back from under the block still filling up, so that the
 * next drain finds it whole: taking the newest 16 instead, a run that
 * started at a PFN not a multiple of 16 stayed out of step with the
 * drains for the whole flood, a merge per page (BENCHMARKS.md).
 */
static inline uint32_t ptlab_pcp_pop_below(struct ptlab_pcp *pcp, int node, uint32_t keep)
{
    uint32_t n = pcp->count[node];
    if (n <= keep)
        return 0;
    uint32_t *pfns = pcp->pfns[node];
    uint32_t pfn = pfns[n - 1 - keep];
    for (uint32_t i = n - 1 - keep; i + 1 < n; i++)
        pfns[i] = pfns[i + 1];
    pcp->count[node] = n - 1;
    return pfn + 1;
}
static inline uint32_t ptlab_pcp_count(const struct ptlab_pcp *pcp, int node) { return pcp->count[node]; }
static inline void ptlab_pcp_forget(struct ptlab_pcp *pcp, uint64_t epoch)
{
    for (int i = 0; i < PTLAB_PCP_MAX_NODES; i++)
        pcp->count[i] = 0;
    pcp->epoch = epoch;
}

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_PCP_H */
