/*
 * CSupport: the kernel-shaped structures PageTableLab's freeing paths need,
 * and the few lines of C that must stay C.
 *
 * Why C at all: the freeing paths (call_rcu callbacks, gather flushes, the
 * deferred kernel-table work) must not allocate, so the rcu_head and the list
 * node live inside the page descriptor, as in struct ptdesc; turning an
 * rcu_head back into its descriptor is container_of, which is C. liburcu's
 * read-side fast path is a set of _LGPL_SOURCE static inlines that Swift can
 * only inline through a C header.
 */
#ifndef PTLAB_CSUPPORT_H
#define PTLAB_CSUPPORT_H

#define _LGPL_SOURCE 1
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <urcu/urcu-memb.h>
#include <urcu/call-rcu.h>
#include <urcu/list.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which sanitizer, if any, this translation unit is built for (the Swift
 * importer sees the same flags through -Xcc). */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PTLAB_TSAN 1
#endif
#endif
#ifdef PTLAB_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#endif

/* --------------------------------------------------------- TSan hooks ---- */
/* Inline, so that outside TSan they cost nothing: as calls they were three
 * of every RCU callback's instructions-worth of overhead. */
static inline void ptlab_tsan_release(void *addr)
{
#ifdef PTLAB_TSAN
    __tsan_release(addr);
#else
    (void)addr;
#endif
}
static inline void ptlab_tsan_acquire(void *addr)
{
#ifdef PTLAB_TSAN
    __tsan_acquire(addr);
#else
    (void)addr;
#endif
}

#define PTLAB_PAGE_SHIFT 12
#define PTLAB_PAGE_SIZE (1u << PTLAB_PAGE_SHIFT)
#define PTLAB_POISON_FREE 0x6b

/* ------------------------------------------------------------------ RCU -- */

/*
 * An rcu_head that remembers its own callback and the bytes it holds, so the
 * one trampoline liburcu calls can account for outstanding deferred memory
 * without a side table (a side table would mean allocating on call_rcu).
 */
struct ptlab_rcu_head {
    struct rcu_head head;
    void (*func)(struct ptlab_rcu_head *);
    uint64_t bytes;
};

/*
 * Outstanding deferred work. Callers and callbacks count in their own
 * threads' counters (enum ptlab_event), summed when read: with shared
 * atomics every call and every callback paid locked adds, and the caller
 * and liburcu's worker bounced the lines between them. Only a bounded
 * reservation, which must see every other producer's, and the rare inline
 * fallback use these globals. Outstanding = reserved - done, queued -
 * invoked.
 */
struct ptlab_rcu_stats {
    _Alignas(64) _Atomic int64_t reserved_bytes;   /* bounded reservations, less those refused */
    _Alignas(64) _Atomic uint64_t inline_fallbacks;
};
extern struct ptlab_rcu_stats ptlab_rcu_stats;

/* A plain copy of the stats, for Swift (which cannot touch C atomics). */
struct ptlab_rcu_stats_snapshot {
    int64_t outstanding_callbacks, outstanding_bytes, in_flight_bytes;
    uint64_t queued, invoked, inline_fallbacks;
};
void ptlab_rcu_stats_read(struct ptlab_rcu_stats_snapshot *out);
/*
 * Bytes handed to liburcu and not yet given back by their callbacks: counted
 * where the head is queued and where the trampoline returns, never by the
 * admission that the bound works through, so that a monitor sampling it
 * checks the bound from the other side.
 */
int64_t ptlab_rcu_in_flight_bytes(void);

/* Registration depth of this thread with liburcu (scoped registration). */
extern _Thread_local int ptlab_rcu_registered_depth;
/* Non-zero while this thread is running an RCU callback. */
extern _Thread_local int ptlab_rcu_in_callback;

/* Nested registration: liburcu itself must see each thread once. */
void ptlab_rcu_register(void);
void ptlab_rcu_unregister(void);

/*
 * A grace period orders everything a reader did in its read section before
 * whatever follows the grace period: the callbacks it releases and the
 * return of synchronize_rcu. liburcu waits in uninstrumented code, so under
 * TSan each read_unlock releases ptlab_rcu_gp_key and those two acquire it.
 * Coarse: a callback is also ordered after read sections that began after
 * its grace period did. Those cannot reach what it frees, but a race
 * between one of them and the callback over other data would go
 * unreported. Compiled out without TSan.
 */
