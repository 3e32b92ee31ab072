#include "supervisor/images/image.h"

#include "cleanup.h"
#include "fileio.h"
#include "qv-build.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define IMAGE_SUFFIX ".qcow2"

/* Test builds: QVISOR_TEST_CRASH_AT=POINT kills the daemon there
 * (docs/lifecycle.md; the VMs' own points are sv_crash_point()). */
static void crash_point(const char *point) {
#if QV_TEST_HOOKS
    const char *want = getenv("QVISOR_TEST_CRASH_AT");
    if (want && strcmp(want, point) == 0)
        raise(SIGKILL);
#else
    (void)point;
#endif
}

int sv_image_path(const sv_config *c, const char *name, char *buf, size_t size, qv_error *err) {
    if (!qv_name_valid(name))
        return qv_error_set(err, EINVAL,
                            "'%s' is not a valid image name (lowercase letters, digits and '-', at most %d characters)",
                            name, QV_NAME_MAX);
    if ((size_t)snprintf(buf, size, "%s/%s" IMAGE_SUFFIX, c->images_dir, name) >= size)
        return qv_error_set(err, ENAMETOOLONG, "image path too long");
    return 0;
}

void sv_qemu_img_progress_init(sv_qemu_img_progress *p) {
    *p = (sv_qemu_img_progress){.percent = -1};
}

/* One record without its terminator: "    (42.00/100%)". */
static bool progress_record(sv_qemu_img_progress *p) {
    p->buf[p->len] = '\0';
    const char *s = p->buf + strspn(p->buf, " \t");
    if (*s++ != '(')
        return false;
    char *comma = strchr(s, ','); /* a decimal comma, should qemu-img run in such a locale */
    if (comma)
        *comma = '.';
    char *end;
    double v = strtod(s, &end);
    if (end == s || strcmp(end, "/100%)") != 0 || !(v >= 0 && v <= 100) || v == p->percent)
        return false;
    p->percent = v;
    return true;
}

bool sv_qemu_img_progress_feed(sv_qemu_img_progress *p, const char *chunk, size_t len) {
    bool changed = false;
    for (size_t i = 0; i < len; i++) {
        char ch = chunk[i];
        if (ch == '\r' || ch == '\n') {
            if (!p->skipping && p->len && progress_record(p))
                changed = true;
            p->len = 0;
            p->skipping = false;
        } else if (!p->skipping) {
            if (p->len + 1 < sizeof p->buf)
                p->buf[p->len++] = ch;
            else
                p->skipping = true;
        }
    }
    return changed;
}

int sv_qemu_img(const sv_config *c, const char *const *args, qv_run_output_fn progress, void *userdata,
                    qv_run_result *res, qv_error *err) {
    return sv_qemu_img_cancellable(c, args, -1, progress, userdata, res, err);
}

