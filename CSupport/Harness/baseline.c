/*
 * The raw C liburcu paths `ptlab bench` measures beside the Swift ones, so
 * every Swift number is a ratio against C measured in the same run. These
 * are what a C programmer would write: malloc'd objects with an rcu_head,
 * and the kernel's table batch of 509 pointers per call_rcu. The hand-offs
 * carry the lab's TSan annotations (see rcu.c), which compile to nothing
 * outside a TSan build, so that the sanitizer run can run the bench too.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "CSupport/rcu.h"
#include "CSupport/spinlock.h"
#include "CSupport/sanitizer.h"
#include "CHarness/baseline.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/*
 * Eight sections per loop iteration. One section is ~16 instructions that
 * run in ~2 cycles, so a one-section loop measures where the loop happens
 * to fall against the CPU's 32-byte fetch windows (the same instructions
 * measured 0.58 and 0.95 ns in two builds); eight amortise that. The Swift
 * side (Bench.swiftReadNs) unrolls by the same factor.
 */
#define PTLAB_READ_SECTION() do {              \
        ptlab_rcu_read_lock();                 \
        __asm__ volatile("" ::: "memory");     \
        ptlab_rcu_read_unlock();               \
    } while (0)

int ptlab_baseline_sanitized(void)
{
#if defined(PTLAB_TSAN) || defined(PTLAB_ASAN)
    return 1;
#else
    return 0;
#endif
}

double ptlab_baseline_read_ns(uint64_t iterations)
{
    uint64_t loops = iterations / 8 ? iterations / 8 : 1;
    ptlab_rcu_register();
    double t0 = now_ns();
    for (uint64_t i = 0; i < loops; i++) {
        PTLAB_READ_SECTION(); PTLAB_READ_SECTION(); PTLAB_READ_SECTION(); PTLAB_READ_SECTION();
        PTLAB_READ_SECTION(); PTLAB_READ_SECTION(); PTLAB_READ_SECTION(); PTLAB_READ_SECTION();
    }
    double ns = (now_ns() - t0) / (double)(loops * 8);
    ptlab_rcu_unregister();
    return ns;
}

struct c_object {
    struct rcu_head head;
    char payload[48];
};

static void c_object_free(struct rcu_head *head)
{
    ptlab_tsan_acquire(head);
    free(caa_container_of(head, struct c_object, head));
}

double ptlab_baseline_call_rcu_per_sec(uint64_t count)
{
    ptlab_rcu_register();
    double t0 = now_ns();
    for (uint64_t i = 0; i < count; i++) {
        struct c_object *o = malloc(sizeof(*o));
        ptlab_tsan_release(&o->head);
        urcu_memb_call_rcu(&o->head, c_object_free);
    }
    urcu_memb_barrier();
    double secs = (now_ns() - t0) / 1e9;
    ptlab_rcu_unregister();
    return (double)count / secs;
}

#define C_MAX_TABLE_BATCH ((4096 - sizeof(struct rcu_head) - sizeof(unsigned int)) / sizeof(void *))

struct c_table_batch {
    struct rcu_head head;
    unsigned int nr;
    void *tables[C_MAX_TABLE_BATCH];
};

static void c_table_batch_free(struct rcu_head *head)
{
    struct c_table_batch *b = caa_container_of(head, struct c_table_batch, head);
    ptlab_tsan_acquire(head);
    for (unsigned int i = 0; i < b->nr; i++)
        free(b->tables[i]);
    free(b);
}

double ptlab_baseline_batch_frees_per_sec(uint64_t tables)
{
    ptlab_rcu_register();
    double t0 = now_ns();
    struct c_table_batch *batch = NULL;
    for (uint64_t i = 0; i < tables; i++) {
        if (!batch) {
            batch = aligned_alloc(4096, 4096);
            batch->nr = 0;
        }
        batch->tables[batch->nr++] = aligned_alloc(4096, 4096);
        if (batch->nr == C_MAX_TABLE_BATCH) {
            ptlab_tsan_release(&batch->head);
            urcu_memb_call_rcu(&batch->head, c_table_batch_free);
            batch = NULL;
        }
    }
    if (batch) {
        ptlab_tsan_release(&batch->head);
        urcu_memb_call_rcu(&batch->head, c_table_batch_free);
    }
    urcu_memb_barrier();
    double secs = (now_ns() - t0) / 1e9;
    ptlab_rcu_unregister();
    return (double)tables / secs;
}