extern char ptlab_rcu_gp_key;
static inline void ptlab_rcu_read_lock(void) { _urcu_memb_read_lock(); }
static inline void ptlab_rcu_read_unlock(void)
{
#ifdef PTLAB_TSAN
    __tsan_release(&ptlab_rcu_gp_key);
#endif
    _urcu_memb_read_unlock();
}
static inline int ptlab_rcu_read_ongoing(void) { return _urcu_memb_read_ongoing(); }
static inline int ptlab_rcu_in_callback_now(void) { return ptlab_rcu_in_callback; }
static inline int ptlab_rcu_thread_may_call(void)
{
    return ptlab_rcu_registered_depth > 0 || ptlab_rcu_in_callback;
}

/* Queue @head, whose @bytes the caller reserved with ptlab_rcu_reserve:
 * counts it, annotates for TSan, then urcu_memb_call_rcu. */
void ptlab_call_rcu(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *),
                    uint64_t bytes);
/* Run @func on @head now (after the caller waited a grace period), with the
 * same accounting a callback gets: the back-pressure path. */
void ptlab_rcu_run_inline(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *));
/* Reserve @bytes against @bound; 0 when that would exceed it (nothing kept). */
int ptlab_rcu_reserve(uint64_t bytes, uint64_t bound);
/* ptlab_rcu_reserve, then ptlab_call_rcu if it was admitted: one call on
 * RCU.call's fast path. Returns whether @head was queued. */
int ptlab_call_rcu_bounded(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *),
                           uint64_t bytes, uint64_t bound);
/*
 * Start liburcu's worker and run one callback through the trampoline, then
 * wait for it: the first call_rcu creates the worker thread, and its first
 * callback registers it in the lab's counters, both touching memory for the
 * first time. Callers that measure this process's page tables do this first.
 * The caller must be registered and outside a read section.
 */
void ptlab_rcu_prime(void);
/* urcu_memb_barrier, with its ordering made visible to TSan. */
void ptlab_rcu_barrier(void);
/* urcu_memb_synchronize_rcu, with its ordering made visible to TSan. */
void ptlab_rcu_synchronize(void);

/* ------------------------------------------------------------ spinlock -- */

/* The split page-table lock and zone->lock. */
typedef struct {
    _Atomic uint32_t locked;
} ptlab_spinlock_t;

static inline void ptlab_spin_init(ptlab_spinlock_t *l)
{
    atomic_store_explicit(&l->locked, 0, memory_order_relaxed);
}
/*
 * A userspace holder can be preempted (it cannot disable preemption as the
 * kernel does), so a waiter spins a while and then gives its CPU away
 * between attempts instead of spinning out its time slice.
 */
static inline void ptlab_spin_lock(ptlab_spinlock_t *l)
{
    for (unsigned tries = 0;; tries++) {
        uint32_t expected = 0;
        if (atomic_compare_exchange_weak_explicit(&l->locked, &expected, 1,
                memory_order_acquire, memory_order_relaxed))
            break;
        if (tries >= 100) {
            sched_yield();
            continue;
        }
        for (int i = 0; i < 64 && atomic_load_explicit(&l->locked, memory_order_relaxed); i++)
            __builtin_ia32_pause();
    }
}
/* One attempt; callers that must keep answering "IPIs" while they wait
 * (the TLB model) spin on this themselves. */
static inline int ptlab_spin_trylock(ptlab_spinlock_t *l)
{
    uint32_t expected = 0;
    return atomic_compare_exchange_strong_explicit(&l->locked, &expected, 1,
            memory_order_acquire, memory_order_relaxed);
}
static inline void ptlab_spin_unlock(ptlab_spinlock_t *l)
{
    atomic_store_explicit(&l->locked, 0, memory_order_release);
}

/* ----------------------------------------------------------------- zone -- */

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

/* ------------------------------------------------------ page descriptor -- */

enum ptlab_page_state {
    PTLAB_PAGE_FREE = 0,        /* on a free list or a per-thread cache */
    PTLAB_PAGE_ALLOCATED = 1,   /* handed out */
    PTLAB_PAGE_DEFERRED = 2,    /* queued for a deferred free (RCU or work) */
    PTLAB_PAGE_TAIL = 3,        /* tail page of a compound allocation */
};

enum ptlab_pt_level {
    PTLAB_PT_NONE = 0,          /* not a page table */
    PTLAB_PT_PTE = 1,
    PTLAB_PT_PMD = 2,
    PTLAB_PT_PUD = 3,
    PTLAB_PT_P4D = 4,
    PTLAB_PT_PGD = 5,
};