int sv_qemu_img_cancellable(const sv_config *c, const char *const *args, int cancel_fd, qv_run_output_fn progress,
                            void *userdata, qv_run_result *res, qv_error *err) {
    char *argv[24];
    size_t n = 0;
    argv[n++] = c->qemu_img_binary;
    for (size_t i = 0; args[i] && n < QV_ARRAY_SIZE(argv) - 1; i++)
        argv[n++] = (char *)args[i]; /* exec does not write them */
    argv[n] = NULL;
    int r = qv_run_cancellable(argv, cancel_fd, progress, userdata, res);
    if (r == -ECANCELED)
        return qv_error_set(err, ECANCELED, "qemu-img %s was interrupted", args[0]);
    if (r == -ENOENT)
        return qv_error_set(err, EOPNOTSUPP, "%s not found (install qemu-utils or set qemu.img_binary)",
                            c->qemu_img_binary);
    if (r < 0)
        return qv_error_set(err, r, "cannot run %s: %s", c->qemu_img_binary, strerror(-r));
    if (!qv_run_ok(res)) {
        char how[128];
        qv_run_describe(res, how, sizeof how);
        char *msg = res->err;
        size_t len = strlen(msg);
        while (len && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
            msg[--len] = '\0';
        qv_error_set(err, EIO, "qemu-img %s %s: %s", args[0], how, msg[0] ? msg : "(no message)");
        qv_run_result_free(res);
        return -EIO;
    }
    return 0;
}

int sv_qemu_img_info(const sv_config *c, const char *path, const char *format, json_t **ret, qv_error *err) {
    const char *args[8] = {"info", "--output=json", "--force-share", NULL};
    size_t n = 3;
    if (format) {
        args[n++] = "-f";
        args[n++] = format;
    }
    args[n++] = path;
    args[n] = NULL;
    qv_run_result res;
    int r = sv_qemu_img(c, args, NULL, NULL, &res, err);
    if (r < 0)
        return r;
    json_error_t je;
    json_t *j = json_loads(res.out, 0, &je);
    qv_run_result_free(&res);
    if (!json_is_object(j)) {
        json_decref(j);
        return qv_error_set(err, EPROTO, "qemu-img info printed no JSON for %s", path);
    }
    *ret = j;
    return 0;
}

int sv_image_info(const sv_config *c, const char *name, json_t **ret, qv_error *err) {
    char path[PATH_MAX];
    int r = sv_image_path(c, name, path, sizeof path, err);
    if (r < 0)
        return r;
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            return qv_error_set(err, ENOENT, "no image '%s' (see `qvisor image list`)", name);
        return qv_error_set(err, errno, "%s: %s", path, strerror(errno));
    }
    json_t *info = NULL;
    r = sv_qemu_img_info(c, path, "qcow2", &info, err);
    if (r < 0)
        return r;
    json_t *backing = json_object_get(info, "full-backing-filename");
    if (!backing)
        backing = json_object_get(info, "backing-filename");
    *ret = json_pack("{s:s, s:s, s:s, s:I, s:I, s:O?, s:I}", "name", name, "path", path, "format", "qcow2",
                     "virtual_size", json_integer_value(json_object_get(info, "virtual-size")), "actual_size",
                     json_integer_value(json_object_get(info, "actual-size")), "backing", backing, "modified",
                     (json_int_t)st.st_mtime);
    json_decref(info);
    return *ret ? 0 : qv_error_set(err, ENOMEM, "out of memory");
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int sv_image_list(const sv_config *c, json_t **ret, qv_error *err) {
    _cleanup_closedir_ DIR *d = opendir(c->images_dir);
    json_t *list = json_array();
    if (!list)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (!d) {
        if (errno == ENOENT) {
            *ret = list; /* no directory yet: no images */
            return 0;
        }
        json_decref(list);
        return qv_error_set(err, errno, "cannot read %s: %s", c->images_dir, strerror(errno));
    }
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name), sl = strlen(IMAGE_SUFFIX);
        if (len <= sl || strcmp(e->d_name + len - sl, IMAGE_SUFFIX) != 0)
            continue;
        char *name = strndup(e->d_name, len - sl);
        if (!name || !qv_name_valid(name)) { /* temp files (".x.qcow2.partial") and strays */
            free(name);
            continue;
        }
        char **grown = realloc(names, (n + 1) * sizeof *names);
        if (!grown) {
            free(name);
            break;
        }
        names = grown;
        names[n++] = name;
    }
    qv_qsort(names, n, sizeof *names, cmp_names);
    int r = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *info = NULL;
        if (r == 0 && (r = sv_image_info(c, names[i], &info, err)) == 0)
            json_array_append_new(list, info);
        free(names[i]);
    }
    free(names);
    if (r < 0) {
        json_decref(list);
        return r;
    }
    *ret = list;
    return 0;
}

const char *const sv_image_formats[] = {"qcow2", "vdi", "vhdx", "vpc", NULL};

/* A format the source may be given in: those probed, and raw. */
static bool format_known(const char *format) {
    if (strcmp(format, "raw") == 0)
        return true;
    for (size_t i = 0; sv_image_formats[i]; i++)
        if (strcmp(format, sv_image_formats[i]) == 0)
            return true;
    return false;
}

/* What the probe found that would make qemu-img read other files than the
 * source (as root): a backing file, an external data file.  NULL when none. */
static const char *names_other_files(json_t *info) {
    if (json_object_get(info, "backing-filename") || json_object_get(info, "full-backing-filename"))
        return "a backing file";
    json_t *data = json_object_get(json_object_get(info, "format-specific"), "data");
    if (json_object_get(data, "data-file") || json_is_true(json_object_get(data, "data-file-raw")))
        return "an external data file";
    return NULL;
}

