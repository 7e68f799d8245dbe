/*
 * faultinject.so -- an LD_PRELOAD seam for tests: makes the Nth fdatasync or
 * fsync of the process fail with EIO, as a dying disk would, so that the
 * tests can check what relayd does with an I/O error in a commit.
 *
 *   RELAY_FAULT_SYNC_EIO_AT=N   the Nth sync call (1-based) and every later one fail
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_long calls;

static int should_fail(void)
{
    const char *at = getenv("RELAY_FAULT_SYNC_EIO_AT");
    long n = atomic_fetch_add(&calls, 1) + 1;
    return at && n >= atol(at);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (should_fail()) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (should_fail()) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
