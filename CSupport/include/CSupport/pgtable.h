/*
 * pgtable.h - entries read by walkers that take no lock
 *
 * In the kernel a page-table entry is read with ptep_get() / READ_ONCE()
 * and written with set_pte() / WRITE_ONCE(), because GUP-fast, the
 * hardware walker and the IOMMU read entries while mm code changes them,
 * holding none of its locks. The lab's walkers do the same to its tables,
 * and Swift has no atomic view of a word inside a raw page, so the loads
 * and stores are here, with their orders: acquire on the read, so a walker
 * that sees an entry also sees the table it points to as it was filled in;
 * release on the write, so a new table is published only after its
 * contents.
 *
 * The emulated IOMMU's invalidation-queue status words are the same kind of
 * memory: written by the "hardware" thread when a wait descriptor
 * completes, polled by the driver without a lock (qi_submit_sync()).
 *
 *  - ptlab_pte_read(), ptlab_pte_write(), ptlab_pte_xchg(),
 *    ptlab_pte_or(): ptep_get(), set_pte(), ptep_get_and_clear(), and
 *    the accessed/dirty bits a hardware walker sets;
 *  - ptlab_u32_load_acquire(), ptlab_u32_store_release(): the status
 *    words.
 */
#ifndef PTLAB_PGTABLE_H
#define PTLAB_PGTABLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Page-table entries are read and written by walkers without locks. */
static inline uint64_t ptlab_pte_read(const uint64_t *entry)
{
    return __atomic_load_n(entry, __ATOMIC_ACQUIRE);
}
static inline void ptlab_pte_write(uint64_t *entry, uint64_t value)
{
    __atomic_store_n(entry, value, __ATOMIC_RELEASE);
}
static inline uint64_t ptlab_pte_xchg(uint64_t *entry, uint64_t value)
{
    return __atomic_exchange_n(entry, value, __ATOMIC_ACQ_REL);
}
static inline uint64_t ptlab_pte_or(uint64_t *entry, uint64_t bits)
{
    return __atomic_fetch_or(entry, bits, __ATOMIC_ACQ_REL);
}

/*
 * 32-bit words shared with a device: the invalidation queue's status words,
 * written by the emulated IOMMU (the wait descriptor's status write) and
 * polled by the driver. Release/acquire, so the status write publishes the
 * invalidations the hardware completed before it.
 */
static inline uint32_t ptlab_u32_load_acquire(const uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}
static inline void ptlab_u32_store_release(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_PGTABLE_H */
