#include "fileio.h"

#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
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

int qv_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode) {
    char dir_buf[PATH_MAX], base_buf[PATH_MAX];
    if (strlen(path) >= sizeof dir_buf)
        return -ENAMETOOLONG;
    strcpy(dir_buf, path);
    strcpy(base_buf, path);
    const char *dir = dirname(dir_buf);
    const char *base = basename(base_buf);

    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;

    char tmp[NAME_MAX + 1];
    uint64_t rnd;
    if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&rnd;
    if (snprintf(tmp, sizeof tmp, ".%.200s.%016llx.tmp", base, (unsigned long long)rnd) >= (int)sizeof tmp)
        return -ENAMETOOLONG;

    _cleanup_close_ int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int r = qv_write_all(fd, data, len);
    if (r == 0 && fchmod(fd, mode) < 0)
        r = -errno;
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (r == 0 && renameat(dfd, tmp, dfd, base) < 0)
        r = -errno;
    if (r < 0) {
        unlinkat(dfd, tmp, 0);
        return r;
    }
    if (fsync(dfd) < 0)
        return -errno;
    return 0;
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

#include <ftw.h>

static int rm_rf_errno;

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
