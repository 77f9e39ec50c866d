/*
 * kconfig.h - reading the running kernel's configuration
 *
 * The kernel publishes its own .config as /proc/config.gz
 * (CONFIG_IKCONFIG_PROC, kernel/configs.c), and distributions ship it as
 * /boot/config-$(uname -r). `ptlab compare` and `ptlab info` read it to
 * learn which page-table options (PT_RECLAIM, MMU_GATHER_RCU_TABLE_FREE,
 * ...) the live kernel was built with. It is read in-process with zlib,
 * not through a zcat child: see kconfig.c.
 */
#ifndef PTLAB_KCONFIG_H
#define PTLAB_KCONFIG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Read the kernel config at @path, gzip-compressed or plain, into @buf (at
 * most @cap bytes). Returns the file's whole decompressed length — more than
 * @cap means call again with that much room — or -1 if it cannot be read. */
long ptlab_kconfig_read(const char *path, void *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif /* PTLAB_KCONFIG_H */