/*
 * Steady state. A burst (a fixed count, then rcu_barrier) mostly measures
 * liburcu's worker, which sleeps 10 ms between batches. These loops run for
 * a warm-up and then a timed window, and count what the producer hands to
 * the freeing path in the window. Deferred memory stays bounded the way the
 * lab's DeferredBound bounds RCU.call: a call that would take the
 * outstanding count past the bound waits a grace period (synchronize_rcu)
 * and frees inline instead of queueing. The window's rate includes the
 * time spent waiting on the bound.
 */
/* Calls between clock reads: a few microseconds of work. */
#define STEADY_CLOCK_EVERY 512

struct steady_clock {
    double start, window_start, warmup_ns, window_ns;
    uint64_t window_count;
    int timing;
};

static void steady_clock_start(struct steady_clock *c, double warmup_seconds, double seconds)
{
    c->warmup_ns = warmup_seconds * 1e9;
    c->window_ns = seconds * 1e9;
    c->start = now_ns();
    c->timing = 0;
    c->window_count = 0;
}

/* Every STEADY_CLOCK_EVERY calls, @count of them so far: whether the window
 * is over (and then its count and length are in @out). */
static int steady_clock_done(struct steady_clock *c, uint64_t count, struct ptlab_baseline_steady *out)
{
    double t = now_ns();
    if (!c->timing) {
        if (t - c->start < c->warmup_ns)
            return 0;
        c->timing = 1;
        c->window_start = t;
        c->window_count = count;
        return 0;
    }
    if (t - c->window_start < c->window_ns)
        return 0;
    out->window_objects = count - c->window_count;
    out->seconds = (t - c->window_start) / 1e9;
    return 1;
}

/*
 * The producer learns what callbacks have returned once every
 * STEADY_LOOK_EVERY calls, as ptlab_rcu_reserve does; between looks its
 * view overstates what is outstanding (frees only grow), and a call the
 * stale view would refuse looks again first.
 */
#define STEADY_LOOK_EVERY 64

/* Objects whose callback has run; written by callbacks on liburcu's worker. */
static _Alignas(64) _Atomic uint64_t c_objects_freed;

static void c_object_free_counted(struct rcu_head *head)
{
    ptlab_tsan_acquire(head);
    free(caa_container_of(head, struct c_object, head));
    atomic_fetch_add_explicit(&c_objects_freed, 1, memory_order_relaxed);
}

struct ptlab_baseline_steady ptlab_baseline_steady_call_rcu(double warmup_seconds, double seconds,
                                                            uint64_t bound_objects)
{
    struct ptlab_baseline_steady out = {0};
    struct steady_clock clock;
    uint64_t queued = 0, seen = 0;
    unsigned since_look = STEADY_LOOK_EVERY;
    uint64_t freed_before = atomic_load_explicit(&c_objects_freed, memory_order_relaxed);
    ptlab_rcu_register();
    steady_clock_start(&clock, warmup_seconds, seconds);
    for (uint64_t count = 0;;) {
        for (unsigned i = 0; i < STEADY_CLOCK_EVERY; i++) {
            struct c_object *o = malloc(sizeof(*o));
            if (++since_look >= STEADY_LOOK_EVERY || seen + since_look >= bound_objects) {
                since_look = 0;
                seen = queued - (atomic_load_explicit(&c_objects_freed, memory_order_relaxed) - freed_before);
            }
            if (seen + since_look >= bound_objects) {
                urcu_memb_synchronize_rcu();
                free(o);
                out.inline_frees++;
            } else {
                ptlab_tsan_release(&o->head);
                urcu_memb_call_rcu(&o->head, c_object_free_counted);
                queued++;
            }
        }
        count += STEADY_CLOCK_EVERY;
        if (steady_clock_done(&clock, count, &out)) {
            out.handed = count;
            break;
        }
    }
    urcu_memb_barrier();
    out.allocated = out.handed;
    out.freed = atomic_load_explicit(&c_objects_freed, memory_order_relaxed) - freed_before + out.inline_frees;
    ptlab_rcu_unregister();
    return out;
}

