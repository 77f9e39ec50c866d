/*
 * sanitizer.h - telling ThreadSanitizer and AddressSanitizer what they
 * cannot see
 *
 * The kernel annotates the places where its own primitives hide ordering or
 * liveness from KCSAN and KASAN; these are the lab's equivalents. Two
 * things escape the sanitizers here:
 *
 *  - Ordering made in uninstrumented code. liburcu is not built with TSan,
 *    so a grace period, a barrier, or call_rcu's hand-off to its worker
 *    thread orders nothing as far as TSan knows, and every RCU free would
 *    be reported as a race with the reader or the caller it waited for.
 *    The RCU code (rcu.h, rcu.c) draws those edges with a release on one
 *    side and an acquire on the other; the zone lock (pcp.h) marks its
 *    critical sections the same way.
 *
 *  - The liveness of the lab's pages. They are carved from large mmap'd
 *    chunks, so to ASan a free page is as valid as an allocated one, and a
 *    walker's stale read of a freed table would be caught only by the
 *    lab's own generation checks. The allocator poisons free pages for
 *    ASan too, so the same read is also a use-after-poison report
 *    (scripts/sanitize address).
 *
 * Every hook is a static inline that compiles to nothing unless this
 * translation unit is built with the sanitizer (the Swift importer sees the
 * same flags through -Xcc), so the fast paths call them unconditionally and
 * pay nothing for them in an ordinary build:
 *
 *  - ptlab_tsan_release() / ptlab_tsan_acquire(): a happens-before edge
 *    through an address TSan treats as a synchronisation object;
 *  - ptlab_asan_poison_pages() / ptlab_asan_unpoison_pages(): a page
 *    leaves or re-enters the allocated state;
 *  - ptlab_asan_enabled(): a constant, for callers that would otherwise
 *    work out an address for nothing.
 */
#ifndef PTLAB_SANITIZER_H
#define PTLAB_SANITIZER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which sanitizer, if any, this translation unit is built for. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PTLAB_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define PTLAB_ASAN 1
#endif
#endif

#ifdef PTLAB_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#endif
#ifdef PTLAB_ASAN
void __asan_poison_memory_region(void const volatile *addr, size_t size);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#endif

/* Inline, so that outside TSan they cost nothing: as calls they were three
 * of every RCU callback's instructions-worth of overhead. */
static inline void ptlab_tsan_release(void *addr)
{
#ifdef PTLAB_TSAN
    __tsan_release(addr);
#else
    (void)addr;
#endif
}
static inline void ptlab_tsan_acquire(void *addr)
{
#ifdef PTLAB_TSAN
    __tsan_acquire(addr);
#else
    (void)addr;
#endif
}

/* Constant, so that a caller can skip working out an address for nothing. */
static inline int ptlab_asan_enabled(void)
{
#ifdef PTLAB_ASAN
    return 1;
#else
    return 0;
#endif
}
static inline void ptlab_asan_poison_pages(void *addr, size_t bytes)
{
#ifdef PTLAB_ASAN
    __asan_poison_memory_region(addr, bytes);
#else
    (void)addr; (void)bytes;
#endif
}
static inline void ptlab_asan_unpoison_pages(void *addr, size_t bytes)
{
#ifdef PTLAB_ASAN
    __asan_unpoison_memory_region(addr, bytes);
#else
    (void)addr; (void)bytes;
#endif
}

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_SANITIZER_H */
