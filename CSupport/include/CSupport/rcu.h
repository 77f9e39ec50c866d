/*
 * rcu.h - RCU for the lab: liburcu's read side, inlined, and call_rcu on a
 * head embedded in the object it frees
 *
 * The kernel frees a page table only once no lockless walker can still be
 * reading it: GUP-fast walks inside rcu_read_lock(), and the free goes
 * through call_rcu() on the rcu_head inside struct ptdesc. The lab does the
 * same with liburcu's memb flavour (real grace periods, not an imitation),
 * and this header is where the two meet. Three constraints shape it:
 *
 *  - A read section must cost what the kernel's does, next to nothing. So
 *    it is liburcu's _LGPL_SOURCE static inlines, compiled into each
 *    caller, Swift ones included; through liburcu's exported symbols a
 *    section costs about 8x more. That is why this header defines
 *    _LGPL_SOURCE before any liburcu include, and why the package is
 *    LGPL (README, "Licence").
 *
 *  - Queueing a free must not allocate: it runs in gather flushes, RCU
 *    callbacks and the deferred kernel-table work. So the head lives in the
 *    object (struct ptlab_rcu_head, inside struct ptdesc) and carries its
 *    own callback and byte count, and liburcu calls one trampoline (rcu.c)
 *    that needs no side table to find either.
 *
 *  - Deferred memory must stay bounded. A caller may reserve its bytes
 *    against a bound first (ptlab_rcu_reserve, ptlab_call_rcu_bounded) and
 *    wait a grace period and free inline when refused (the back-pressure
 *    path). The bytes actually in liburcu's hands are counted separately,
 *    where a head is queued and where its callback returns, so that a
 *    monitor checks the bound from the other side instead of trusting the
 *    admission it is checking.
 *
 * liburcu is not instrumented, so every wait and hand-off here is also
 * annotated for ThreadSanitizer (sanitizer.h).
 *
 * The API, in the kernel's terms:
 *
 *  - ptlab_rcu_register() / ptlab_rcu_unregister(): a thread becomes an
 *    RCU reader (nested; liburcu sees each thread once);
 *  - ptlab_rcu_read_lock() / ptlab_rcu_read_unlock(): rcu_read_lock() /
 *    rcu_read_unlock();
 *  - ptlab_call_rcu(), ptlab_call_rcu_bounded(), ptlab_rcu_reserve(),
 *    ptlab_rcu_run_inline(): call_rcu() with its accounting, and the
 *    inline fallback;
 *  - ptlab_rcu_synchronize(), ptlab_rcu_barrier(): synchronize_rcu(),
 *    rcu_barrier();
 *  - ptlab_rcu_stats_read(), ptlab_rcu_in_flight_bytes(): the books.
 */
#ifndef PTLAB_RCU_H
#define PTLAB_RCU_H

#define _LGPL_SOURCE 1
#include <stdint.h>
#include <stdatomic.h>
#include <urcu/urcu-memb.h>
#include <urcu/call-rcu.h>
#include "sanitizer.h"

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_RCU_H */