/*
 * The kernel's shape for the gather, page for page. Every 4 KiB page has a
 * 64-byte descriptor in a memmap (struct page), and every free list is
 * threaded through the descriptors, as page->lru threads the buddy and
 * per-CPU lists. zone->lock guards the pool's list. The producer allocates
 * from a per-CPU list of its own, refilled PCP_BATCH pages at a time
 * (rmqueue_bulk); the callbacks free onto the freeing side's list under its
 * lock (pcp->lock), which goes back to the zone PCP_BATCH pages at a time
 * once it passes PCP_HIGH (free_pcppages_bulk). A table is constructed when
 * allocated (pagetable_pte_ctor: ptlock_init, PG_table, NR_PAGETABLE) and
 * destroyed by its batch's callback (pagetable_dtor), which then frees it
 * (put_page_testzero, onto the list) and, last, the batch page itself. A
 * batch the bound sends inline is freed by the producer onto its own list,
 * as the kernel frees on the CPU it runs on (and the lab's inline free
 * does). Nothing on the freeing path allocates.
 */
#define PCP_BATCH 64
#define PCP_HIGH (8 * PCP_BATCH)
#define C_PG_TABLE 1u

/* The part of struct page the table path touches: one cache line. */
struct c_page {
    struct c_page *lru;
    _Atomic uint32_t refcount;
    uint32_t flags;
    void *pt_mm;
    ptlab_spinlock_t ptl;
    char pad[64 - 24 - sizeof(ptlab_spinlock_t)];
};
_Static_assert(sizeof(struct c_page) == 64, "a struct page is one cache line");

/* struct per_cpu_pages, and the NR_PAGETABLE delta its CPU keeps. */
struct c_pcp {
    struct c_page *list;
    unsigned count;
    int64_t nr_pagetable;
};

struct ptlab_baseline_page_pool {
    ptlab_spinlock_t lock;              /* zone->lock */
    uint64_t nr_free;
    struct c_page *free;
    uint64_t pages;
    struct c_page *memmap;
    char *arena;
    /* The freeing side's per-CPU list: the callbacks' (inline frees go to the producer's own). */
    _Alignas(64) ptlab_spinlock_t free_lock;
    struct c_pcp free_pcp;
    /* Pages given back, by callbacks and inline frees; frees refused
     * (a refcount that was not one). */
    _Alignas(64) _Atomic uint64_t freed;
    _Atomic uint64_t bad_frees;
};

static char *c_page_address(struct ptlab_baseline_page_pool *pool, struct c_page *page)
{
    return pool->arena + (uint64_t)(page - pool->memmap) * 4096;
}

static struct c_page *c_virt_to_page(struct ptlab_baseline_page_pool *pool, void *address)
{
    return pool->memmap + ((char *)address - pool->arena) / 4096;
}

struct ptlab_baseline_page_pool *ptlab_baseline_page_pool_create(uint64_t pages)
{
    struct ptlab_baseline_page_pool *pool = aligned_alloc(64, sizeof(*pool));
    if (!pool)
        return NULL;
    pool->arena = aligned_alloc(4096, pages * 4096);
    pool->memmap = aligned_alloc(64, pages * sizeof(struct c_page));
    if (!pool->arena || !pool->memmap) {
        free(pool->arena);
        free(pool->memmap);
        free(pool);
        return NULL;
    }
    ptlab_spin_init(&pool->lock);
    ptlab_spin_init(&pool->free_lock);
    pool->free_pcp = (struct c_pcp){ 0 };
    pool->pages = pages;
    atomic_init(&pool->freed, 0);
    atomic_init(&pool->bad_frees, 0);
    /* Every page and descriptor faulted in now, as the lab's arena and
     * memmap are before its runs; linked from the top, so that the lowest
     * page is taken first. */
    pool->free = NULL;
    for (uint64_t i = pages; i-- > 0;) {
        struct c_page *page = &pool->memmap[i];
        *page = (struct c_page){ .lru = pool->free };
        c_page_address(pool, page)[0] = 0;
        pool->free = page;
    }
    pool->nr_free = pages;
    return pool;
}