/* ptdesc flag bits. */
#define PTLAB_PG_TABLE   (1ull << 0)   /* PageTable: between ctor and dtor */
#define PTLAB_PT_KERNEL  (1ull << 1)   /* ptdesc_set_kernel: a kernel page table */
#define PTLAB_PG_HEAD    (1ull << 2)   /* head of a compound allocation */
#define PTLAB_PG_PTLOCK  (1ull << 3)   /* split ptlock live: ptlock_init .. ptlock_free */

/*
 * struct ptdesc / struct page. One per PFN in the memmap. As in the kernel,
 * the rcu_head and the list node share storage: a table queued for RCU
 * cannot also be on a list.
 *
 * Two cache lines, where the kernel's struct page is one (liburcu's
 * rcu_head is twice the kernel's). The first holds everything that
 * pte_free_defer's caller touches, so queueing a table costs one line:
 * when it was 112 bytes, most descriptors straddled three lines, and
 * call_rcu's full barrier waited for each of them to arrive. Its callback,
 * on liburcu's worker on another CPU, needs only the first line too (the
 * order, PFN and node it takes from the flags and the address): a load from
 * the second was a second transfer per table from the queueing CPU, and the
 * ptlock's word there a store the state's compare-and-swap waited behind.
 */
struct ptdesc {
    union {
        struct ptlab_rcu_head pt_rcu_head;
        struct cds_list_head pt_list;
    };
    _Atomic uint64_t flags;
    void *pt_mm;                        /* owning mm (Unmanaged), or NULL; ptlab_page_mm */
    _Atomic uint32_t state;             /* enum ptlab_page_state */
    _Atomic uint32_t generation;        /* bumped on every free */
    _Atomic uint32_t level;             /* enum ptlab_pt_level while a table */
    uint32_t pfn;
    /* second line */
    ptlab_spinlock_t ptl;               /* split PTE/PMD lock (live while PTLAB_PG_PTLOCK) */
    uint32_t buddy_next;                /* allocator free list (PFN + 1; 0 = none) */
    uint32_t buddy_prev;
    uint16_t node;
    uint8_t order;
    uint8_t on_free_list;               /* buddy bookkeeping, node lock held */
    uint64_t index;                     /* base virtual address the table maps */
    uint64_t queued_ns;                 /* when its deferred free was queued */
    uint64_t tlb_gen;                   /* mm TLB generation that must pass before it is freed */
    uint64_t pad[3];                    /* to two whole lines (Swift cannot import _Alignas) */
};
_Static_assert(sizeof(struct ptdesc) == 128, "struct ptdesc is two cache lines");
_Static_assert(offsetof(struct ptdesc, ptl) == 64, "what pte_free_defer touches is in the first line");

/* container_of for the two embedded nodes. */
static inline struct ptdesc *ptlab_ptdesc_of_rcu(struct ptlab_rcu_head *head)
{
    return (struct ptdesc *)((char *)head - offsetof(struct ptdesc, pt_rcu_head));
}
static inline struct ptdesc *ptlab_ptdesc_of_list(struct cds_list_head *node)
{
    return (struct ptdesc *)((char *)node - offsetof(struct ptdesc, pt_list));
}

/*
 * Accessors: Swift cannot touch C11 _Atomic fields, and the memory orders
 * belong next to the fields they order. Walkers read state and generation
 * with acquire; the freeing side publishes the poison before the new state.
 */
static inline uint32_t ptlab_page_state(const struct ptdesc *d)
{
    return atomic_load_explicit(&((struct ptdesc *)d)->state, memory_order_acquire);
}
static inline void ptlab_page_set_state(struct ptdesc *d, uint32_t s)
{
    atomic_store_explicit(&d->state, s, memory_order_release);
}
/* Move @d from @from to @to; returns the state found (== @from on success). */
static inline uint32_t ptlab_page_transition(struct ptdesc *d, uint32_t from, uint32_t to)
{
    uint32_t expected = from;
    atomic_compare_exchange_strong_explicit(&d->state, &expected, to,
                                            memory_order_acq_rel, memory_order_acquire);
    return expected;
}
static inline uint32_t ptlab_page_generation(const struct ptdesc *d)
{
    return atomic_load_explicit(&((struct ptdesc *)d)->generation, memory_order_acquire);
}
/*
 * A freed descriptor's reset: new generation, no level, no flags, no mm.
 * Only the thread whose transition to FREE succeeded may call it, so plain
 * release stores suffice where a locked add and a locked AND were about a
 * third of an order-0 alloc+free here. The state CAS before it is the
 * barrier that keeps the poison after the new state.
 */