int sv_image_probe(const sv_config *c, int src_fd, const char *label, const char *format, const char **ret_format,
                   qv_error *err) {
    char src[64];
    int r = qv_fd_path(src_fd, src, sizeof src);
    if (r < 0)
        return qv_error_set(err, r, "cannot name the source's descriptor");
    if (format && !format_known(format))
        return qv_error_set(err, EINVAL, "format '%s' is not one qvisor imports (qcow2, vdi, vhdx, vpc, raw)", format);
    const char *const single[] = {format, NULL};
    const char *const *formats = format ? single : sv_image_formats;
    qv_error last = {0};
    for (size_t i = 0; formats[i]; i++) {
        json_t *info = NULL;
        qv_error e = {0};
        r = sv_qemu_img_info(c, src, formats[i], &info, &e);
        if (r == -EOPNOTSUPP) {
            *err = e;
            return r;
        }
        if (r < 0) {
            last = e;
            continue;
        }
        const char *other = names_other_files(info);
        json_decref(info);
        if (other)
            return qv_error_set(err, EINVAL,
                                "%s is a %s image with %s; import a self-contained copy (qemu-img convert -O qcow2)",
                                label, formats[i], other);
        *ret_format = formats[i];
        return 0;
    }
    if (format)
        return qv_error_set(err, EINVAL, "%s is not a %s image: %s", label, format, last.msg);
    return qv_error_set(err, EINVAL, "%s is not a disk image (qcow2, vdi, vhdx or vpc); use --format raw for a raw image",
                        label);
}

/* A qcow2 header may name other files (a backing file, an external data
 * file), and qemu-img runs as root: the check that it names none would be
 * worth nothing if the client could rewrite its header after it.  So a
 * qcow2 source (by its magic, or because the client said so) is first
 * copied, up to the size it had, into a file only root can reach, and the
 * probe and the conversion read that copy.  The other formats qvisor
 * imports name no other file in QEMU (vdi, and vhdx/vpc without the
 * differencing disks QEMU does not open), raw none.  *ret_fd: the copy, or
 * -1 when none is needed.  Returns 0 or -errno. */