void ptlab_baseline_page_pool_destroy(struct ptlab_baseline_page_pool *pool)
{
    free(pool->memmap);
    free(pool->arena);
    free(pool);
}

uint64_t ptlab_baseline_page_pool_pages(struct ptlab_baseline_page_pool *pool) { return pool->pages; }

uint64_t ptlab_baseline_page_pool_free_pages(struct ptlab_baseline_page_pool *pool)
{
    ptlab_spin_lock(&pool->lock);
    uint64_t n = pool->nr_free;
    ptlab_spin_unlock(&pool->lock);
    return n;
}

/* rmqueue_bulk: up to @n pages from the zone onto @pcp's list. */
static void c_rmqueue_bulk(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp, unsigned n)
{
    ptlab_spin_lock(&pool->lock);
    for (; n && pool->free; n--) {
        struct c_page *page = pool->free;
        pool->free = page->lru;
        page->lru = pcp->list;
        pcp->list = page;
        pcp->count++;
        pool->nr_free--;
    }
    ptlab_spin_unlock(&pool->lock);
}

/* free_pcppages_bulk: @n pages from @pcp's list back to the zone. */
static void c_free_pcppages_bulk(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp, unsigned n)
{
    ptlab_spin_lock(&pool->lock);
    for (; n && pcp->list; n--) {
        struct c_page *page = pcp->list;
        pcp->list = page->lru;
        pcp->count--;
        page->lru = pool->free;
        pool->free = page;
        pool->nr_free++;
    }
    ptlab_spin_unlock(&pool->lock);
}

/* rmqueue_pcplist, then set_page_refcounted; NULL when the pool is dry. */
static struct c_page *c_alloc_page(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp)
{
    if (!pcp->count)
        c_rmqueue_bulk(pool, pcp, PCP_BATCH);
    struct c_page *page = pcp->list;
    if (!page)
        return NULL;
    pcp->list = page->lru;
    pcp->count--;
    atomic_store_explicit(&page->refcount, 1, memory_order_relaxed);
    return page;
}

/* __free_pages: put_page_testzero, then onto @pcp's list, draining a batch
 * to the zone past the high mark. */
static void c_free_page(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp, struct c_page *page)
{
    if (atomic_fetch_sub_explicit(&page->refcount, 1, memory_order_acq_rel) != 1) {
        atomic_fetch_add_explicit(&pool->bad_frees, 1, memory_order_relaxed);
        return;
    }
    page->lru = pcp->list;
    pcp->list = page;
    if (++pcp->count >= PCP_HIGH)
        c_free_pcppages_bulk(pool, pcp, PCP_BATCH);
}

/* pagetable_pte_ctor, and the owning mm the lab's constructor records. */
static void c_pte_ctor(struct c_pcp *pcp, struct c_page *page, void *mm)
{
    ptlab_spin_init(&page->ptl);
    page->flags |= C_PG_TABLE;
    page->pt_mm = mm;
    pcp->nr_pagetable++;
}

/* pagetable_dtor. */
static void c_pte_dtor(struct c_pcp *pcp, struct c_page *page)
{
    page->flags &= ~C_PG_TABLE;
    page->pt_mm = NULL;
    pcp->nr_pagetable--;
}

/* Stands for the mm the tables belong to: only its address is kept. */
static char c_gather_mm;

/* pte_alloc, then pte_free_tlb onto the open batch: a table from @pcp,
 * constructed, its address into *@batch (a page from @pcp opened first when
 * there is none), every page taken counted in *@allocated. Returns 1 when
 * the batch is now full (the caller hands it on and clears *@batch), 0 when
 * not, -1 when the pool ran dry. Forced inline: with two callers the
 * compiler keeps it out of line, and the steady loop would pay a call per
 * table that the kernel's (and its own, before this was shared) does not. */
