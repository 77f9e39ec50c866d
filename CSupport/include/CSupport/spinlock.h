/*
 * spinlock.h - the lab's spinlock_t: the split page-table lock and
 * zone->lock
 *
 * The kernel takes two spinlocks on the paths the lab models: the split
 * PTE/PMD lock in each page table's struct ptdesc (pte_offset_map_lock,
 * pmd_lock) and zone->lock around the buddy free lists. Both are held for
 * a few instructions, and the ptlock lives inside the descriptor (two
 * cache lines, nothing allocated), so each is one 32-bit word taken with a
 * compare-and-swap, as in the kernel.
 *
 * What differs from the kernel is preemption: a kernel spinlock holder
 * cannot be preempted, a userspace one can. A waiter therefore spins a
 * while and then gives its CPU away between attempts, instead of spinning
 * out its time slice behind a holder that is not running.
 *
 *  - ptlab_spin_init(), ptlab_spin_lock(), ptlab_spin_unlock():
 *    spin_lock_init(), spin_lock(), spin_unlock();
 *  - ptlab_spin_trylock(): spin_trylock(), for waiters that must keep
 *    doing something else while they wait.
 */
#ifndef PTLAB_SPINLOCK_H
#define PTLAB_SPINLOCK_H

#include <sched.h>
#include <stdint.h>
#include <stdatomic.h>

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_SPINLOCK_H */
