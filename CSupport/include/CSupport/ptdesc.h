/*
 * ptdesc.h - struct ptdesc: the page descriptor, its state, and the split
 * ptlock
 *
 * The kernel keeps one descriptor per physical page (struct page; struct
 * ptdesc is the same memory seen as a page table), and everything the
 * page-table freeing paths need is in it: the rcu_head that call_rcu()
 * queues, the list node the deferred kernel-table free uses, the split
 * ptlock, the owning mm. That is what lets pte_free_defer() and
 * tlb_remove_table() free without allocating. The lab's memmap is an array
 * of these, one per PFN, and it keeps them in C because turning an
 * embedded rcu_head back into its descriptor is container_of.
 *
 * Walkers in the lab run without locks and may hold a descriptor while it
 * is freed, reused, or retired under them; in the unsafe modes that is the
 * point, since it is how a use-after-free is caught rather than merely
 * happening. So every field a walker reads is atomic, with its memory
 * order next to it here, and a freed descriptor says so: its state, a
 * generation bumped on every free, and the flag that says its ptlock is
 * still alive (taking a freed table's ptlock is the use-after-free of
 * seed 003).
 *
 *  - struct ptdesc, enum ptlab_page_state, enum ptlab_pt_level, the
 *    PTLAB_PG_* flags: the descriptor and what it may be;
 *  - ptlab_ptdesc_of_rcu(), ptlab_ptdesc_of_list(): container_of for the
 *    two embedded nodes;
 *  - ptlab_page_*(): state transitions, generation, level, flags, mm, a
 *    data page's mapcount;
 *    ptlab_page_mark_table() and ptlab_page_test_clear_table() are
 *    __folio_set_pgtable() and __folio_clear_pgtable();
 *  - ptlab_ptl_*(): ptlock_init(), ptlock_free(), and the lock itself.
 */
#ifndef PTLAB_PTDESC_H
#define PTLAB_PTDESC_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include "rcu.h"
#include <urcu/list.h>
#include "spinlock.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The memmap has one descriptor per page of this size. */
#define PTLAB_PAGE_SHIFT 12
#define PTLAB_PAGE_SIZE (1u << PTLAB_PAGE_SHIFT)

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

/* ptdesc flag bits: 32 of them, the width of struct ptdesc's flags. */
#define PTLAB_PG_TABLE   (1ull << 0)   /* PageTable: between ctor and dtor */
#define PTLAB_PT_KERNEL  (1ull << 1)   /* ptdesc_set_kernel: a kernel page table */
#define PTLAB_PG_HEAD    (1ull << 2)   /* head of a compound allocation */
#define PTLAB_PG_PTLOCK  (1ull << 3)   /* split ptlock live: ptlock_init .. ptlock_free */
#define PTLAB_PG_TIMED   (1ull << 4)   /* queued_ns holds when its deferred free was queued */

/*
 * struct ptdesc / struct page. One per PFN in the memmap. As in the kernel,
 * the rcu_head and the list node share storage: a table queued for RCU
 * cannot also be on a list.
 *
 * Two cache lines, where the kernel's struct page is one (liburcu's
 * rcu_head is twice the kernel's). The first holds everything a table's
 * life touches: its allocation, its constructor (the ptlock, the mm),
 * pte_free_defer and the gather queueing it, the callback freeing it, and
 * the buddy's merge test. Each line a path touches beyond it is a cache
 * miss per table: the constructor writing a ptlock in the second line made
 * the producer wait on two lines per table where the kernel waits on one,
 * and an RCU callback reading the second line waited for its transfer from
 * the CPU that queued the table. The second holds what only the buddy's
 * list surgery (under zone->lock) and a sampled latency read touch. A data
 * page's mapcount shares the mm's word, as the kernel's _mapcount shares
 * its word with a table's page type: no data page has an owning mm, no
 * table is mapped by a user entry, and retiring either leaves zero.
 */
struct ptdesc {
    union {
        struct ptlab_rcu_head pt_rcu_head;
        struct cds_list_head pt_list;
    };
    _Atomic uint32_t flags;             /* PTLAB_PG_* */
    ptlab_spinlock_t ptl;               /* split PTE/PMD lock (live while PTLAB_PG_PTLOCK) */
    union {
        void *pt_mm;                    /* a table's owning mm (Unmanaged), or NULL; ptlab_page_mm */
        int64_t mapcount;               /* a data page's mapped entries (_mapcount + 1); ptlab_page_mapcount */
    };
    _Atomic uint32_t generation;        /* bumped on every free */
    uint32_t pfn;
    _Atomic uint16_t state;             /* enum ptlab_page_state */
    _Atomic uint16_t level;             /* enum ptlab_pt_level while a table */
    uint8_t order;
    uint8_t on_free_list;               /* buddy bookkeeping, node lock held */
    uint16_t node;
    /* second line */
    uint32_t buddy_next;                /* allocator free list (PFN + 1; 0 = none) */
    uint32_t buddy_prev;
    uint64_t queued_ns;                 /* when its deferred free was queued (PTLAB_PG_TIMED) */
    uint64_t pad[6];                    /* to two whole lines (Swift cannot import _Alignas) */
};
_Static_assert(sizeof(struct ptdesc) == 128, "struct ptdesc is two cache lines");
_Static_assert(offsetof(struct ptdesc, buddy_next) == 64, "what a table's life touches is in the first line");

/*
 * prefetchw of a table's descriptor, for a batch's callback: it knows the
 * tables it will free well before it reaches them, and their first lines
 * (all a free touches; see struct ptdesc) were last written by the CPU
 * that queued them. prefetchw itself, not __builtin_prefetch (which emits
 * it only with -mprfchw): a plain prefetch brings the line shared, to be
 * taken again for the write. CPUs without it run it as a NOP.
 */