static inline void ptlab_page_retire(struct ptdesc *d)
{
    uint32_t gen = atomic_load_explicit(&d->generation, memory_order_relaxed);
    atomic_store_explicit(&d->generation, gen + 1, memory_order_release);
    atomic_store_explicit(&d->level, PTLAB_PT_NONE, memory_order_release);
    atomic_store_explicit(&d->flags, 0, memory_order_release);
    __atomic_store_n(&d->pt_mm, NULL, __ATOMIC_RELEASE);
}
/*
 * The owning mm. A walker's liveness check reads it without locks while a
 * free (ptlab_page_retire) or a reuse (the next ctor) may be writing it;
 * in the unsafe modes that is the point. Both sides go through these, so
 * the check never reads a torn or undefined value. Plain `void *` so that
 * single-threaded code and tests can still read the field.
 */
static inline void *ptlab_page_mm(const struct ptdesc *d)
{
    return __atomic_load_n(&d->pt_mm, __ATOMIC_ACQUIRE);
}
static inline void ptlab_page_set_mm(struct ptdesc *d, void *mm)
{
    __atomic_store_n(&d->pt_mm, mm, __ATOMIC_RELEASE);
}
static inline uint32_t ptlab_page_level(const struct ptdesc *d)
{
    return atomic_load_explicit(&((struct ptdesc *)d)->level, memory_order_acquire);
}
static inline void ptlab_page_set_level(struct ptdesc *d, uint32_t level)
{
    atomic_store_explicit(&d->level, level, memory_order_release);
}
static inline uint64_t ptlab_page_flags(const struct ptdesc *d)
{
    return atomic_load_explicit(&((struct ptdesc *)d)->flags, memory_order_acquire);
}
static inline void ptlab_page_set_flags(struct ptdesc *d, uint64_t bits)
{
    atomic_fetch_or_explicit(&d->flags, bits, memory_order_acq_rel);
}
static inline void ptlab_page_clear_flags(struct ptdesc *d, uint64_t bits)
{
    atomic_fetch_and_explicit(&d->flags, ~bits, memory_order_acq_rel);
}
/*
 * __folio_set_pgtable, for the constructors (ptlock_init sets its flag
 * through it too): the thread that just allocated the page is its only
 * writer, so a load and a store (a locked OR here drained the store buffer
 * on every table allocated).
 */
static inline void ptlab_page_mark_table(struct ptdesc *d, uint64_t bits)
{
    uint64_t f = atomic_load_explicit(&d->flags, memory_order_relaxed);
    atomic_store_explicit(&d->flags, f | bits, memory_order_release);
}
/*
 * __folio_clear_pgtable, for pagetable_dtor: only the path freeing the
 * table writes its flags then, so a plain load and store will do where a
 * locked RMW cost the freeing path more than anything else in it. Returns
 * whether PG_table was set.
 */
static inline int ptlab_page_test_clear_table(struct ptdesc *d)
{
    uint64_t f = atomic_load_explicit(&d->flags, memory_order_relaxed);
    if (!(f & PTLAB_PG_TABLE))
        return 0;
    atomic_store_explicit(&d->flags, f & ~(uint64_t)PTLAB_PG_TABLE, memory_order_release);
    return 1;
}
/*
 * The split ptlock. In the kernel it may be a separately allocated object,
 * and taking it after ptlock_free is the use-after-free of seed 003; here
 * its life is a flag, so that a walker which takes a freed table's lock can
 * say so instead of being undefined. A flag in the first line, not a word
 * beside the lock: ptlock_free runs in the RCU callback, which then needs
 * nothing from the descriptor's second line (see struct ptdesc). Init and
 * free run on the paths that own the table, so a load and a store.
 */
static inline int ptlab_ptl_trylock(struct ptdesc *d) { return ptlab_spin_trylock(&d->ptl); }
static inline void ptlab_ptl_unlock(struct ptdesc *d) { ptlab_spin_unlock(&d->ptl); }
static inline void ptlab_ptl_init(struct ptdesc *d)
{
    ptlab_spin_init(&d->ptl);
    ptlab_page_mark_table(d, PTLAB_PG_PTLOCK);
}
static inline void ptlab_ptl_free(struct ptdesc *d)
{
    uint64_t f = atomic_load_explicit(&d->flags, memory_order_relaxed);
    atomic_store_explicit(&d->flags, f & ~PTLAB_PG_PTLOCK, memory_order_release);
}
static inline int ptlab_ptl_alive(const struct ptdesc *d)
{
    return (ptlab_page_flags(d) & PTLAB_PG_PTLOCK) != 0;
}
static inline struct ptlab_rcu_head *ptlab_ptdesc_rcu_head(struct ptdesc *d) { return &d->pt_rcu_head; }
static inline struct cds_list_head *ptlab_ptdesc_list(struct ptdesc *d) { return &d->pt_list; }
/* CDS_INIT_LIST_HEAD is a macro Swift cannot see. */
static inline void ptlab_list_init(struct cds_list_head *head) { CDS_INIT_LIST_HEAD(head); }