static int private_copy(int images_dfd, const char *copy_name, int src_fd, const char *label, const char *format,
                        int *ret_fd, qv_error *err) {
    *ret_fd = -1;
    unsigned char magic[4] = {0};
    if (!(format && strcmp(format, "qcow2") == 0) &&
        (pread(src_fd, magic, sizeof magic, 0) != (ssize_t)sizeof magic || memcmp(magic, "QFI\xfb", 4) != 0))
        return 0;
    struct stat st;
    if (fstat(src_fd, &st) < 0)
        return qv_error_set(err, errno, "%s: %s", label, strerror(errno));
    unlinkat(images_dfd, copy_name, 0); /* a leftover of an interrupted import */
    _cleanup_close_ int fd = qv_create_at(images_dfd, copy_name, O_RDWR, 0600);
    if (fd < 0)
        return qv_error_set(err, -fd, "cannot create a private copy of %s: %s", label, strerror(-fd));
    off_t in = 0, left = st.st_size;
    bool plain = false; /* copy_file_range refused (another file system type): read and write */
    char buf[1 << 16];
    while (left > 0) {
        ssize_t n;
        if (!plain) {
            n = copy_file_range(src_fd, &in, fd, NULL, (size_t)(left < (1 << 30) ? left : (1 << 30)), 0);
            if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                plain = true;
                continue;
            }
        } else {
            n = pread(src_fd, buf, (size_t)(left < (off_t)sizeof buf ? left : (off_t)sizeof buf), in);
            if (n > 0 && qv_write_all(fd, buf, (size_t)n) < 0)
                n = -1;
            if (n > 0)
                in += n;
        }
        if (n < 0) {
            int e = errno;
            unlinkat(images_dfd, copy_name, 0);
            return qv_error_set(err, e, "cannot copy %s: %s", label, strerror(e));
        }
        if (n == 0)
            break; /* it shrank meanwhile: what is there is the image */
        left -= n;
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/* The new image, complete in the unnamed file fd (/proc/PID/fd/N as
 * fd_path) of the images directory: checked with `qemu-img info`, synced,
 * made read-only and linked in as path (never renamed: a link does not
 * replace an image that appeared meanwhile, -EEXIST). */
static int publish(const sv_config *c, int images_dfd, int fd, const char *fd_path, const char *path, const char *name,
                   qv_error *err) {
    json_t *info = NULL;
    int r = sv_qemu_img_info(c, fd_path, "qcow2", &info, err);
    json_decref(info);
    if (r < 0)
        return r;
    if (fsync(fd) < 0 || fchmod(fd, 0444) < 0) {
        int e = errno;
        return qv_error_set(err, e, "cannot finish image %s: %s", name, strerror(e));
    }
    /* a link to the very file (never rename: it would replace an image
     * that appeared meanwhile) */
    if (linkat(AT_FDCWD, fd_path, images_dfd, strrchr(path, '/') + 1, AT_SYMLINK_FOLLOW) < 0) {
        int e = errno;
        if (e == EEXIST)
            return qv_error_set(err, EEXIST, "an image named '%s' exists already", name);
        return qv_error_set(err, e, "cannot create %s: %s", path, strerror(e));
    }
    fsync(images_dfd);
    return 0;
}


int sv_image_import(const sv_config *c, int src_fd, const char *label, const char *name, const char *format,
                    qv_run_output_fn progress, void *userdata, qv_error *err) {
    char path[PATH_MAX], tmp[PATH_MAX];
    int r = sv_image_path(c, name, path, sizeof path, err);
    if (r < 0)
        return r;
    struct stat st;
    if (fstat(src_fd, &st) < 0)
        return qv_error_set(err, errno, "%s: %s", label, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return qv_error_set(err, EINVAL, "%s is not a regular file", label);
    if (access(path, F_OK) == 0)
        return qv_error_set(err, EEXIST, "an image named '%s' exists already (remove it first)", name);
    r = qv_mkdir_p(c->images_dir, 0750);
    if (r < 0)
        return qv_error_set(err, r, "cannot create %s: %s", c->images_dir, strerror(-r));
    _cleanup_close_ int images_dfd = qv_open_dir_nofollow(c->images_dir);
    if (images_dfd < 0)
        return qv_error_set(err, -images_dfd, "cannot open %s: %s", c->images_dir, strerror(-images_dfd));
    char copy_name[NAME_MAX + 1];
    snprintf(copy_name, sizeof copy_name, ".%s" IMAGE_SUFFIX ".source.partial", name);
    _cleanup_close_ int copy_fd = -1;
    r = private_copy(images_dfd, copy_name, src_fd, label, format, &copy_fd, err);
    if (r < 0)
        return r;
    if (copy_fd >= 0)
        src_fd = copy_fd; /* from here on, only the copy is read */
    const char *fmt = NULL;
    r = sv_image_probe(c, src_fd, label, format, &fmt, err);
    if (r < 0) {
        if (copy_fd >= 0)
            unlinkat(images_dfd, copy_name, 0);
        return r;
    }
    /* The new image is an unnamed file in the images directory (O_TMPFILE)
     * that qemu-img reaches as /proc/PID/fd/N, linked under its name once
     * it is complete: no temp name a user who can write the directory could
     * swap for a symlink, and nothing left behind by a crash. */
    snprintf(tmp, sizeof tmp, "%s/(new image %s)", c->images_dir, name);
    char tmpfd_path[64];
    _cleanup_close_ int fd = openat(images_dfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || (r = qv_fd_path(fd, tmpfd_path, sizeof tmpfd_path)) < 0) {
        r = fd < 0 ? -errno : r;
        if (copy_fd >= 0)
            unlinkat(images_dfd, copy_name, 0);
        return qv_error_set(err, -r, "cannot create a file in %s: %s", c->images_dir, strerror(-r));
    }

    /* The source is the very file the client opened (/proc/PID/fd/N), in the
     * format the probe found, named explicitly (no probing, no raw by
     * accident) and, for qcow2, with no backing file whatever its header
     * says by now: the client may rewrite its file between the probe and
     * the copy. */
    char src[64];
    if ((r = qv_fd_path(src_fd, src, sizeof src)) < 0)
        return qv_error_set(err, r, "cannot name the source's descriptor");
    json_t *opts = json_pack("{s:s, s:{s:s, s:s}}", "driver", fmt, "file", "driver", "file", "filename", src);
    if (opts && strcmp(fmt, "qcow2") == 0)
        json_object_set_new(opts, "backing", json_null());
    _cleanup_free_ char *dump = opts ? json_dumps(opts, JSON_COMPACT) : NULL;
    json_decref(opts);
    _cleanup_free_ char *spec = NULL;
    if (!dump || asprintf(&spec, "json:%s", dump) < 0)
        return qv_error_set(err, ENOMEM, "out of memory");
    const char *args[] = {"convert", "-p", "-O", "qcow2", spec, tmpfd_path, NULL};
    qv_run_result res;
    r = sv_qemu_img(c, args, progress, userdata, &res, err);
    if (copy_fd >= 0)
        unlinkat(images_dfd, copy_name, 0);
    if (r < 0)
        return r;
    qv_run_result_free(&res);

    return publish(c, images_dfd, fd, tmpfd_path, path, name, err);
}

size_t sv_qemu_img_convert_args(const char *src, const char *dst, const char *base,
                                const char *args[SV_QEMU_IMG_CONVERT_ARGS_MAX]) {
    size_t n = 0;
    static const char *const head[] = {"convert", "-p", "-f", "qcow2", "-O", "qcow2"};
    for (size_t i = 0; i < QV_ARRAY_SIZE(head); i++)
        args[n++] = head[i];
    if (base) {
        /* only the clusters that differ from base are written */
        args[n++] = "-B";
        args[n++] = base;
        args[n++] = "-F";
        args[n++] = "qcow2";
    }
    args[n++] = src;
    args[n++] = dst;
    args[n] = NULL;
    return n;
}

int sv_image_from_disk(const sv_config *c, int disk_fd, const char *label, const char *name, int cancel_fd,
                       qv_run_output_fn progress, void *userdata, qv_error *err) {
    char path[PATH_MAX];
    int r = sv_image_path(c, name, path, sizeof path, err);
    if (r < 0)
        return r;
    if (access(path, F_OK) == 0)
        return qv_error_set(err, EEXIST, "an image named '%s' exists already (remove it first)", name);
    r = qv_mkdir_p(c->images_dir, 0750);
    if (r < 0)
        return qv_error_set(err, r, "cannot create %s: %s", c->images_dir, strerror(-r));
    _cleanup_close_ int images_dfd = qv_open_dir_nofollow(c->images_dir);
    if (images_dfd < 0)
        return qv_error_set(err, -images_dfd, "cannot open %s: %s", c->images_dir, strerror(-images_dfd));
    /* as at import: an unnamed file (O_TMPFILE) until it is complete, so
     * that neither an interruption nor a crash leaves half an image */
    char src[64], dst[64];
    _cleanup_close_ int fd = openat(images_dfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return qv_error_set(err, errno, "cannot create a file in %s: %s", c->images_dir, strerror(errno));
    if ((r = qv_fd_path(fd, dst, sizeof dst)) < 0 || (r = qv_fd_path(disk_fd, src, sizeof src)) < 0)
        return qv_error_set(err, -r, "cannot name a descriptor");
    const char *args[SV_QEMU_IMG_CONVERT_ARGS_MAX];
    sv_qemu_img_convert_args(src, dst, NULL, args);
    qv_run_result res;
    r = sv_qemu_img_cancellable(c, args, cancel_fd, progress, userdata, &res, err);
    if (r < 0) {
        qv_error_prefix(err, "cannot flatten %s", label);
        return r;
    }
    qv_run_result_free(&res);
    crash_point("image-create-before-link");
    return publish(c, images_dfd, fd, dst, path, name, err);
}

int sv_image_remove(const sv_config *c, const char *name, qv_error *err) {
    char path[PATH_MAX];
    int r = sv_image_path(c, name, path, sizeof path, err);
    if (r < 0)
        return r;
    if (unlink(path) < 0) {
        if (errno == ENOENT)
            return qv_error_set(err, ENOENT, "no image '%s'", name);
        return qv_error_set(err, errno, "cannot remove %s: %s", path, strerror(errno));
    }
    return 0;
}

int sv_image_stamp(const char *path, uint64_t *ret_size, int64_t *ret_mtime_ns, qv_error *err) {
    struct stat st;
    if (stat(path, &st) < 0)
        return qv_error_set(err, errno == ENOENT ? ENOENT : errno, "base image %s: %s", path, strerror(errno));
    *ret_size = (uint64_t)st.st_size;
    *ret_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    return 0;
}
