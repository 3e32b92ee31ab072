/* Base images: IMAGES_DIR/NAME.qcow2, made read-only (0444) at import so
 * they cannot change under the overlays that use them. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "run.h"
#include "spec/config.h"

/* IMAGES_DIR/NAME.qcow2 after validating NAME; -EINVAL (with err) otherwise. */
int sv_image_path(const sv_config *c, const char *name, char *buf, size_t size, qv_error *err);

/* `qemu-img info` of one image: {"name", "path", "format", "virtual_size",
 * "actual_size", "backing" (or null), "modified" (unix time)}; -ENOENT when
 * there is no such image.  New reference in *ret. */
int sv_image_info(const sv_config *c, const char *name, json_t **ret, qv_error *err);
/* Every image, sorted by name (array, new reference). */
int sv_image_list(const sv_config *c, json_t **ret, qv_error *err);

/* The formats an import recognises by itself; raw only when asked for
 * (anything is a raw image), vmdk not at all (its descriptor names other
 * files).  NULL-terminated. */
extern const char *const sv_image_formats[];

/* What the import source src_fd is: `qemu-img info` with each format of
 * sv_image_formats named explicitly (no probing), or only `format` when it
 * is given.  *ret_format is static.  -EINVAL (exit 65) when it is none of
 * them ("not a disk image", label naming the file), or when it names other
 * files (a backing file, an external data file) that qemu-img would open as
 * root. */
int sv_image_probe(const sv_config *c, int src_fd, const char *label, const char *format, const char **ret_format,
                   qv_error *err);

/* Converts the file src_fd (the client opened it; never a path) into
 * IMAGES_DIR/NAME.qcow2 via a temp file, fsyncs, renames, makes it
 * read-only, and verifies it with `qemu-img info`.  format: as
 * sv_image_probe(); label names the source in messages.  progress (may be
 * NULL) gets qemu-img's "(x.yz/100%)" output.  -EEXIST if NAME exists,
 * -EINVAL when the source is no regular file or no image (above). */
int sv_image_import(const sv_config *c, int src_fd, const char *label, const char *name, const char *format,
                    qv_run_output_fn progress, void *userdata, qv_error *err);
int sv_image_remove(const sv_config *c, const char *name, qv_error *err);

/* `image create NAME --from-vm VM`: the qcow2 disk disk_fd (a VM's overlay,
 * opened by supervisor/vm/; label names it in messages) flattened into a
 * new base image IMAGES_DIR/NAME.qcow2: every cluster its chain holds,
 * no backing file, read-only, in an unnamed file linked in once complete
 * (an interruption or a crash leaves nothing).  cancel_fd and progress as
 * sv_qemu_img_cancellable().  -EEXIST when NAME exists, -EINVAL for a bad
 * name, -ECANCELED. */
int sv_image_from_disk(const sv_config *c, int disk_fd, const char *label, const char *name, int cancel_fd,
                       qv_run_output_fn progress, void *userdata, qv_error *err);

/* The arguments (after the binary) of `qemu-img convert` with progress (-p)
 * from the qcow2 disk src into a new qcow2 file dst (both names qemu-img
 * opens: paths or /proc/self/fd/N): an overlay on base (-B base -F qcow2:
 * only the clusters where src differs from base are written), or, base
 * NULL, flattened (every cluster, no backing file).  NULL-terminated;
 * returns how many.  Pure: the strings are borrowed. */
#define SV_QEMU_IMG_CONVERT_ARGS_MAX 16
size_t sv_qemu_img_convert_args(const char *src, const char *dst, const char *base,
                                const char *args[SV_QEMU_IMG_CONVERT_ARGS_MAX]);

/* Reads what `qemu-img convert -p` prints on stdout — records like
 * "    (42.00/100%)" ended by '\r' — from chunks split anywhere.  percent
 * is the share of the data to copy (allocated parts of the source, not its
 * virtual size) that is done. */
typedef struct sv_qemu_img_progress {
    char buf[64];
    size_t len;
    bool skipping;  /* in a record too long to be progress */
    double percent; /* the last value read, -1 before the first */
} sv_qemu_img_progress;

void sv_qemu_img_progress_init(sv_qemu_img_progress *p);
/* Feeds one chunk; true when it completed a record with a new value. */
bool sv_qemu_img_progress_feed(sv_qemu_img_progress *p, const char *chunk, size_t len);

/* Runs `qemu-img ARGS…` (args NULL-terminated).  0 when it exited 0, with
 * *res to free; otherwise -EIO with err carrying what qemu-img printed, or
 * -EOPNOTSUPP when qemu-img is missing. */
int sv_qemu_img(const sv_config *c, const char *const *args, qv_run_output_fn progress, void *userdata,
                qv_run_result *res, qv_error *err);

/* sv_qemu_img() that kills qemu-img and returns -ECANCELED (err set) once
 * cancel_fd (-1: never) becomes readable (qv_run_cancellable). */
int sv_qemu_img_cancellable(const sv_config *c, const char *const *args, int cancel_fd, qv_run_output_fn progress,
                            void *userdata, qv_run_result *res, qv_error *err);

/* `qemu-img info` of any file as JSON (format given, no probing when non-NULL). */
int sv_qemu_img_info(const sv_config *c, const char *path, const char *format, json_t **ret, qv_error *err);

/* The identity of a base image file: its size and mtime (ns).  Recorded when
 * an overlay is made on it and checked before every start: a base that
 * changed under its overlays would corrupt them. */
int sv_image_stamp(const char *path, uint64_t *ret_size, int64_t *ret_mtime_ns, qv_error *err);
