/* File helpers: whole-file reads and crash-safe replacement of files. */
#pragma once

#include <stdbool.h>

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Reads path (relative to dirfd, or AT_FDCWD) up to max bytes; more is
 * -EFBIG.  *ret is NUL-terminated and owned by the caller; ret_len may be NULL. */
int qv_read_file_at(int dirfd, const char *path, size_t max, char **ret, size_t *ret_len);
int qv_read_file(const char *path, size_t max, char **ret, size_t *ret_len);
/* The same for a file that must be a regular one (symlinks followed): a
 * FIFO, device or directory is -EINVAL at once, never blocks. */
int qv_read_regular_file(const char *path, size_t max, char **ret, size_t *ret_len);
/* Opens path for reading (O_RDONLY|O_CLOEXEC|O_NOCTTY, symlinks followed)
 * when it is a regular file: a FIFO, device or directory is -EINVAL at once,
 * never blocks.  Returns the fd (blocking; caller owns it) or -errno. */
int qv_open_regular_file(const char *path);

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
    bool spare; /* tmp is a spare kept from one replacement to the next (qv_atomic_begin_spare_at) */
    char tmp[256];
    char base[256];
} qv_atomic;

enum {
    QV_ATOMIC_DURABLE = 1,
    /* replace path only when it is absent or a regular file: a symlink (never
     * followed), a device node, a FIFO, a directory stay as they are and the
     * commit fails with -EEXIST.  Checked on the swapped-out entry, so race
     * free (RENAME_NOREPLACE, else RENAME_EXCHANGE and swap back). */
    QV_ATOMIC_REGULAR = 2,
    /* no fsync, but a plain rename over the old file: visible at once to
     * any process (a killed writer loses nothing), and on ext4 (auto_da_alloc)
     * the new data reaches the disk before the rename does, so a power loss
     * leaves the old or the new file, never an empty one; which of the two
     * is up to the file system's next commit (5 s by default on ext4) */
    QV_ATOMIC_ORDERED = 4,
};

int qv_atomic_begin(const char *path, mode_t mode, qv_atomic *a);
/* The same for `name` (no '/') in the directory dirfd, which is duplicated
 * (the caller keeps its fd): nothing on the way is resolved again. */
int qv_atomic_begin_at(int dirfd, const char *name, mode_t mode, qv_atomic *a);
/* The same, but for qv_atomic_commit_group() only: the new content is
 * written over the file `spare` (no '/'; created when absent) and swapped
 * with name by RENAME_EXCHANGE, so the old content becomes the next spare.
 * No inode is created or freed per replacement, and the data of a small
 * file is rewritten in place: on ext4 that spares the inode allocator's
 * scan (long on a file system without a journal, after many deletions) and
 * the discard of freed blocks.  Safe because the group makes every swap
 * durable before the spare is written again; a spare whose swap may not be
 * durable (the directory's fsync failed) is unlinked.  Falls back to a temp
 * file (as qv_atomic_begin_at) when spare is something else than a regular
 * file with one link. */
int qv_atomic_begin_spare_at(int dirfd, const char *name, const char *spare, mode_t mode, qv_atomic *a);
/* The same as qv_atomic_begin_at, but the temp file is `prepared` (no
 * '/'), made ahead by qv_atomic_prepare_at(), when it is there as that
 * made it: empty, regular, one link.  A rename moves it over name, so it
 * is made again before the next replacement, off the critical path:
 * creating a file is most of a visible replacement's cost on ext4 without
 * a journal (the inode allocator checks every recently freed inode of the
 * group).  Anything else under that name is removed and a temp file is
 * made as qv_atomic_begin_at does.  Only one replacement at a time may use
 * a given prepared file; qv_atomic_prepare_at may run beside it. */
int qv_atomic_begin_prepared_at(int dirfd, const char *name, const char *prepared, mode_t mode, qv_atomic *a);
/* Makes `prepared` in dirfd, empty, unless something is there already
 * (0 then too: qv_atomic_begin_prepared_at checks it); never removes or
 * opens an existing file.  0 or -errno. */
int qv_atomic_prepare_at(int dirfd, const char *prepared, mode_t mode);
/* Consumes a (fds closed) in every case.  On failure the temp file is gone
 * and path is unchanged. */
int qv_atomic_commit(qv_atomic *a, unsigned flags);
/* The same, but the file replaced is not freed here: *ret_old is an O_PATH
 * fd that holds it (-1 when there was none, or on failure), and it is
 * freed when the caller closes that.  Freeing a file can be the slowest
 * part of a replacement: ext4 without a journal, mounted with discard,
 * discards the blocks before the call returns (0.25 ms of a 0.3 ms rename
 * on a test machine).  A caller that answers someone once the new file is
 * in place closes it after answering, on another thread. */
int qv_atomic_commit_keep_old(qv_atomic *a, unsigned flags, int *ret_old);
/* Durable commits of n replacements as one group (QV_ATOMIC_DURABLE each,
 * plain renames): the writeback of every temp file is started before the
 * first is waited for, and the renames are done together, so a journaling
 * file system commits the group in about two transactions instead of two
 * per file.  ret[i] is what qv_atomic_commit would have returned for a[i];
 * every a[i] is consumed.  A file is renamed in only once its data is
 * durable, and a failure of one leaves the others unaffected. */
