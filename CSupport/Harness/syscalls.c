/* The system calls `ptlab compare` makes on the live kernel that Swift 6
 * cannot make cleanly. */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <errno.h>
#include <unistd.h>
#include "CHarness/syscalls.h"
/* mremap is variadic (the new address is the fifth argument), which Swift
 * cannot call. */
void *ptlab_mremap_fixed(void *old_address, size_t length, void *new_address)
{
    return mremap(old_address, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_address);
}

/* memfd_create + ftruncate: a shmem file of @size bytes, or -1 with errno. */
int ptlab_memfd(size_t size)
{
    int fd = memfd_create("ptlab-trace", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}
