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
 * The kernel's shape for the gather: tables and batch pages come from a
 * free list of 4 KiB pages, and a batch's callback gives all of them back.
 * The free list is a stack of page addresses under a spinlock (zone->lock).
 * The producer takes PCP_BATCH pages at a time into a list of its own and
 * allocates from that, as the kernel's per-CPU lists refill from the zone
 * pcp->batch pages at a time; a callback gives its 510 pages back under one
 * lock, as a per-CPU list drains in batches. Nothing on the freeing path
 * allocates: the stack has room for every page of the pool.
 */
#define PCP_BATCH 64

struct ptlab_baseline_page_pool {
    ptlab_spinlock_t lock;
    uint64_t nr_free;
    uint64_t pages;
    void **free;
    char *arena;
    /* Pages given back, by callbacks and inline frees. */
    _Alignas(64) _Atomic uint64_t freed;
};

struct ptlab_baseline_page_pool *ptlab_baseline_page_pool_create(uint64_t pages)
{
    struct ptlab_baseline_page_pool *pool = aligned_alloc(64, sizeof(*pool));
    if (!pool)
        return NULL;
    pool->arena = aligned_alloc(4096, pages * 4096);
    pool->free = malloc(pages * sizeof(void *));
    if (!pool->arena || !pool->free) {
        free(pool->arena);
        free(pool->free);
        free(pool);
        return NULL;
    }
    ptlab_spin_init(&pool->lock);
    pool->pages = pages;
    atomic_init(&pool->freed, 0);
    /* Every page faulted in now, as the lab's arena is before its runs;
     * pushed from the top, so the lowest is taken first. */
    for (uint64_t i = 0; i < pages; i++) {
        char *page = pool->arena + (pages - 1 - i) * 4096;
        page[0] = 0;
        pool->free[i] = page;
    }
    pool->nr_free = pages;
    return pool;
}

void ptlab_baseline_page_pool_destroy(struct ptlab_baseline_page_pool *pool)
{
    free(pool->free);
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

/* The producer's own pages, refilled from the pool. */
struct pcp_list {
    unsigned count;
    void *pages[PCP_BATCH];
};

static void *pool_take(struct ptlab_baseline_page_pool *pool, struct pcp_list *pcp)
{
    if (!pcp->count) {
        ptlab_spin_lock(&pool->lock);
        unsigned n = pool->nr_free < PCP_BATCH ? (unsigned)pool->nr_free : PCP_BATCH;
        pool->nr_free -= n;
        memcpy(pcp->pages, &pool->free[pool->nr_free], n * sizeof(void *));
        ptlab_spin_unlock(&pool->lock);
        pcp->count = n;
        if (!n)
            return NULL;
    }
    return pcp->pages[--pcp->count];
}

/* A batch's tables, then the batch page itself, under one lock: the page is
 * read until it is on the list, and from then on it is the producer's. */
static void pool_give_batch(struct ptlab_baseline_page_pool *pool, struct c_table_batch *b)
{
    unsigned nr = b->nr;
    ptlab_spin_lock(&pool->lock);
    memcpy(&pool->free[pool->nr_free], b->tables, nr * sizeof(void *));
    pool->free[pool->nr_free + nr] = b;
    pool->nr_free += nr + 1;
    ptlab_spin_unlock(&pool->lock);
    atomic_fetch_add_explicit(&pool->freed, nr + 1, memory_order_relaxed);
}

/* The producer's own list back to the pool, when its run ends. */
static void pool_give_list(struct ptlab_baseline_page_pool *pool, struct pcp_list *pcp)
{
    ptlab_spin_lock(&pool->lock);
    memcpy(&pool->free[pool->nr_free], pcp->pages, pcp->count * sizeof(void *));
    pool->nr_free += pcp->count;
    ptlab_spin_unlock(&pool->lock);
    pcp->count = 0;
}

/* The pool a batch's callback gives its pages back to: one run at a time
 * (ptlab_baseline_steady_c_gather claims it), ended by rcu_barrier. */
static struct ptlab_baseline_page_pool *_Atomic c_gather_pool;

/* tlb_remove_table_rcu: the tables, then the batch page itself. */
static void c_gather_batch_free(struct rcu_head *head)
{
    ptlab_tsan_acquire(head);
    pool_give_batch(atomic_load_explicit(&c_gather_pool, memory_order_relaxed),
                    caa_container_of(head, struct c_table_batch, head));
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
    struct pcp_list pcp = { .count = 0 };
    struct c_table_batch *batch = NULL;
    uint64_t handed_pages = 0;
    uint64_t freed_before = atomic_load_explicit(&pool->freed, memory_order_relaxed);
    ptlab_rcu_register();
    steady_clock_start(&clock, warmup_seconds, seconds);
    for (uint64_t count = 0;;) {
        unsigned i;
        for (i = 0; i < STEADY_CLOCK_EVERY; i++) {
            if (!batch) {
                batch = pool_take(pool, &pcp);
                if (!batch)
                    break;
                out.allocated++;
                batch->nr = 0;
            }
            void *table = pool_take(pool, &pcp);
            if (!table)
                break;
            out.allocated++;
            batch->tables[batch->nr++] = table;
            if (batch->nr < C_MAX_TABLE_BATCH)
                continue;
            /* One look per batch: one load per 509 tables. */
            uint64_t outstanding = handed_pages
                - (atomic_load_explicit(&pool->freed, memory_order_relaxed) - freed_before);
            handed_pages += C_MAX_TABLE_BATCH + 1;
            if (outstanding + C_MAX_TABLE_BATCH + 1 > bound_pages) {
                urcu_memb_synchronize_rcu();
                c_gather_batch_free(&batch->head);
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
    pool_give_list(pool, &pcp);
    out.freed = atomic_load_explicit(&pool->freed, memory_order_relaxed) - freed_before;
    ptlab_rcu_unregister();
    atomic_store(&c_gather_pool, NULL);
    return out;
}
