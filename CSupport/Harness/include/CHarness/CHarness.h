/*
 * CHarness - the harness's own C: raw liburcu baselines for `ptlab bench`,
 * the live kernel's config for `ptlab sysinfo`, and the system calls
 * `ptlab compare` replays. Nothing here is part of the model; the model's
 * C is CSupport.
 */
#ifndef PTLAB_CHARNESS_H
#define PTLAB_CHARNESS_H

#include "baseline.h"
#include "kconfig.h"
#include "syscalls.h"

#endif /* PTLAB_CHARNESS_H */
