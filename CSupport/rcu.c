/*
 * The one trampoline liburcu calls for every PageTableLab callback, and the
 * accounting around it. Nothing here allocates: the head is embedded in the
 * object being freed.
 */
#include "CSupport/rcu.h"
#include "CSupport/pcp.h"
#include "CSupport/sanitizer.h"

struct ptlab_rcu_stats ptlab_rcu_stats;
/* TSan's name for "a grace period has passed" (see ptlab_rcu_read_unlock). */
char ptlab_rcu_gp_key;
/* TSan's name for "every callback that has finished" (see ptlab_rcu_barrier). */
static char barrier_key;
_Thread_local int ptlab_rcu_registered_depth;
_Thread_local int ptlab_rcu_in_callback;

/*
 * liburcu is not instrumented, so TSan cannot see that a grace period orders
 * the caller's last write before the callback's first read. Tell it (the
 * hooks are in CSupport/sanitizer.h): release on the head before queueing, acquire on
 * it first thing in the callback.
 */

static void account_done(uint64_t bytes)
{
    struct ptlab_pcp *pcp = ptlab_pcp_counting();
    ptlab_pcp_event_add(pcp, PTLAB_EV_RCU_DONE_BYTES, (int64_t)bytes);
    ptlab_pcp_event_add(pcp, PTLAB_EV_RCU_INVOKED, 1);
}

/* Bytes reserved but not yet returned, less what @ev says callbacks have done. */
static int64_t outstanding_of(const int64_t ev[PTLAB_NR_EVENTS])
{
    /* Read after the events: a done it counted has its reservation here. */
    int64_t bounded = atomic_load_explicit(&ptlab_rcu_stats.reserved_bytes, memory_order_acquire);
    return bounded + ev[PTLAB_EV_RCU_RESERVED_BYTES] - ev[PTLAB_EV_RCU_DONE_BYTES];
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

/*
 * A bounded caller sums the counters (a lock and a walk over the threads)
 * once every RESERVE_LOOK_EVERY calls, not on every call: that is where it
 * learns what callbacks have returned. Between looks it adds its
 * reservation to the global count and compares against the last look's
 * view of everything else: done only grows, so that view overstates what
 * is outstanding, and a reservation it would refuse gets a fresh look
 * first. An unbounded caller counts in its own thread and never touches a
 * shared line. Nothing here measures the peak: the bound is checked from
 * the other side (ptlab_rcu_in_flight_bytes), so that a broken admission
 * cannot hide its own overshoot.
 */
#define RESERVE_LOOK_EVERY 64
static _Thread_local int64_t seen_rest;          /* outstanding, less bounded reservations */
static _Thread_local unsigned calls_since_look = RESERVE_LOOK_EVERY;   /* the first call looks */

int ptlab_rcu_reserve(uint64_t bytes, uint64_t bound)
{
    if (!bound) {
        ptlab_pcp_event_add(ptlab_pcp_counting(), PTLAB_EV_RCU_RESERVED_BYTES, (int64_t)bytes);
        return 1;
    }
    int64_t bounded = atomic_fetch_add_explicit(&ptlab_rcu_stats.reserved_bytes, (int64_t)bytes,
                                                memory_order_release) + (int64_t)bytes;
    if (++calls_since_look < RESERVE_LOOK_EVERY && bounded + seen_rest <= (int64_t)bound)
        return 1;
    calls_since_look = 0;
    /*
     * Everything but bounded reservations, from one sum: reading the
     * global count twice (once for the total, once to take it out again)
     * let a reservation made between the reads vanish from seen_rest, and
     * admit that much past the bound (caught by the in-flight monitor).
     */
    int64_t ev[PTLAB_NR_EVENTS];
    ptlab_pcp_sum_events(ev);
    seen_rest = ev[PTLAB_EV_RCU_RESERVED_BYTES] - ev[PTLAB_EV_RCU_DONE_BYTES];
    int64_t now = atomic_load_explicit(&ptlab_rcu_stats.reserved_bytes, memory_order_acquire) + seen_rest;
    if (now > (int64_t)bound) {
        atomic_fetch_sub_explicit(&ptlab_rcu_stats.reserved_bytes, (int64_t)bytes,
                                  memory_order_relaxed);
        return 0;
    }
    return 1;
}

void ptlab_call_rcu(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *),
                    uint64_t bytes)
{
    /* @bytes were reserved by ptlab_rcu_reserve; the trampoline returns them. */
    struct ptlab_pcp *pcp = ptlab_pcp_counting();
    head->func = func;
    head->bytes = bytes;
    ptlab_pcp_event_add(pcp, PTLAB_EV_RCU_QUEUED, 1);
    ptlab_pcp_event_add(pcp, PTLAB_EV_RCU_QUEUED_BYTES, (int64_t)bytes);
    ptlab_tsan_release(head);
    urcu_memb_call_rcu(&head->head, ptlab_rcu_trampoline);
}

int ptlab_call_rcu_bounded(struct ptlab_rcu_head *head, void (*func)(struct ptlab_rcu_head *),
                           uint64_t bytes, uint64_t bound)
{
    if (!ptlab_rcu_reserve(bytes, bound))
        return 0;
    ptlab_call_rcu(head, func, bytes);
    return 1;
}

static void prime_noop(struct ptlab_rcu_head *head) { (void)head; }

/*
 * One empty callback, waited for. Per thread, so that two threads priming
 * at once never queue the same head twice; the barrier keeps it alive.
 */
void ptlab_rcu_prime(void)
{
    static _Thread_local struct ptlab_rcu_head head;
    ptlab_call_rcu(&head, prime_noop, 0);
    ptlab_rcu_barrier();
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
    int64_t ev[PTLAB_NR_EVENTS];
    ptlab_pcp_sum_events(ev);
    out->invoked = (uint64_t)ev[PTLAB_EV_RCU_INVOKED];
    out->queued = (uint64_t)ev[PTLAB_EV_RCU_QUEUED];
    out->outstanding_callbacks = ev[PTLAB_EV_RCU_QUEUED] - ev[PTLAB_EV_RCU_INVOKED];
    out->outstanding_bytes = outstanding_of(ev);
    out->in_flight_bytes = ev[PTLAB_EV_RCU_QUEUED_BYTES] - ev[PTLAB_EV_RCU_DONE_BYTES];
    out->inline_fallbacks = atomic_load(&ptlab_rcu_stats.inline_fallbacks);
}

/*
 * Queued first, then done, in two passes: a callback that returns between
 * the two reads can only lower the result. Read the other way round (as one
 * pass of ptlab_pcp_sum_events reads them), a burst of callbacks finishing
 * mid-sum would add bytes that were never in flight together, and a
 * monitor would report an overshoot that did not happen. So a sample is
 * never more than what liburcu held when it began.
 */
int64_t ptlab_rcu_in_flight_bytes(void)
{
    int64_t queued = ptlab_pcp_sum_event(PTLAB_EV_RCU_QUEUED_BYTES);
    return queued - ptlab_pcp_sum_event(PTLAB_EV_RCU_DONE_BYTES);
}