static inline __attribute__((always_inline)) int c_gather_table(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp,
                                                                 struct c_table_batch **batch, uint64_t *allocated)
{
    if (!*batch) {
        struct c_page *page = c_alloc_page(pool, pcp);
        if (!page)
            return -1;
        (*allocated)++;
        *batch = (struct c_table_batch *)c_page_address(pool, page);
        (*batch)->nr = 0;
    }
    struct c_page *table = c_alloc_page(pool, pcp);
    if (!table)
        return -1;
    (*allocated)++;
    c_pte_ctor(pcp, table, &c_gather_mm);
    (*batch)->tables[(*batch)->nr++] = c_page_address(pool, table);
    return (*batch)->nr == C_MAX_TABLE_BATCH;
}

/* The pool a run uses, one run at a time: ptlab_baseline_steady_c_gather
 * claims it (its callbacks find their pool here) and releases it after its
 * rcu_barrier; ptlab_baseline_c_table_path, which queues no callback,
 * claims it for its own run so that the two never share a pool at once. */
static struct ptlab_baseline_page_pool *_Atomic c_gather_pool;

/* __tlb_remove_table_free: pagetable_dtor_free for each table, then the
 * batch page, onto @pcp's list. */
static void c_tlb_remove_table_free(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp, struct c_table_batch *b)
{
    unsigned nr = b->nr;
    for (unsigned i = 0; i < nr; i++) {
        struct c_page *table = c_virt_to_page(pool, b->tables[i]);
        c_pte_dtor(pcp, table);
        c_free_page(pool, pcp, table);
    }
    c_free_page(pool, pcp, c_virt_to_page(pool, b));
    atomic_fetch_add_explicit(&pool->freed, nr + 1, memory_order_relaxed);
}

/* tlb_remove_table_rcu: the batch freed on liburcu's worker, onto the
 * freeing side's list under its pcp->lock. */
static void c_gather_batch_free(struct rcu_head *head)
{
    ptlab_tsan_acquire(head);
    struct ptlab_baseline_page_pool *pool = atomic_load_explicit(&c_gather_pool, memory_order_relaxed);
    ptlab_spin_lock(&pool->free_lock);
    c_tlb_remove_table_free(pool, &pool->free_pcp, caa_container_of(head, struct c_table_batch, head));
    ptlab_spin_unlock(&pool->free_lock);
}

/* The end of a run: @pcp's pages and the freeing side's back to the zone,
 * and the books checked. Non-zero when they do not close: a table
 * constructed and destroyed a different number of times, or a refused free
 * since @bad_before. */
static int c_gather_close(struct ptlab_baseline_page_pool *pool, struct c_pcp *pcp, uint64_t bad_before)
{
    c_free_pcppages_bulk(pool, pcp, pcp->count);
    ptlab_spin_lock(&pool->free_lock);
    c_free_pcppages_bulk(pool, &pool->free_pcp, pool->free_pcp.count);
    int64_t nr_pagetable = pcp->nr_pagetable + pool->free_pcp.nr_pagetable;
    pool->free_pcp.nr_pagetable = 0;
    ptlab_spin_unlock(&pool->free_lock);
    return nr_pagetable != 0 || atomic_load_explicit(&pool->bad_frees, memory_order_relaxed) != bad_before;
}

