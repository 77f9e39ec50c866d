/*
 * poison.h - filling freed pages, so that a late reader sees garbage
 *
 * With page_poison=1 the kernel fills each page it frees, so that a
 * use-after-free reads a known pattern instead of plausible old contents.
 * The lab's page_poison=y does the same, with 0x6b (POISON_FREE in
 * include/linux/poison.h; page poisoning itself uses 0xaa), and the
 * walkers recognise it: an entry of all 0x6b bytes means a freed table.
 *
 * Poisoning is most of an order-0 alloc+free when it is on, so the fill
 * is C with vector stores rather than memset (poison.c says why). The
 * ASan side of poisoning (making a free page a use-after-poison report)
 * is in sanitizer.h.
 *
 *  - PTLAB_POISON_FREE: the byte;
 *  - ptlab_poison_pages(): fill whole, page-aligned pages with it.
 */
#ifndef PTLAB_POISON_H
#define PTLAB_POISON_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PTLAB_POISON_FREE 0x6b

/* Fill freed pages with PTLAB_POISON_FREE (page-aligned, whole pages). */
void ptlab_poison_pages(void *addr, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_POISON_H */