void qv_atomic_commit_group(qv_atomic *a, size_t n, int *ret);
void qv_atomic_abort(qv_atomic *a);

/* Replaces path with data, durably (qv_atomic with QV_ATOMIC_DURABLE). */
int qv_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);
int qv_write_file_atomic_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode);
/* The same with qv_atomic_commit()'s flags. */
int qv_write_file_atomic_flags_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode,
                                  unsigned flags);
/* The same, holding the file replaced (qv_atomic_commit_keep_old()), and
 * writing into `prepared` (qv_atomic_begin_prepared_at) unless it is NULL. */
int qv_write_file_atomic_keep_old_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode,
                                     unsigned flags, const char *prepared, int *ret_old);

/* Writes all of buf to fd, retrying on EINTR and short writes. */
int qv_write_all(int fd, const void *buf, size_t len);

/* mkdir -p; existing directories are fine.  Returns 0 or -errno. */
int qv_mkdir_p(const char *path, mode_t mode);

/* rm -rf that never follows symlinks nor leaves the file system of path.
 * A missing path is fine.  Returns 0 or the first -errno.  Only the
 * directories above path are resolved by name (they are the caller's own);
 * everything from path down goes through qv_rm_rf_at(). */
int qv_rm_rf(const char *path);

/* ---- names relative to a directory fd ---------------------------------------
 * Every file qvisor creates or removes inside a directory that somebody else
 * may write (a storage pool, the instances directory) is reached by one name
 * relative to an open directory, never by a path checked first and used
 * later: a symlink or a directory swapped in between cannot redirect it. */

/* Removes `name` in dirfd, recursively when it is a directory: each directory
 * is opened with openat(O_DIRECTORY|O_NOFOLLOW), entries go with unlinkat()
 * relative to it, a symlink is removed itself and never followed, and a
 * directory on another file system (a mount point) is left alone (-EXDEV).
 * A missing name is fine.  Returns 0 or the first -errno. */
int qv_rm_rf_at(int dirfd, const char *name);

/* openat(dirfd, name, O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC): a real directory,
 * not a symlink to one.  Returns the fd (caller owns it) or -errno
 * (-ENOTDIR or -ELOOP for anything else). */
int qv_open_dir_at(int dirfd, const char *name);

/* Creates `name` in dirfd as a new regular file, O_EXCL|O_NOFOLLOW: an
 * existing name of any kind, a dangling symlink included, is -EEXIST.  The
 * mode is set with fchmod, whatever the umask.  flags adds to O_CREAT|O_EXCL|
 * O_NOFOLLOW|O_CLOEXEC (O_WRONLY or O_RDWR, O_APPEND).  Returns the fd
 * (caller owns it) or -errno. */
int qv_create_at(int dirfd, const char *name, int flags, mode_t mode);

/* Opens `name` in dirfd for writing, creating it when absent, never through a
 * symlink (-ELOOP) and only when it is a regular file (-EINVAL otherwise: a
 * FIFO is not opened, so this never blocks).  The mode is set with fchmod.
 * Returns the fd (caller owns it) or -errno. */
int qv_open_regular_at(int dirfd, const char *name, int flags, mode_t mode);

/* The directory at path, whose last component must not be a symlink
 * (-ELOOP or -ENOTDIR then): a directory qvisor made and someone replaced.
 * Returns the fd or -errno. */
int qv_open_dir_nofollow(const char *path);

/* Reads `name` in dirfd, at most max bytes (-EFBIG beyond), only when it is
 * a regular file reached without a symlink (-ELOOP; -EINVAL for a FIFO, a
 * device…).  *ret is NUL-terminated. */
int qv_read_regular_file_at(int dirfd, const char *name, size_t max, char **ret, size_t *ret_len);

/* Opens an existing `name` in dirfd (AT_FDCWD: a path) only when it is a
 * regular file (-EINVAL otherwise, without blocking on a FIFO).  flags
 * adds to O_CLOEXEC|O_NOCTTY: the access mode, O_NOFOLLOW for a name that
 * must not be a symlink.  Returns the fd (caller owns it) or -errno. */
int qv_open_existing_at(int dirfd, const char *name, int flags);

/* "/proc/PID/fd/N" of this process: a path another process (a child that
 * takes file names, like qemu-img) opens to reach exactly the file fd is,
 * whatever its name became.  -ENAMETOOLONG when it does not fit. */
int qv_fd_path(int fd, char *buf, size_t len);

/* Unlinks `name` in dirfd only when it is a regular file with one link,
 * owned by this process's effective user and, when want is not NULL, the
 * very file want describes (st_dev, st_ino).  -ENOENT when absent, -EPERM
 * when it is something else (left alone).  Returns 0 or -errno. */
int qv_unlink_own_file_at(int dirfd, const char *name, const struct stat *want);
