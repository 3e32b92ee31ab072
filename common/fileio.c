#include "fileio.h"

#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
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

/* Reads fd to its end, at most max bytes (-EFBIG beyond). */
static int read_all(int fd, size_t max, char **ret, size_t *ret_len) {
    size_t cap = max < 4096 ? max : 4096, len = 0;
    _cleanup_free_ char *buf = malloc(cap + 1);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (len == cap) {
            if (cap >= max) {
                /* exactly max bytes, or more? */
                char probe;
                ssize_t n;
                while ((n = read(fd, &probe, 1)) < 0 && errno == EINTR)
                    ;
                if (n < 0)
                    return -errno;
                if (n > 0)
                    return -EFBIG;
                break;
            }
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

int qv_read_file_at(int dirfd, const char *path, size_t max, char **ret, size_t *ret_len) {
    _cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    return read_all(fd, max, ret, ret_len);
}

/* fd was opened O_NONBLOCK so that a FIFO could not hang the open: 0 when
 * it is a regular file (blocking again from now on), -EINVAL for anything
 * else. */
static int regular_blocking(int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int qv_open_regular_file(const char *path) {
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    int r = regular_blocking(fd);
    return r < 0 ? r : TAKE_FD(fd);
}

int qv_read_regular_file(const char *path, size_t max, char **ret, size_t *ret_len) {
    _cleanup_close_ int fd = qv_open_regular_file(path);
    if (fd < 0)
        return fd;
    return read_all(fd, max, ret, ret_len);
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

static int atomic_begin_in(qv_atomic *a);

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
    return atomic_begin_in(a);
}

int qv_atomic_begin_at(int dirfd, const char *name, mode_t mode, qv_atomic *a) {
    *a = (qv_atomic){.fd = -1, .dfd = -1, .mode = mode};
    if (!*name || strchr(name, '/'))
        return -EINVAL;
    if (strlen(name) >= sizeof a->base)
        return -ENAMETOOLONG;
    strcpy(a->base, name);
    a->dfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
    if (a->dfd < 0)
        return -errno;
    return atomic_begin_in(a);
}

/* a->dfd and a->base are set: creates the temp file beside base. */
static int atomic_begin_in(qv_atomic *a) {
    uint64_t rnd;
    if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != sizeof rnd)
        rnd = (uint64_t)getpid() ^ ((uint64_t)(uintptr_t)&rnd << 16);
    snprintf(a->tmp, sizeof a->tmp, ".%.200s.%016llx.tmp", a->base, (unsigned long long)rnd);
    a->fd = openat(a->dfd, a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, a->mode);
    if (a->fd < 0) {
        int r = -errno;
        close(a->dfd);
        a->dfd = -1;
        return r;
    }
    return 0;
}

/* The start of a replacement of `name` through another file of ours
 * beside it, `other` (a spare, a prepared file): both names checked,
 * a->base set, dirfd duplicated into a->dfd. */
static int begin_beside(int dirfd, const char *name, const char *other, mode_t mode, qv_atomic *a) {
    *a = (qv_atomic){.fd = -1, .dfd = -1, .mode = mode};
    if (!*name || strchr(name, '/') || !*other || strchr(other, '/') || strcmp(name, other) == 0)
        return -EINVAL;
    if (strlen(name) >= sizeof a->base || strlen(other) >= sizeof a->tmp)
        return -ENAMETOOLONG;
    strcpy(a->base, name);
    a->dfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
    return a->dfd < 0 ? -errno : 0;
}

int qv_atomic_begin_spare_at(int dirfd, const char *name, const char *spare, mode_t mode, qv_atomic *a) {
    int r = begin_beside(dirfd, name, spare, mode, a);
    if (r < 0)
        return r;
    /* O_NONBLOCK: a FIFO planted under the name must not hang the open */
    int fd = openat(a->dfd, spare, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 && regular_blocking(fd) == 0) {
        strcpy(a->tmp, spare);
        a->fd = fd;
        a->spare = true;
        return 0;
    }
    if (fd >= 0)
        close(fd);
    return atomic_begin_in(a); /* not a spare of ours: a temp file, as ever */
}

/* An empty, regular file with one link under `name` in dfd, opened for
 * writing (blocking); -1 when there is none such. */
static int open_prepared(int dfd, const char *name) {
    int fd = openat(dfd, name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 && st.st_size == 0 &&
        regular_blocking(fd) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

int qv_atomic_prepare_at(int dirfd, const char *prepared, mode_t mode) {
    if (!*prepared || strchr(prepared, '/'))
        return -EINVAL;
    int fd = openat(dirfd, prepared, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return errno == EEXIST ? 0 : -errno; /* there already: its user checks it */
    close(fd);
    return 0;
}

int qv_atomic_begin_prepared_at(int dirfd, const char *name, const char *prepared, mode_t mode, qv_atomic *a) {
    int r = begin_beside(dirfd, name, prepared, mode, a);
    if (r < 0)
        return r;
    int fd = open_prepared(a->dfd, prepared);
    if (fd >= 0) {
        strcpy(a->tmp, prepared);
        a->fd = fd;
        return 0;
    }
    /* none, or not one of ours as it should be (a write cut short left
     * data in it): gone, and a temp file as ever */
    struct stat st;
    if (fstatat(a->dfd, prepared, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode))
        unlinkat(a->dfd, prepared, 0);
    return atomic_begin_in(a);
}

void qv_atomic_abort(qv_atomic *a) {
    if (a->fd >= 0) {
        close(a->fd);
        if (!a->spare) /* a spare keeps whatever it holds: nothing reads it */
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

/* QV_ATOMIC_REGULAR: the new file goes in only where nothing is or a
 * regular file was.  The check is made on the entry swapped out, after the
 * swap, so nothing can be put under the name between check and use; what
 * is not a regular file is swapped back.  Returns 0 or -errno (-EEXIST: the
 * name holds something else, left as it was). */
static int replace_regular(qv_atomic *a) {
    if (renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EEXIST)
        return -errno;
    if (renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_EXCHANGE) < 0)
        return -errno;
    struct stat st;
    if (fstatat(a->dfd, a->tmp, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
        return unlinkat(a->dfd, a->tmp, 0) < 0 && errno != ENOENT ? -errno : 0;
    if (renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_EXCHANGE) < 0)
        return -errno;
    return -EEXIST;
}

int qv_atomic_commit(qv_atomic *a, unsigned flags) {
    return qv_atomic_commit_keep_old(a, flags, NULL);
}

int qv_atomic_commit_keep_old(qv_atomic *a, unsigned flags, int *ret_old) {
    bool durable = flags & QV_ATOMIC_DURABLE;
    int r = 0;
    if (ret_old) /* O_PATH: a FIFO or device under the name is not opened, only held */
        *ret_old = openat(a->dfd, a->base, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fchmod(a->fd, a->mode) < 0 || (durable && fsync(a->fd) < 0))
        r = -errno;
    if (r == 0 && (flags & QV_ATOMIC_REGULAR))
        r = replace_regular(a);
    else if (r == 0)
        r = durable || (flags & QV_ATOMIC_ORDERED) ? 1 : exchange_in(a); /* 1: rename over the old file */
    if (r == 1)
        r = renameat(a->dfd, a->tmp, a->dfd, a->base) < 0 ? -errno : 0;
    if (r < 0) {
        qv_atomic_abort(a);
        if (ret_old && *ret_old >= 0) {
            close(*ret_old); /* still in place: nothing to free */
            *ret_old = -1;
        }
        return r;
    }
    if (durable && fsync(a->dfd) < 0)
        r = -errno;
    close(a->fd);
    close(a->dfd);
    a->fd = a->dfd = -1;
    return r;
}

/* The spare's new length is where the writes stopped. */
static int spare_trim(const qv_atomic *a) {
    off_t end = lseek(a->fd, 0, SEEK_CUR);
    return end < 0 || ftruncate(a->fd, end) < 0 ? -errno : 0;
}

/* Swaps the spare in; a spare with nothing to swap with is renamed. */
static int spare_swap(const qv_atomic *a) {
    if (renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_EXCHANGE) == 0)
        return 0;
    if (errno != ENOENT)
        return -errno;
    return renameat2(a->dfd, a->tmp, a->dfd, a->base, RENAME_NOREPLACE) < 0 ? -errno : 0;
}

void qv_atomic_commit_group(qv_atomic *a, size_t n, int *ret) {
    for (size_t i = 0; i < n; i++) {
        ret[i] = a[i].spare ? spare_trim(&a[i]) : 0;
        if (ret[i] == 0 && fchmod(a[i].fd, a[i].mode) < 0)
            ret[i] = -errno;
        /* a hint: the data of all of them goes out before anyone waits */
        if (ret[i] == 0)
            (void)sync_file_range(a[i].fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    }
    for (size_t i = 0; i < n; i++)
        if (ret[i] == 0 && fsync(a[i].fd) < 0)
            ret[i] = -errno;
    for (size_t i = 0; i < n; i++) {
        if (ret[i] == 0 && a[i].spare)
            ret[i] = spare_swap(&a[i]);
        else if (ret[i] == 0 && renameat(a[i].dfd, a[i].tmp, a[i].dfd, a[i].base) < 0)
            ret[i] = -errno;
        if (ret[i] < 0)
            qv_atomic_abort(&a[i]);
    }
    for (size_t i = 0; i < n; i++) {
        if (ret[i] < 0)
            continue;
        if (fsync(a[i].dfd) < 0) {
            ret[i] = -errno;
            /* the swap may not be durable: the spare could still be what
             * the name holds after a crash, so it is never written again */
            if (a[i].spare)
                unlinkat(a[i].dfd, a[i].tmp, 0);
        }
        close(a[i].fd);
        close(a[i].dfd);
        a[i].fd = a[i].dfd = -1;
    }
}

static int write_atomic(qv_atomic *a, const void *data, size_t len);

int qv_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode) {
    qv_atomic a;
    int r = qv_atomic_begin(path, mode, &a);
    return r < 0 ? r : write_atomic(&a, data, len);
}

int qv_write_file_atomic_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode) {
    return qv_write_file_atomic_flags_at(dirfd, name, data, len, mode, QV_ATOMIC_DURABLE);
}

int qv_write_file_atomic_flags_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode,
                                  unsigned flags) {
    return qv_write_file_atomic_keep_old_at(dirfd, name, data, len, mode, flags, NULL, NULL);
}

int qv_write_file_atomic_keep_old_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode,
                                     unsigned flags, const char *prepared, int *ret_old) {
    if (ret_old)
        *ret_old = -1;
    qv_atomic a;
    int r = prepared ? qv_atomic_begin_prepared_at(dirfd, name, prepared, mode, &a)
                     : qv_atomic_begin_at(dirfd, name, mode, &a);
    if (r < 0)
        return r;
    r = qv_write_all(a.fd, data, len);
    if (r < 0) {
        qv_atomic_abort(&a);
        return r;
    }
    return qv_atomic_commit_keep_old(&a, flags, ret_old);
}

static int write_atomic(qv_atomic *a, const void *data, size_t len) {
    int r = qv_write_all(a->fd, data, len);
    if (r < 0) {
        qv_atomic_abort(a);
        return r;
    }
    return qv_atomic_commit(a, QV_ATOMIC_DURABLE);
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

enum { RM_RF_MAX_DEPTH = 64 };

static int rm_rf_at(int dirfd, const char *name, dev_t dev, unsigned depth) {
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode))
        return unlinkat(dirfd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
    if (st.st_dev != dev)
        return -EXDEV; /* a mount point: not ours to empty */
    if (depth >= RM_RF_MAX_DEPTH)
        return -ELOOP;
    int fd = qv_open_dir_at(dirfd, name);
    if (fd < 0)
        return fd == -ENOENT ? 0 : fd;
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        close(fd);
        return r;
    }
    int first = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int r = rm_rf_at(fd, e->d_name, dev, depth + 1);
        if (r < 0 && !first)
            first = r;
    }
    closedir(d);
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && !first)
        first = -errno;
    return first;
}

