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
 *    call_rcu, as the kernel's mmu_gather table batch (c_batch_frees_per_sec).
 */
#ifndef PTLAB_BASELINE_H
#define PTLAB_BASELINE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

double ptlab_baseline_read_ns(uint64_t iterations);
double ptlab_baseline_call_rcu_per_sec(uint64_t count);
double ptlab_baseline_batch_frees_per_sec(uint64_t tables);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_BASELINE_H */