/* Page-table entries are read and written by walkers without locks. */
static inline uint64_t ptlab_pte_read(const uint64_t *entry)
{
    return __atomic_load_n(entry, __ATOMIC_ACQUIRE);
}
static inline void ptlab_pte_write(uint64_t *entry, uint64_t value)
{
    __atomic_store_n(entry, value, __ATOMIC_RELEASE);
}
static inline uint64_t ptlab_pte_xchg(uint64_t *entry, uint64_t value)
{
    return __atomic_exchange_n(entry, value, __ATOMIC_ACQ_REL);
}
static inline uint64_t ptlab_pte_or(uint64_t *entry, uint64_t bits)
{
    return __atomic_fetch_or(entry, bits, __ATOMIC_ACQ_REL);
}

/*
 * 32-bit words shared with a device: the invalidation queue's status words,
 * written by the emulated IOMMU (the wait descriptor's status write) and
 * polled by the driver. Release/acquire, so the status write publishes the
 * invalidations the hardware completed before it.
 */
static inline uint32_t ptlab_u32_load_acquire(const uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}
static inline void ptlab_u32_store_release(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

/* ------------------------------------------------ per-thread page cache -- */

#define PTLAB_PCP_MAX_NODES 8
#define PTLAB_PCP_HIGH 64

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

/* Fill freed pages with PTLAB_POISON_FREE (page-aligned, whole pages). */
void ptlab_poison_pages(void *addr, size_t bytes);

/*
 * Free pages are off limits to AddressSanitizer as well: the lab's pages are
 * its own mmap'd memory, which ASan otherwise cannot tell free from in use,
 * so a stale read of a freed table would be caught only by the lab's own
 * generation checks. With these, it is also an ASan use-after-poison report
 * (scripts/sanitize address). Empty, and inlined away, without ASan.
 */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PTLAB_ASAN 1
#endif
#endif
#ifdef PTLAB_ASAN
void __asan_poison_memory_region(void const volatile *addr, size_t size);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#endif
/* Constant, so that a caller can skip working out an address for nothing. */
static inline int ptlab_asan_enabled(void)
{
#ifdef PTLAB_ASAN
    return 1;
#else
    return 0;
#endif
}
static inline void ptlab_asan_poison_pages(void *addr, size_t bytes)
{
#ifdef PTLAB_ASAN
    __asan_poison_memory_region(addr, bytes);
#else
    (void)addr; (void)bytes;
#endif
}
static inline void ptlab_asan_unpoison_pages(void *addr, size_t bytes)
{
#ifdef PTLAB_ASAN
    __asan_unpoison_memory_region(addr, bytes);
#else
    (void)addr; (void)bytes;
#endif
}

/* ------------------------------------------------------------ baseline --- */

/* Raw C liburcu paths that `ptlab bench` runs beside the Swift ones. */
double ptlab_baseline_read_ns(uint64_t iterations);
double ptlab_baseline_call_rcu_per_sec(uint64_t count);
double ptlab_baseline_batch_frees_per_sec(uint64_t tables);

/* ------------------------------------------------------------- system ---- */
int ptlab_current_cpu(void);
/* Pin the calling thread to @cpu; 0 on success, else an errno. */
int ptlab_pin_to_cpu(int cpu);
/* Read the kernel config at @path, gzip-compressed or plain, into @buf (at
 * most @cap bytes). Returns the file's whole decompressed length — more than
 * @cap means call again with that much room — or -1 if it cannot be read. */
long ptlab_kconfig_read(const char *path, void *buf, size_t cap);
/* Let the calling thread run on any CPU again. */
int ptlab_unpin(void);
/* mremap(@old_address, @length, @length, MREMAP_MAYMOVE|MREMAP_FIXED,
 * @new_address): MAP_FAILED and errno on failure. */
void *ptlab_mremap_fixed(void *old_address, size_t length, void *new_address);
/* A memfd (shmem file) of @size bytes, close-on-exec: its fd, or -1 and errno. */
int ptlab_memfd(size_t size);
int ptlab_numa_node_allowed(int node);
void ptlab_warn(const char *message);

#ifdef __cplusplus
}
#endif
#endif
