/*
 * The raw C liburcu paths `ptlab bench` measures beside the Swift ones, so
 * every Swift number is a ratio against C measured in the same run. These
 * are what a C programmer would write: malloc'd objects with an rcu_head,
 * and the kernel's table batch of 509 pointers per call_rcu. The hand-offs
 * carry the lab's TSan annotations (see rcu.c), which compile to nothing
 * outside a TSan build, so that the sanitizer run can run the bench too.
 */
#include <stdlib.h>
#include <time.h>
#include "CSupport/rcu.h"
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
