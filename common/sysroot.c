#include "sysroot.h"

#include "cleanup.h"
#include "fileio.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int root_fd = -1;
static char root_path[PATH_MAX] = "/";

int qv_sysroot_set(const char *path) {
    const char *env = getenv("QVISOR_SYSROOT");
    if (env && *env)
        path = env;
    if (!path || !*path)
        path = "/";
    if (strlen(path) >= sizeof root_path)
        return -ENAMETOOLONG;
    int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    qv_sysroot_close();
    root_fd = fd;
    strcpy(root_path, path);
    return 0;
}

const char *qv_sysroot_path(void) {
    return root_path;
}

int qv_sysroot_fd(void) {
    if (root_fd < 0) {
        int r = qv_sysroot_set(NULL);
        if (r < 0)
            return r;
    }
    return root_fd;
}

void qv_sysroot_close(void) {
    if (root_fd >= 0)
        close(root_fd);
    root_fd = -1;
}

static const char *strip_slash(const char *rel) {
    while (*rel == '/')
        rel++;
    return *rel ? rel : ".";
}

int qv_sysroot_open(const char *rel, int flags) {
    int dfd = qv_sysroot_fd();
    if (dfd < 0)
        return dfd;
    int fd = openat(dfd, strip_slash(rel), flags | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int qv_sysroot_read(const char *rel, char **ret, size_t *ret_len) {
    int dfd = qv_sysroot_fd();
    if (dfd < 0)
        return dfd;
    return qv_read_file_at(dfd, strip_slash(rel), 1 << 20, ret, ret_len);
}

int qv_sysroot_read_line(const char *rel, char *buf, size_t size) {
    _cleanup_free_ char *s = NULL;
    int r = qv_sysroot_read(rel, &s, NULL);
    if (r < 0)
        return r;
    size_t n = strcspn(s, "\n");
    if (n >= size)
        return -ENAMETOOLONG;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

int qv_sysroot_write(const char *rel, const char *s) {
    _cleanup_close_ int fd = qv_sysroot_open(rel, O_WRONLY);
    if (fd < 0)
        return fd;
    size_t n = strlen(s);
    ssize_t w = write(fd, s, n);
    if (w < 0)
        return -errno;
    if ((size_t)w != n)
        return -EIO;
    return 0;
}

int qv_sysroot_readlink(const char *rel, char *buf, size_t size) {
    int dfd = qv_sysroot_fd();
    if (dfd < 0)
        return dfd;
    ssize_t n = readlinkat(dfd, strip_slash(rel), buf, size);
    if (n < 0)
        return -errno;
    if ((size_t)n >= size)
        return -ENAMETOOLONG;
    buf[n] = '\0';
    return 0;
}

int qv_sysroot_exists(const char *rel) {
    int dfd = qv_sysroot_fd();
    if (dfd < 0)
        return dfd;
    struct stat st;
    if (fstatat(dfd, strip_slash(rel), &st, 0) == 0)
        return 1;
    return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int qv_sysroot_list(const char *rel, char ***ret) {
    int fd = qv_sysroot_open(rel, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return fd;
    _cleanup_closedir_ DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return -e;
    }
    _cleanup_(qv_strv_freep) char **names = calloc(1, sizeof *names);
    if (!names)
        return -ENOMEM;
    size_t n = 0;
    struct dirent *de;
    while ((errno = 0, de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n >= INT_MAX - 1)
            return -E2BIG;
        char **grown = realloc(names, (n + 2) * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        names = grown;
        if (!(names[n] = strdup(de->d_name)))
            return -ENOMEM;
        names[++n] = NULL;
    }
    if (errno)
        return -errno;
    qv_qsort(names, n, sizeof *names, cmp_names);
    *ret = TAKE_PTR(names);
    return (int)n;
}