struct ptlab_baseline_steady ptlab_baseline_steady_c_gather(struct ptlab_baseline_page_pool *pool,
                                                            double warmup_seconds, double seconds,
                                                            uint64_t bound_pages)
{
    struct ptlab_baseline_steady out = {0};
    struct ptlab_baseline_page_pool *idle = NULL;
    if (!atomic_compare_exchange_strong(&c_gather_pool, &idle, pool)) {
        out.failed = 1;
        return out;
    }
    struct steady_clock clock;
    struct c_pcp pcp = { 0 };
    struct c_table_batch *batch = NULL;
    uint64_t handed_pages = 0;
    uint64_t freed_before = atomic_load_explicit(&pool->freed, memory_order_relaxed);
    uint64_t bad_before = atomic_load_explicit(&pool->bad_frees, memory_order_relaxed);
    ptlab_rcu_register();
    steady_clock_start(&clock, warmup_seconds, seconds);
    for (uint64_t count = 0;;) {
        unsigned i;
        for (i = 0; i < STEADY_CLOCK_EVERY; i++) {
            int full = c_gather_table(pool, &pcp, &batch, &out.allocated);
            if (full < 0)
                break;
            if (!full)
                continue;
            /* One look per batch: one load per 509 tables. */
            uint64_t outstanding = handed_pages
                - (atomic_load_explicit(&pool->freed, memory_order_relaxed) - freed_before);
            handed_pages += C_MAX_TABLE_BATCH + 1;
            if (outstanding + C_MAX_TABLE_BATCH + 1 > bound_pages) {
                /* Freed where it was built, onto this CPU's own list,
                 * as the lab's inline free (and the kernel's, run on the
                 * CPU that unlinked the tables) goes. */
                urcu_memb_synchronize_rcu();
                c_tlb_remove_table_free(pool, &pcp, batch);
                out.inline_frees++;
            } else {
                ptlab_tsan_release(&batch->head);
                urcu_memb_call_rcu(&batch->head, c_gather_batch_free);
            }
            batch = NULL;
        }
        if (i < STEADY_CLOCK_EVERY) {
            /* The pool holds more pages than the bound lets out at once:
             * running dry means the books are wrong. */
            out.failed = 1;
            out.handed = count + i;
            break;
        }
        count += STEADY_CLOCK_EVERY;
        if (steady_clock_done(&clock, count, &out)) {
            out.handed = count;
            break;
        }
    }
    if (batch) {
        ptlab_tsan_release(&batch->head);
        urcu_memb_call_rcu(&batch->head, c_gather_batch_free);
    }
    urcu_memb_barrier();
    if (c_gather_close(pool, &pcp, bad_before))
        out.failed = 1;
    out.freed = atomic_load_explicit(&pool->freed, memory_order_relaxed) - freed_before;
    ptlab_rcu_unregister();
    atomic_store(&c_gather_pool, NULL);
    return out;
}

/*
 * The same table path with the grace period taken out, on one thread for a
 * fixed count: each full batch freed at once onto the producer's own list,
 * as the lab's .noRCU policy frees a batch right after its flush. With no
 * worker, no bound and no other CPU, everything it touches stays hot: what
 * the kernel's shape itself costs per table, held against the model's own
 * per-table work (table_path_ns_c). window_objects is @tables, seconds
 * their time, the last partial batch's free included; inline_frees counts
 * the batches.
 */
struct ptlab_baseline_steady ptlab_baseline_c_table_path(struct ptlab_baseline_page_pool *pool, uint64_t tables)
{
    struct ptlab_baseline_steady out = {0};
    struct ptlab_baseline_page_pool *idle = NULL;
    if (!atomic_compare_exchange_strong(&c_gather_pool, &idle, pool)) {
        out.failed = 1;
        return out;
    }
    struct c_pcp pcp = { 0 };
    struct c_table_batch *batch = NULL;
    uint64_t freed_before = atomic_load_explicit(&pool->freed, memory_order_relaxed);
    uint64_t bad_before = atomic_load_explicit(&pool->bad_frees, memory_order_relaxed);
    double t0 = now_ns();
    uint64_t i;
    for (i = 0; i < tables; i++) {
        int full = c_gather_table(pool, &pcp, &batch, &out.allocated);
        if (full < 0)
            break;
        if (full) {
            c_tlb_remove_table_free(pool, &pcp, batch);
            out.inline_frees++;
            batch = NULL;
        }
    }
    if (batch)
        c_tlb_remove_table_free(pool, &pcp, batch);
    out.seconds = (now_ns() - t0) / 1e9;
    out.window_objects = out.handed = i;
    /* Closed whatever happened: a dry pool's pages still go back. */
    int books_wrong = c_gather_close(pool, &pcp, bad_before);
    if (i < tables || books_wrong)
        out.failed = 1;
    out.freed = atomic_load_explicit(&pool->freed, memory_order_relaxed) - freed_before;
    atomic_store(&c_gather_pool, NULL);
    return out;
}
