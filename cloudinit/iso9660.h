/* A small ISO9660 writer for cloud-init seeds: one flat root directory,
 * Rock Ridge (RRIP_1991A) for Linux, Joliet for Windows and 7-Zip.
 *
 * The image is a pure function of (label, files, timestamp): files are
 * sorted, so the order they are passed in does not matter, and nothing
 * else (uid, host name, time of day) leaks in.  Layout: docs/cloudinit.md. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

/* The directory record holds a 32-bit size: one extent, no multi-extent. */
#define CI_ISO_FILE_MAX UINT32_MAX
/* The Joliet volume id is 32 bytes of UCS-2 and must equal the label. */
#define CI_ISO_LABEL_MAX 16
/* Joliet allows 64 UCS-2 characters per name. */
#define CI_ISO_NAME_MAX 64
/* A seed has a handful of files; this only bounds the work. */
#define CI_ISO_FILES_MAX 4096
#define CI_ISO_SECTOR 2048

typedef struct ci_iso_file {
    const char *name; /* as Linux (Rock Ridge) and Windows (Joliet) show it */
    const void *data; /* may be NULL when size is 0; borrowed */
    uint64_t size;    /* at most CI_ISO_FILE_MAX */
    uint32_t mode;    /* permission bits for Rock Ridge PX; 0 means 0644 */
} ci_iso_file;

/* Labels: 1..16 characters of [A-Za-z0-9_.-].  -EINVAL with a message. */
int ci_iso_validate_label(const char *label, qv_error *err);
/* Names: 1..64 printable ASCII characters, none of / \ * : ; ? " < > | or
 * space, not "." or "..".  -EINVAL (or -ENAMETOOLONG) with a message. */
int ci_iso_validate_name(const char *name, qv_error *err);

/* The image timestamp: SOURCE_DATE_EPOCH when set (a malformed value is
 * -EINVAL, as the reproducible-builds spec asks), else the current time. */
int ci_iso_timestamp(int64_t *ret, qv_error *err);

/* Size in bytes of the image these files make (a multiple of 2048). */
int ci_iso_image_size(const char *label, const ci_iso_file *files, size_t n, uint64_t *ret, qv_error *err);

/* Writes the image sequentially to fd (works on pipes; no seeking).
 * Returns 0 or a negative errno; on a write error part of the image may
 * have been written. */
int ci_iso_write_fd(int fd, const char *label, const ci_iso_file *files, size_t n, int64_t timestamp,
                    qv_error *err);

/* Builds the image in memory.  *ret (malloc'd, owned by the caller) and
 * *ret_len are set only on success. */
int ci_iso_write_buf(const char *label, const ci_iso_file *files, size_t n, int64_t timestamp, uint8_t **ret,
                     size_t *ret_len, qv_error *err);

/* Flags of ci_iso_write_file_atomic. */
enum {
    /* fsync the image before the rename and the directory after it, so that
     * also after a host crash the path holds the old or the whole new image
     * (costs two fsyncs: 0.3-5 ms on a virtual disk, more than the rest) */
    CI_ISO_DURABLE = 1u << 0,
    /* replace path only when it is absent or a regular file (a symlink, a
     * device node, a FIFO stay; -EEXIST): QV_ATOMIC_REGULAR */
    CI_ISO_REGULAR = 1u << 1,
};

/* Replaces path atomically: the image goes to a temporary file in the same
 * directory, which is renamed over path, so a reader (QEMU) sees the old
 * image or the whole new one, never a partial one.  A failure removes the
 * temporary file and leaves path alone.  flags: CI_ISO_* above. */
int ci_iso_write_file_atomic(const char *path, mode_t mode, unsigned flags, const char *label,
                             const ci_iso_file *files, size_t n, int64_t timestamp, qv_error *err);
