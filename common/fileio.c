#include "fileio.h"

#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

int qv_read_file_at(int dirfd, const char *path, size_t max, char **ret, size_t *ret_len) {
    _cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    size_t cap = 4096, len = 0;
    _cleanup_free_ char *buf = malloc(cap + 1);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (len == cap) {
            if (cap >= max)
                return -EFBIG;
            cap = cap * 2 > max ? max : cap * 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                return -ENOMEM;
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    if (ret_len)
        *ret_len = len;
    *ret = TAKE_PTR(buf);
    return 0;
}

int qv_read_file(const char *path, size_t max, char **ret, size_t *ret_len) {
    return qv_read_file_at(AT_FDCWD, path, max, ret, ret_len);
}

int qv_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int qv_atomic_begin(const char *path, mode_t mode, qv_atomic *a) {
    *a = (qv_atomic){.fd = -1, .dfd = -1, .mode = mode};
    char dir_buf[PATH_MAX], base_buf[PATH_MAX];
    if (!*path || strlen(path) >= sizeof dir_buf)
        return *path ? -ENAMETOOLONG : -EINVAL;
    strcpy(dir_buf, path);
    strcpy(base_buf, path);
    const char *base = basename(base_buf);
    if (strlen(base) >= sizeof a->base)
        return -ENAMETOOLONG;
    strcpy(a->base, base);
    a->dfd = open(dirname(dir_buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (a->dfd < 0)
        return -errno;
    uint64_t rnd;
    if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != sizeof rnd)
        rnd = (uint64_t)getpid() ^ ((uint64_t)(uintptr_t)&rnd << 16);
    snprintf(a->tmp, sizeof a->tmp, ".%.200s.%016llx.tmp", a->base, (unsigned long long)rnd);
    a->fd = openat(a->dfd, a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (a->fd < 0) {
        int r = -errno;
        close(a->dfd);
        a->dfd = -1;
        return r;
    }
    return 0;
}

void qv_atomic_abort(qv_atomic *a) {
    if (a->fd >= 0) {
        close(a->fd);
        unlinkat(a->dfd, a->tmp, 0);
    }
    if (a->dfd >= 0)
        close(a->dfd);
    a->fd = a->dfd = -1;
}

/* Non-durable replacement: swap the new file in, then drop the old one.
 * Returns 0 when done, 1 when there is nothing to exchange with (the caller
 * renames), or -errno with the old file back in place. */
static int exchange_in(qv_atomic *a) {
    struct stat st;
    if (fstatat(a->dfd, a->base, &st, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(st.st_mode))
        return 1;
    if (renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_EXCHANGE) < 0)
        return 1;
    if (unlinkat(a->dfd, a->tmp, 0) == 0)
        return 0;
    int r = -errno;
    if (renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_EXCHANGE) < 0)
        return 0; /* cannot undo: the new content is in place, the old one stays hidden at tmp */
    return r;
}

int qv_atomic_commit(qv_atomic *a, unsigned flags) {
    bool durable = flags & QV_ATOMIC_DURABLE;
    int r = 0;
    if (fchmod(a->fd, a->mode) < 0 || (durable && fsync(a->fd) < 0))
        r = -errno;
    if (r == 0)
        r = durable ? 1 : exchange_in(a); /* 1: rename over the old file */
    if (r == 1)
        r = renameat(a->dfd, a->tmp, a->dfd, a->base) < 0 ? -errno : 0;
    if (r < 0) {
        qv_atomic_abort(a);
        return r;
    }
    if (durable && fsync(a->dfd) < 0)
        r = -errno;
    close(a->fd);
    close(a->dfd);
    a->fd = a->dfd = -1;
    return r;
}

int qv_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode) {
    qv_atomic a;
    int r = qv_atomic_begin(path, mode, &a);
    if (r < 0)
        return r;
    r = qv_write_all(a.fd, data, len);
    if (r < 0) {
        qv_atomic_abort(&a);
        return r;
    }
    return qv_atomic_commit(&a, QV_ATOMIC_DURABLE);
}

int qv_mkdir_p(const char *path, mode_t mode) {
    char buf[PATH_MAX];
    if (strlen(path) >= sizeof buf)
        return -ENAMETOOLONG;
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0) {
        if (errno != EEXIST)
            return -errno;
        struct stat st;
        if (stat(buf, &st) < 0)
            return -errno;
        if (!S_ISDIR(st.st_mode))
            return -ENOTDIR;
    }
    return 0;
}

/* per thread: creates and removes run on libuv worker threads */
static _Thread_local int rm_rf_errno;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    int r = flag == FTW_DP ? rmdir(p) : unlink(p);
    if (r < 0 && errno != ENOENT && !rm_rf_errno)
        rm_rf_errno = errno;
    return 0;
}

int qv_rm_rf(const char *path) {
    rm_rf_errno = 0;
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
        return -errno;
    return -rm_rf_errno;
}
