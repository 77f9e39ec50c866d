/*
 * baseline.h - the raw C that `ptlab bench` holds the Swift paths against
 *
 * No kernel counterpart: this is the yardstick. Each of the lab's speed
 * promises is a ratio against what a C programmer would write with
 * liburcu directly (BENCHMARKS.md, "What each number is"), measured in the
 * same process and round as the Swift side, so that both share whatever
 * state the machine is in. They are plain C for that reason: a baseline
 * written through the lab's own layers would measure the lab against
 * itself.
 *
 *  - ptlab_baseline_read_ns(): one rcu_read_lock/unlock pair, from
 *    liburcu's inlines (rcu_read_ns_c);
 *  - ptlab_baseline_call_rcu_per_sec(): malloc'd objects through call_rcu,
 *    freed in the callback (call_rcu_per_sec_c);
 *  - ptlab_baseline_batch_frees_per_sec(): tables in batches of 509 per
 *    call_rcu, as the kernel's mmu_gather table batch (c_batch_frees_per_sec);
 *  - ptlab_baseline_steady_call_rcu(): the call_rcu flood sustained for a
 *    window, deferred objects bounded (steady_call_rcu_per_sec_c);
 *  - ptlab_baseline_steady_c_gather(): the table batch in the kernel's own
 *    shape, sustained for a window: 4 KiB pages with a 64-byte struct page
 *    each (ptlab_baseline_page_pool_create), allocated from and freed to
 *    per-CPU lists threaded through the descriptors over a zone free list,
 *    each table constructed and destroyed (ptlock, PG_table,
 *    NR_PAGETABLE), 509 tables per call_rcu'd batch page, the callback
 *    freeing the tables and then the batch page; deferred pages bounded
 *    (steady_c_gather_tables_per_sec);
 *  - ptlab_baseline_c_table_path(): the same table path on one thread for a
 *    fixed count, each full batch freed at once with no grace period: the
 *    kernel's shape per table when everything is hot (table_path_ns_c).
 *
 * A steady run warms up for @warmup_seconds, then counts for @seconds what
 * the producer hands to the freeing path. A call that would take what is
 * outstanding past the bound waits a grace period and frees inline, as the
 * lab's DeferredBound does. One run of each at a time: each counts its
 * frees in a global of its own. The gather's callback neither mallocs nor
 * frees: its pages go back onto lists threaded through their descriptors.
 */
#ifndef PTLAB_BASELINE_H
#define PTLAB_BASELINE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Non-zero in a TSan or ASan build: their shadow memory lies where
 * `ptlab bench` would map the churn trace on the live kernel. */
int ptlab_baseline_sanitized(void);

double ptlab_baseline_read_ns(uint64_t iterations);
double ptlab_baseline_call_rcu_per_sec(uint64_t count);
double ptlab_baseline_batch_frees_per_sec(uint64_t tables);

struct ptlab_baseline_steady {
    /* Objects (tables, for the gather) handed to the freeing path in the
     * timed window, and the window's length. */
    uint64_t window_objects;
    double seconds;
    /* The whole run, warm-up included: objects (tables) handed over;
     * objects freed, or for the gather pages (tables and batch pages)
     * taken from the pool and given back by the end. */
    uint64_t handed;
    uint64_t allocated;
    uint64_t freed;
    /* Calls that met the bound: a grace period waited, then freed inline.
     * For ptlab_baseline_c_table_path, which has no bound, the full
     * batches, every one freed at once. */
    uint64_t inline_frees;
    /* Non-zero when the run could not go on (another run held the pool, or
     * the pool ran dry) or its books were wrong (a refused free, or tables
     * constructed and destroyed a different number of times). */
    int failed;
};

struct ptlab_baseline_steady ptlab_baseline_steady_call_rcu(double warmup_seconds, double seconds,
                                                            uint64_t bound_objects);

/* Preallocated pages, every one faulted in; NULL when memory is short. */
struct ptlab_baseline_page_pool;
struct ptlab_baseline_page_pool *ptlab_baseline_page_pool_create(uint64_t pages);
void ptlab_baseline_page_pool_destroy(struct ptlab_baseline_page_pool *pool);
uint64_t ptlab_baseline_page_pool_pages(struct ptlab_baseline_page_pool *pool);
/* Pages on the free list now (all of them between runs). */
uint64_t ptlab_baseline_page_pool_free_pages(struct ptlab_baseline_page_pool *pool);

struct ptlab_baseline_steady ptlab_baseline_steady_c_gather(struct ptlab_baseline_page_pool *pool,
                                                            double warmup_seconds, double seconds,
                                                            uint64_t bound_pages);
struct ptlab_baseline_steady ptlab_baseline_c_table_path(struct ptlab_baseline_page_pool *pool, uint64_t tables);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_BASELINE_H */