static inline void ptlab_ptdesc_prefetch_first_line(const struct ptdesc *d)
{
#if defined(__x86_64__)
    __asm__ volatile("prefetchw %0" : : "m"(*(const char *)d));
#else
    __builtin_prefetch(d, 1);
#endif
}

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
    atomic_store_explicit(&d->state, (uint16_t)s, memory_order_release);
}
/* Move @d from @from to @to; returns the state found (== @from on success). */
static inline uint32_t ptlab_page_transition(struct ptdesc *d, uint32_t from, uint32_t to)
{
    uint16_t expected = (uint16_t)from;
    atomic_compare_exchange_strong_explicit(&d->state, &expected, (uint16_t)to,
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
    atomic_store_explicit(&d->level, (uint16_t)level, memory_order_release);
}
static inline uint64_t ptlab_page_flags(const struct ptdesc *d)
{
    return atomic_load_explicit(&((struct ptdesc *)d)->flags, memory_order_acquire);
}
static inline void ptlab_page_set_flags(struct ptdesc *d, uint64_t bits)
{
    atomic_fetch_or_explicit(&d->flags, (uint32_t)bits, memory_order_acq_rel);
}
static inline void ptlab_page_clear_flags(struct ptdesc *d, uint64_t bits)
{
    atomic_fetch_and_explicit(&d->flags, ~(uint32_t)bits, memory_order_acq_rel);
}
/*
 * __folio_set_pgtable, for the constructors (ptlock_init sets its flag
 * through it too): the thread that just allocated the page is its only
 * writer, so a load and a store (a locked OR here drained the store buffer
 * on every table allocated).
 */
static inline void ptlab_page_mark_table(struct ptdesc *d, uint64_t bits)
{
    uint32_t f = atomic_load_explicit(&d->flags, memory_order_relaxed);
    atomic_store_explicit(&d->flags, f | (uint32_t)bits, memory_order_release);
}
/*
 * __folio_clear_pgtable, for pagetable_dtor: only the path freeing the
 * table writes its flags then, so a plain load and store will do where a
 * locked RMW cost the freeing path more than anything else in it. Returns
 * whether PG_table was set.
 */
static inline int ptlab_page_test_clear_table(struct ptdesc *d)
{
    uint32_t f = atomic_load_explicit(&d->flags, memory_order_relaxed);
    if (!(f & PTLAB_PG_TABLE))
        return 0;
    atomic_store_explicit(&d->flags, f & ~(uint32_t)PTLAB_PG_TABLE, memory_order_release);
    return 1;
}
/*
 * A deferred free picked for timing: when it was queued, and a flag in the
 * first line that says so. The free tests the flag, not queued_ns, so that
 * only the sampled frees touch the second line (see struct ptdesc). Set by
 * the path queueing the free, which owns the table; ptlab_page_retire
 * clears it with the rest.
 */
static inline void ptlab_page_mark_timed(struct ptdesc *d, uint64_t queued_ns)
{
    d->queued_ns = queued_ns;
    ptlab_page_mark_table(d, PTLAB_PG_TIMED);
}
static inline int ptlab_page_timed(const struct ptdesc *d)
{
    return (ptlab_page_flags(d) & PTLAB_PG_TIMED) != 0;
}
/*
 * The split ptlock. In the kernel it may be a separately allocated object,
 * and taking it after ptlock_free is the use-after-free of seed 003; here
 * its life is a flag, so that a walker which takes a freed table's lock can
 * say so instead of being undefined. A flag, not a word beside the lock:
 * ptlock_free runs in the RCU callback, and a load and a store of the
 * flags it writes anyway cost it nothing more. Init and free run on the
 * paths that own the table, so a load and a store.
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
    uint32_t f = atomic_load_explicit(&d->flags, memory_order_relaxed);
    atomic_store_explicit(&d->flags, f & ~(uint32_t)PTLAB_PG_PTLOCK, memory_order_release);
}
static inline int ptlab_ptl_alive(const struct ptdesc *d)
{
    return (ptlab_page_flags(d) & PTLAB_PG_PTLOCK) != 0;
}
/*
 * The mapcount (mm/rmap.c's folio_add_*_rmap_* and folio_remove_rmap_*):
 * how many user entries map a data page, a PTE counting on the page it
 * maps and a huge PMD on its folio's head (the kernel's entire_mapcount).
 * Entries of one page are set and cleared under different tables' locks,
 * so the count is atomic, as the kernel's is. Zero when unmapped (the
 * kernel's _mapcount is this minus one). Returns the count after the add.
 */
static inline int64_t ptlab_page_mapcount(const struct ptdesc *d)
{
    return __atomic_load_n(&d->mapcount, __ATOMIC_RELAXED);
}
static inline int64_t ptlab_page_mapcount_add(struct ptdesc *d, int64_t delta)
{
    return __atomic_add_fetch(&d->mapcount, delta, __ATOMIC_RELAXED);
}
/* A page no other entry can map yet (folio_add_new_anon_rmap): a store. */
static inline void ptlab_page_mapcount_set(struct ptdesc *d, int64_t count)
{
    __atomic_store_n(&d->mapcount, count, __ATOMIC_RELAXED);
}
static inline struct ptlab_rcu_head *ptlab_ptdesc_rcu_head(struct ptdesc *d) { return &d->pt_rcu_head; }
static inline struct cds_list_head *ptlab_ptdesc_list(struct ptdesc *d) { return &d->pt_list; }
/* CDS_INIT_LIST_HEAD is a macro Swift cannot see. */
static inline void ptlab_list_init(struct cds_list_head *head) { CDS_INIT_LIST_HEAD(head); }

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_PTDESC_H */
