/* File helpers: whole-file reads and crash-safe replacement of files. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Reads path (relative to dirfd, or AT_FDCWD) up to max bytes; more is
 * -EFBIG.  *ret is NUL-terminated and owned by the caller; ret_len may be NULL. */
int qv_read_file_at(int dirfd, const char *path, size_t max, char **ret, size_t *ret_len);
int qv_read_file(const char *path, size_t max, char **ret, size_t *ret_len);

/* Streaming atomic replacement: qv_atomic_begin() opens a temp file next to
 * path (a->fd, O_CLOEXEC), the caller writes it, qv_atomic_commit() renames
 * it over path (or qv_atomic_abort() removes it).  A reader sees the old or
 * the new content, never a mix.  QV_ATOMIC_DURABLE adds the fsyncs (file,
 * then directory) that make the replacement survive a crash; without it the
 * new file is swapped in with RENAME_EXCHANGE and the old one unlinked,
 * which on ext4 avoids the writeback a rename over a file forces. */
typedef struct qv_atomic {
    int fd;
    int dfd;
    mode_t mode;
    char tmp[256];
    char base[256];
} qv_atomic;

enum { QV_ATOMIC_DURABLE = 1 };

int qv_atomic_begin(const char *path, mode_t mode, qv_atomic *a);
/* Consumes a (fds closed) in every case.  On failure the temp file is gone
 * and path is unchanged. */
int qv_atomic_commit(qv_atomic *a, unsigned flags);
void qv_atomic_abort(qv_atomic *a);

/* Replaces path with data, durably (qv_atomic with QV_ATOMIC_DURABLE). */
int qv_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Writes all of buf to fd, retrying on EINTR and short writes. */
int qv_write_all(int fd, const void *buf, size_t len);

/* mkdir -p; existing directories are fine.  Returns 0 or -errno. */
int qv_mkdir_p(const char *path, mode_t mode);

/* rm -rf that never follows symlinks nor leaves the file system of path.
 * A missing path is fine.  Returns 0 or the first -errno. */
int qv_rm_rf(const char *path);
