/* liburcu, memb flavour only: one flavour per module, so that no symbol is
 * ambiguous between flavours. The read-side inlines live in CSupport. */
#include <urcu/urcu-memb.h>
#include <urcu/call-rcu.h>
