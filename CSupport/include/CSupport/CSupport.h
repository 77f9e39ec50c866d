/*
 * CSupport: the kernel-shaped structures PageTableLab's freeing paths need,
 * and the few lines of C that must stay C. It is internal to the package
 * (no product names it): the PageTableLab module wraps all of it in Swift
 * types, and the harness's own C (baselines, kconfig, compare's system
 * calls) is the CHarness target in Harness/.
 *
 * Why C at all: the freeing paths (call_rcu callbacks, gather flushes, the
 * deferred kernel-table work) must not allocate, so the rcu_head and the list
 * node live inside the page descriptor, as in struct ptdesc; turning an
 * rcu_head back into its descriptor is container_of, which is C. liburcu's
 * read-side fast path is a set of _LGPL_SOURCE static inlines that Swift can
 * only inline through a C header.
 *
 * This is the module's umbrella header (`import CSupport` sees what it
 * includes): one header per mechanism, each opening with why it exists.
 * They sit beside it in include/CSupport/, so that C includes them as
 * "CSupport/rcu.h" and a generic name such as rcu.h or system.h never
 * lands on the include path of a package that depends on this one.
 *
 *   sanitizer.h  TSan/ASan hooks for what the sanitizers cannot see
 *   rcu.h        liburcu's read side inlined; call_rcu on an embedded
 *                head; deferred-byte accounting
 *   spinlock.h   spinlock_t: the split ptlock and zone->lock
 *   ptdesc.h     struct ptdesc, page state, the split ptlock
 *   pgtable.h    lockless entry access (ptep_get/set_pte) and the
 *                IOMMU's status words
 *   pcp.h        struct zone, per-thread page lists, per-thread counters
 *   poison.h     page_poison's fill
 *   system.h     CPU affinity and libnuma's node mask
 */
#ifndef PTLAB_CSUPPORT_H
#define PTLAB_CSUPPORT_H

#include "sanitizer.h"
#include "rcu.h"
#include "spinlock.h"
#include "ptdesc.h"
#include "pgtable.h"
#include "pcp.h"
#include "poison.h"
#include "system.h"

#endif /* PTLAB_CSUPPORT_H */