int qv_rm_rf_at(int dirfd, const char *name) {
    struct stat st;
    if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return -EINVAL;
    if (fstat(dirfd, &st) < 0)
        return -errno;
    return rm_rf_at(dirfd, name, st.st_dev, 0);
}

int qv_rm_rf(const char *path) {
    char dir_buf[PATH_MAX], base_buf[PATH_MAX];
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    if (len == 0 || len >= sizeof dir_buf)
        return len ? -ENAMETOOLONG : -EINVAL;
    memcpy(dir_buf, path, len);
    dir_buf[len] = '\0';
    strcpy(base_buf, dir_buf);
    const char *base = basename(base_buf);
    _cleanup_close_ int dfd = open(dirname(dir_buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return errno == ENOENT ? 0 : -errno;
    return qv_rm_rf_at(dfd, base);
}

int qv_open_dir_at(int dirfd, const char *name) {
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int qv_open_dir_nofollow(const char *path) {
    char dir_buf[PATH_MAX], base_buf[PATH_MAX];
    if (!*path || strlen(path) >= sizeof dir_buf)
        return *path ? -ENAMETOOLONG : -EINVAL;
    strcpy(dir_buf, path);
    strcpy(base_buf, path);
    _cleanup_close_ int pfd = open(dirname(dir_buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pfd < 0)
        return -errno;
    return qv_open_dir_at(pfd, basename(base_buf));
}

int qv_read_regular_file_at(int dirfd, const char *name, size_t max, char **ret, size_t *ret_len) {
    _cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    int r = regular_blocking(fd);
    return r < 0 ? r : read_all(fd, max, ret, ret_len);
}

int qv_create_at(int dirfd, const char *name, int flags, mode_t mode) {
    int fd = openat(dirfd, name, flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, mode);
    if (fd < 0)
        return -errno;
    if (fchmod(fd, mode) < 0) {
        int r = -errno;
        close(fd);
        unlinkat(dirfd, name, 0);
        return r;
    }
    return fd;
}

int qv_open_regular_at(int dirfd, const char *name, int flags, mode_t mode) {
    /* O_NONBLOCK: a FIFO planted under the name must not hang the open */
    _cleanup_close_ int fd =
        openat(dirfd, name, flags | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode);
    if (fd < 0)
        return errno == ENXIO ? -EINVAL : -errno; /* ENXIO: a FIFO without a reader */
    int r = regular_blocking(fd);
    if (r < 0)
        return r;
    if (fchmod(fd, mode) < 0)
        return -errno;
    return TAKE_FD(fd);
}

int qv_open_existing_at(int dirfd, const char *name, int flags) {
    _cleanup_close_ int fd = openat(dirfd, name, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return errno == ENXIO ? -EINVAL : -errno;
    int r = regular_blocking(fd);
    return r < 0 ? r : TAKE_FD(fd);
}

int qv_fd_path(int fd, char *buf, size_t len) {
    int n = snprintf(buf, len, "/proc/%d/fd/%d", (int)getpid(), fd);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int qv_unlink_own_file_at(int dirfd, const char *name, const struct stat *want) {
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid())
        return -EPERM;
    if (want && (st.st_dev != want->st_dev || st.st_ino != want->st_ino))
        return -EPERM;
    return unlinkat(dirfd, name, 0) < 0 ? -errno : 0;
}
