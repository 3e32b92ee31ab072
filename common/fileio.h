/* File helpers: whole-file reads and crash-safe replacement of files. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Reads path (relative to dirfd, or AT_FDCWD) up to max bytes; more is
 * -EFBIG.  *ret is NUL-terminated and owned by the caller; ret_len may be NULL. */
int qv_read_file_at(int dirfd, const char *path, size_t max, char **ret, size_t *ret_len);
int qv_read_file(const char *path, size_t max, char **ret, size_t *ret_len);

/* Replaces path atomically: temp file in the same directory, write, fsync,
 * rename over path, fsync the directory.  A reader sees the old or the new
 * content, never a mix, also across a crash. */
int qv_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Writes all of buf to fd, retrying on EINTR and short writes. */
int qv_write_all(int fd, const void *buf, size_t len);

/* mkdir -p; existing directories are fine.  Returns 0 or -errno. */
int qv_mkdir_p(const char *path, mode_t mode);

/* rm -rf that never follows symlinks nor leaves the file system of path.
 * A missing path is fine.  Returns 0 or the first -errno. */
int qv_rm_rf(const char *path);
