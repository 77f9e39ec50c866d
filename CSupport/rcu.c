/*
 * The one trampoline liburcu calls for every PageTableLab callback, and the
 * accounting around it. Nothing here allocates: the head is embedded in the
 * object being freed.
 */
#include "CSupport.h"

struct ptlab_rcu_stats ptlab_rcu_stats;
/* TSan's name for "a grace period has passed" (see ptlab_rcu_read_unlock). */
char ptlab_rcu_gp_key;
/* TSan's name for "every callback that has finished" (see ptlab_rcu_barrier). */
static char barrier_key;
_Thread_local int ptlab_rcu_registered_depth;
_Thread_local int ptlab_rcu_in_callback;

/*
 * liburcu is not instrumented, so TSan cannot see that a grace period orders
 * the caller's last write before the callback's first read. Tell it: release
 * on the head before queueing, acquire on it first thing in the callback.
 */
void ptlab_tsan_release(void *addr)
{
#ifdef PTLAB_TSAN
    __tsan_release(addr);
#else
    (void)addr;
#endif
}

void ptlab_tsan_acquire(void *addr)
{
#ifdef PTLAB_TSAN
    __tsan_acquire(addr);
#else
    (void)addr;
#endif
}

static void account_done(uint64_t bytes)
{
    atomic_fetch_add_explicit(&ptlab_rcu_stats.done_bytes, (int64_t)bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&ptlab_rcu_stats.invoked, 1, memory_order_relaxed);
}

/* Read done before reserved: reserved never falls below what is done, so
 * the difference is never negative. */
static int64_t outstanding_bytes(void)
{
    int64_t done = atomic_load_explicit(&ptlab_rcu_stats.done_bytes, memory_order_relaxed);
    return atomic_load_explicit(&ptlab_rcu_stats.reserved_bytes, memory_order_relaxed) - done;
}

static void ptlab_rcu_trampoline(struct rcu_head *rh)
{
    struct ptlab_rcu_head *head = caa_container_of(rh, struct ptlab_rcu_head, head);
    ptlab_tsan_acquire(head);
    ptlab_tsan_acquire(&ptlab_rcu_gp_key);
    /* The callback may free the object holding @head: read it first. */
    uint64_t bytes = head->bytes;
    int nested = ptlab_rcu_in_callback;
    ptlab_rcu_in_callback = 1;
    head->func(head);
    ptlab_rcu_in_callback = nested;
    account_done(bytes);
    ptlab_tsan_release(&barrier_key);
}

static void note_peak(int64_t now)
{
    int64_t peak = atomic_load_explicit(&ptlab_rcu_stats.peak_bytes, memory_order_relaxed);
    while (now > peak &&
           !atomic_compare_exchange_weak_explicit(&ptlab_rcu_stats.peak_bytes, &peak, now,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/*
 * Each caller looks at the callbacks' line (done_bytes) once every
 * RESERVE_LOOK_EVERY calls, not on every call: reading it on every call
 * bounced that line between the caller and the worker once per object
 * (a call_rcu flood from Swift ran at 0.8x C's; at 0.95x without). done
 * only grows, so an old look overstates what is outstanding: a reservation
 * it admits is within the bound, and one it would refuse gets a fresh look
 * first. The peak is taken at each look, so it is sampled, not exact.
 */
#define RESERVE_LOOK_EVERY 64
static _Thread_local int64_t seen_done;
static _Thread_local unsigned calls_since_look = RESERVE_LOOK_EVERY;

int ptlab_rcu_reserve(uint64_t bytes, uint64_t bound)
{
    int64_t reserved = atomic_fetch_add_explicit(&ptlab_rcu_stats.reserved_bytes, (int64_t)bytes,
                                                 memory_order_relaxed) + (int64_t)bytes;
    int look = ++calls_since_look >= RESERVE_LOOK_EVERY;
    if (!look && bound && reserved - seen_done > (int64_t)bound)
        look = 1;
    if (!look)
        return 1;
    calls_since_look = 0;
    seen_done = atomic_load_explicit(&ptlab_rcu_stats.done_bytes, memory_order_relaxed);
    int64_t now = reserved - seen_done;
    if (bound && now > (int64_t)bound) {
        atomic_fetch_sub_explicit(&ptlab_rcu_stats.reserved_bytes, (int64_t)bytes,
                                  memory_order_relaxed);
        return 0;
    }
    note_peak(now);
    return 1;
}

void ptlab_call_rcu(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *),
                    uint64_t bytes)
{
    /* @bytes were reserved by ptlab_rcu_reserve; the trampoline returns them. */
    head->func = func;
    head->bytes = bytes;
    atomic_fetch_add_explicit(&ptlab_rcu_stats.queued, 1, memory_order_relaxed);
    ptlab_tsan_release(head);
    urcu_memb_call_rcu(&head->head, ptlab_rcu_trampoline);
}

/* See ptlab_rcu_read_unlock for the key. */
void ptlab_rcu_synchronize(void)
{
    urcu_memb_synchronize_rcu();
    ptlab_tsan_acquire(&ptlab_rcu_gp_key);
}

/*
 * rcu_barrier returns after every callback queued before it has run, but it
 * waits inside uninstrumented liburcu: each callback releases one shared key
 * when it finishes, and the barrier acquires it on return. A callback
 * queued after the barrier began but finished before it returned is
 * ordered too: an over-approximation that could hide a race with such a
 * callback, never one with a callback the barrier waits for.
 */
void ptlab_rcu_barrier(void)
{
    urcu_memb_barrier();
    ptlab_tsan_acquire(&barrier_key);
}

void ptlab_rcu_run_inline(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *))
{
    atomic_fetch_add_explicit(&ptlab_rcu_stats.inline_fallbacks, 1, memory_order_relaxed);
    head->func = func;
    head->bytes = 0;
    func(head);
}

void ptlab_rcu_register(void)
{
    if (ptlab_rcu_registered_depth++ == 0)
        urcu_memb_register_thread();
}

void ptlab_rcu_unregister(void)
{
    if (--ptlab_rcu_registered_depth == 0)
        urcu_memb_unregister_thread();
}

void ptlab_rcu_stats_read(struct ptlab_rcu_stats_snapshot *out)
{
    out->invoked = atomic_load(&ptlab_rcu_stats.invoked);
    out->queued = atomic_load(&ptlab_rcu_stats.queued);
    out->outstanding_callbacks = (int64_t)(out->queued - out->invoked);
    out->outstanding_bytes = outstanding_bytes();
    out->peak_bytes = atomic_load(&ptlab_rcu_stats.peak_bytes);
    out->inline_fallbacks = atomic_load(&ptlab_rcu_stats.inline_fallbacks);
}

void ptlab_rcu_reset_peak(void)
{
    atomic_store(&ptlab_rcu_stats.peak_bytes, outstanding_bytes());
}
