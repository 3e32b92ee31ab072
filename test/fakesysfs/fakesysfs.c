/* libfakesysfs: an LD_PRELOAD "kernel" for the fake sysfs tree that
 * mktree.py builds (docs/fakesysfs.md).
 *
 * When FAKESYSFS_ROOT is set, write(), pwrite() and writev() on a regular
 * file whose /proc/self/fd target lies under $FAKESYSFS_ROOT/sys do what the
 * kernel's store method would do, synchronously: the write returns after
 * the symlinks changed, with the kernel's errno on failure.  Emulated:
 * driver_override, drivers/DRV/{bind,unbind}, drivers_probe; uevent writes
 * are accepted and ignored; any other attribute is stored like a value
 * (content replaced).  Faults come from $ROOT/fake/faults, every intercepted
 * write is logged to $ROOT/fake/log.
 *
 * The library never calls its own interposed functions: log and tree
 * writes use the write syscall directly, and a thread-local flag passes
 * through anything the emulation itself does (ASan or umockdev may route
 * calls back here).  One mutex per process and an flock() on
 * $ROOT/fake/lock across processes serialise the emulation.
 *
 * Built without sanitizers on purpose: it is preloaded into python3 and
 * umockdev-run as well as into ASan programs (libasan goes first there). */

/* The interposed names must be the plain ones, not the *64 redirects that
 * meson's -D_FILE_OFFSET_BITS=64 would make of them. */
#undef _FILE_OFFSET_BITS

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* sysfs takes at most a page per write (kernfs atomic_write_len). */
#define STORE_MAX 4096
#define LINE_MAX_ 512

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);

static write_fn real_write;
static pwrite_fn real_pwrite, real_pwrite64;
static writev_fn real_writev;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static bool active;
static char root[PATH_MAX];         /* canonical $FAKESYSFS_ROOT */
static char sysdir[PATH_MAX];       /* root + "/sys" */
static size_t sysdir_len;

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static int lock_fd = -1;            /* held flock() on fake/lock, under mutex */
static _Thread_local bool busy;     /* inside the fake kernel: pass through */

/* ---- raw helpers: nothing here reaches an interposed symbol ---- */

static ssize_t sys_write(int fd, const void *buf, size_t n) {
    return syscall(SYS_write, fd, buf, n);
}

static int write_all(int fd, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = sys_write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int sys_open(const char *path, int flags, mode_t mode) {
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags | O_CLOEXEC, mode);
}

static void sys_close(int fd) {
    if (fd >= 0)
        syscall(SYS_close, fd);
}

static void init(void) {
    real_write = (write_fn)dlsym(RTLD_NEXT, "write");
    real_pwrite = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    real_writev = (writev_fn)dlsym(RTLD_NEXT, "writev");

    const char *env = getenv("FAKESYSFS_ROOT");
    if (!env || !*env)
        return;
    /* The kernel's name for the root, as /proc/self/fd will show paths. */
    int fd = sys_open(env, O_PATH | O_DIRECTORY, 0);
    if (fd < 0)
        return;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    long n = syscall(SYS_readlinkat, AT_FDCWD, proc, root, sizeof root - 1);
    sys_close(fd);
    if (n <= 0 || (size_t)n >= sizeof root - 8)
        return;
    root[n] = '\0';
    if (strcmp(root, "/") == 0)
        return;     /* never play kernel over the real /sys */
    sysdir_len = (size_t)snprintf(sysdir, sizeof sysdir, "%s/sys", root);
    active = true;
}

__attribute__((constructor)) static void fakesysfs_ctor(void) {
    pthread_once(&init_once, init);
}

/* A fork() while another thread holds the mutex must not leave it locked
 * in the child. */
static void atfork_prepare(void) {
    pthread_mutex_lock(&mutex);
}
static void atfork_parent(void) {
    pthread_mutex_unlock(&mutex);
}
static void atfork_child(void) {
    pthread_mutex_unlock(&mutex);
}
__attribute__((constructor)) static void fakesysfs_atfork(void) {
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* True, with the fd's path in path, when fd is a regular file under
 * $ROOT/sys and this thread is not already inside the fake kernel. */
static bool fd_in_sys(int fd, char *path, size_t size) {
    if (busy)
        return false;
    pthread_once(&init_once, init);
    if (!active)
        return false;
    int saved = errno;
    struct stat st;
    bool ok = false;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        long n = syscall(SYS_readlinkat, AT_FDCWD, proc, path, size - 1);
        if (n > 0) {
            path[n] = '\0';
            ok = strncmp(path, sysdir, sysdir_len) == 0 && path[sysdir_len] == '/';
        }
    }
    errno = saved;
    return ok;
}

/* ---- small file and path helpers (called with busy set) ---- */

static void fake_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/fake/%s", root, name);
}

/* Reads up to size-1 bytes; NUL-terminates.  Returns the length or -errno. */
static ssize_t read_file(const char *path, char *buf, size_t size) {
    int fd = sys_open(path, O_RDONLY, 0);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    while (len < size - 1) {
        ssize_t r = read(fd, buf + len, size - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    sys_close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

/* Replaces a file's content in place (same inode: a writer that keeps its
 * fd open keeps writing to the attribute). */
static int store_file(const char *path, const char *s, size_t n) {
    int fd = sys_open(path, O_WRONLY | O_TRUNC, 0);
    if (fd < 0)
        return -errno;
    int r = write_all(fd, s, n);
    sys_close(fd);
    return r;
}

/* Replaces a file through a rename, so readers never see it half done. */
static int replace_file(const char *path, const char *s, size_t n) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.fakesysfs-tmp", path);
    struct stat st;
    mode_t mode = stat(path, &st) == 0 ? (st.st_mode & 07777) : 0644;
    int fd = sys_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0)
        return -errno;
    int r = write_all(fd, s, n);
    sys_close(fd);
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* "0000:01:00.0": the only names bus_find_device_by_name() could match
 * here; anything else (also "../x") is an unknown device. */
static bool bdf_valid(const char *s) {
    static const char pattern[] = "xxxx:xx:xx.x";
    if (strlen(s) != sizeof pattern - 1)
        return false;
    for (size_t i = 0; pattern[i]; i++) {
        char c = s[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        if (pattern[i] == 'x' ? !hex : c != pattern[i])
            return false;
    }
    return true;
}

/* The device's directory (canonical), or -ENODEV. */
static int dev_dir(const char *bdf, char ret[PATH_MAX]) {
    if (!bdf_valid(bdf))
        return -ENODEV;
    char link[PATH_MAX];
    snprintf(link, sizeof link, "%s/bus/pci/devices/%s", sysdir, bdf);
    if (!realpath(link, ret))
        return -ENODEV;
    return 0;
}

/* Name of the driver the device is bound to; "" when none. */
static void bound_driver(const char *devdir, char ret[NAME_MAX + 1]) {
    char link[PATH_MAX], target[PATH_MAX];
    snprintf(link, sizeof link, "%s/driver", devdir);
    ssize_t n = readlink(link, target, sizeof target - 1);
    ret[0] = '\0';
    if (n > 0) {
        target[n] = '\0';
        snprintf(ret, NAME_MAX + 1, "%s", base_name(target));
    }
}

/* driver_override as the kernel holds it; "" when "(null)". */
static void override_of(const char *devdir, char *ret, size_t size) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/driver_override", devdir);
    if (read_file(path, ret, size) < 0)
        ret[0] = '\0';
    ret[strcspn(ret, "\n")] = '\0';
    if (strcmp(ret, "(null)") == 0)
        ret[0] = '\0';
}

static bool driver_exists(const char *drv) {
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/bus/pci/drivers/%s", sysdir, drv);
    return drv[0] && !strchr(drv, '/') && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Relative symlink from inside dir to target, as sysfs makes them: one
 * "../" per component of dir below sys/, then target below sys/. */
static void rel_link(const char *dir, const char *target, char *ret, size_t size) {
    size_t depth = 0;
    for (const char *p = dir + sysdir_len; *p; p++)
        depth += *p == '/';
    ret[0] = '\0';
    size_t len = 0;
    for (size_t i = 0; i < depth && len + 3 < size; i++, len += 3)
        memcpy(ret + len, "../", 4);
    snprintf(ret + len, size - len, "%s", target + sysdir_len + 1);
}

/* Rewrites uevent with DRIVER= first when bound and absent when not, as
 * the kernel's dev_uevent() does. */
static void uevent_set_driver(const char *devdir, const char *drv) {
    char path[PATH_MAX], old[8192], out[8192 + 128];
    snprintf(path, sizeof path, "%s/uevent", devdir);
    if (read_file(path, old, sizeof old) < 0)
        return;
    size_t len = 0;
    if (*drv)
        len = (size_t)snprintf(out, sizeof out, "DRIVER=%s\n", drv);
    for (char *line = old; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) + 1 : strlen(line);
        if (strncmp(line, "DRIVER=", 7) != 0 && len + n < sizeof out) {
            memcpy(out + len, line, n);
            len += n;
        }
        line += n;
    }
    replace_file(path, out, len);
}

static void do_bind(const char *bdf, const char *devdir, const char *drv) {
    char drvdir[PATH_MAX], link[PATH_MAX], target[PATH_MAX];
    snprintf(drvdir, sizeof drvdir, "%s/bus/pci/drivers/%s", sysdir, drv);
    /* Kernel order (driver_sysfs_add): the driver's link, then "driver". */
    snprintf(link, sizeof link, "%s/%s", drvdir, bdf);
    rel_link(drvdir, devdir, target, sizeof target);
    unlink(link);
    symlink(target, link);
    snprintf(link, sizeof link, "%s/driver", devdir);
    rel_link(devdir, drvdir, target, sizeof target);
    unlink(link);
    symlink(target, link);
    uevent_set_driver(devdir, drv);
}

static void do_unbind(const char *bdf, const char *devdir, const char *drv) {
    char link[PATH_MAX];
    snprintf(link, sizeof link, "%s/bus/pci/drivers/%s/%s", sysdir, drv, bdf);
    unlink(link);
    snprintf(link, sizeof link, "%s/driver", devdir);
    unlink(link);
    uevent_set_driver(devdir, "");
}

/* Whether drv is one the device's ID table would match (fake/native/BDF,
 * one driver per line, in probe order).  With n > 0, returns the n-th
 * (1-based) native driver in ret instead, "" past the end. */
static bool native_driver(const char *bdf, const char *drv, size_t n, char ret[NAME_MAX + 1]) {
    char path[PATH_MAX], buf[4096];
    fake_path(path, sizeof path, "native/");
    strncat(path, bdf, sizeof path - strlen(path) - 1);
    if (ret)
        ret[0] = '\0';
    if (read_file(path, buf, sizeof buf) < 0)
        return false;
    size_t i = 0;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line += strspn(line, " \t");
        if (!*line || *line == '#')
            continue;
        if (drv && strcmp(line, drv) == 0)
            return true;
        if (n && ++i == n) {
            snprintf(ret, NAME_MAX + 1, "%s", line);
            return true;
        }
    }
    return false;
}

/* pci_bus_match(): with driver_override set, only the driver of that name
 * matches (any driver, vfio-pci included); otherwise the ID tables do. */
static bool driver_matches(const char *bdf, const char *devdir, const char *drv) {
    char ov[STORE_MAX];
    override_of(devdir, ov, sizeof ov);
    if (*ov)
        return strcmp(ov, drv) == 0;
    return native_driver(bdf, drv, 0, NULL);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    remove(path);
    return 0;
}

static void drop_device_links(const char *bdf, const char *devdir) {
    char drv[NAME_MAX + 1], link[PATH_MAX], target[PATH_MAX];
    bound_driver(devdir, drv);
    if (*drv) {
        snprintf(link, sizeof link, "%s/bus/pci/drivers/%s/%s", sysdir, drv, bdf);
        unlink(link);
    }
    snprintf(link, sizeof link, "%s/iommu_group", devdir);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n > 0) {
        target[n] = '\0';
        snprintf(link, sizeof link, "%s/kernel/iommu_groups/%s/devices/%s", sysdir, base_name(target), bdf);
        unlink(link);
    }
    snprintf(link, sizeof link, "%s/bus/pci/devices/%s", sysdir, bdf);
    unlink(link);
}

/* Surprise removal: the device and everything below it (functions behind
 * a vanishing bridge) disappear with every link to them. */
static int vanish(const char *bdf) {
    char devdir[PATH_MAX];
    int r = dev_dir(bdf, devdir);
    if (r < 0)
        return r;
    size_t dlen = strlen(devdir);

    char busdir[PATH_MAX];
    snprintf(busdir, sizeof busdir, "%s/bus/pci/devices", sysdir);
    DIR *d = opendir(busdir);
    char (*names)[NAME_MAX + 1] = NULL;
    size_t n = 0, cap = 0;
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            char other[PATH_MAX];
            if (de->d_name[0] == '.' || dev_dir(de->d_name, other) < 0)
                continue;
            if (strncmp(other, devdir, dlen) != 0 || (other[dlen] != '\0' && other[dlen] != '/'))
                continue;
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                void *p = realloc(names, ncap * sizeof *names);
                if (!p)
                    break;
                names = p;
                cap = ncap;
            }
            snprintf(names[n++], NAME_MAX + 1, "%s", de->d_name);
        }
        closedir(d);
    }
    for (size_t i = 0; i < n; i++) {
        char other[PATH_MAX];
        if (dev_dir(names[i], other) == 0)
            drop_device_links(names[i], other);
    }
    free(names);
    nftw(devdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- the store methods ---- */

enum op { OP_OVERRIDE, OP_UNBIND, OP_BIND, OP_PROBE, OP_UEVENT, OP_WRITE };
static const char *const op_names[] = { "override", "unbind", "bind", "probe", "uevent", "write" };

static int store_override(const char *devdir, const char *val) {
    size_t n = strcspn(val, "\n");
    if (n >= STORE_MAX - 1)
        return -EINVAL;
    char buf[STORE_MAX + 1];
    if (n == 0)
        n = (size_t)snprintf(buf, sizeof buf, "(null)\n");
    else
        n = (size_t)snprintf(buf, sizeof buf, "%.*s\n", (int)n, val);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/driver_override", devdir);
    return store_file(path, buf, n);
}

/* unbind_store(): only the driver the device is bound to lets go. */
static int store_unbind(const char *drv, const char *bdf) {
    char devdir[PATH_MAX], cur[NAME_MAX + 1];
    if (dev_dir(bdf, devdir) < 0)
        return -ENODEV;
    bound_driver(devdir, cur);
    if (strcmp(cur, drv) != 0)
        return -ENODEV;
    do_unbind(bdf, devdir, drv);
    return 0;
}

/* bind_store(): match first (-ENODEV), then -EBUSY if already bound. */
static int store_bind(const char *drv, const char *bdf) {
    char devdir[PATH_MAX], cur[NAME_MAX + 1];
    if (dev_dir(bdf, devdir) < 0 || !driver_matches(bdf, devdir, drv))
        return -ENODEV;
    bound_driver(devdir, cur);
    if (*cur)
        return -EBUSY;
    do_bind(bdf, devdir, drv);
    return 0;
}

/* drivers_probe_store(): an unbound device gets the first matching driver
 * that is loaded; none matching is still success. */
static int store_probe(const char *bdf, char drv_out[NAME_MAX + 1]) {
    char devdir[PATH_MAX], cur[NAME_MAX + 1], ov[STORE_MAX];
    if (dev_dir(bdf, devdir) < 0)
        return -ENODEV;
    bound_driver(devdir, cur);
    if (!*cur) {
        override_of(devdir, ov, sizeof ov);
        if (*ov) {
            if (strlen(ov) <= NAME_MAX && driver_exists(ov))
                snprintf(cur, sizeof cur, "%s", ov);
        } else {
            char cand[NAME_MAX + 1];
            for (size_t i = 1; native_driver(bdf, NULL, i, cand); i++) {
                if (driver_exists(cand)) {
                    snprintf(cur, sizeof cur, "%s", cand);
                    break;
                }
            }
        }
        if (*cur)
            do_bind(bdf, devdir, cur);
    }
    snprintf(drv_out, NAME_MAX + 1, "%s", *cur ? cur : "-");
    return 0;
}

/* Any other attribute: the value replaces the content, as a show() after
 * a store() would read.  A hugepage pool keeps free_hugepages in step. */
static int store_generic(const char *path, const char *val, size_t n) {
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    if (!(st.st_mode & 0222))
        return -EACCES;
    char old[64] = "";
    bool pool = strcmp(base_name(path), "nr_hugepages") == 0;
    if (pool)
        read_file(path, old, sizeof old);
    int r = store_file(path, val, n);
    if (r < 0 || !pool)
        return r;
    char fpath[PATH_MAX], fbuf[64];
    snprintf(fpath, sizeof fpath, "%.*s/free_hugepages", (int)(base_name(path) - path - 1), path);
    if (read_file(fpath, fbuf, sizeof fbuf) >= 0) {
        long long nfree = atoll(fbuf) + atoll(val) - atoll(old);
        int len = snprintf(fbuf, sizeof fbuf, "%lld\n", nfree < 0 ? 0 : nfree);
        store_file(fpath, fbuf, (size_t)len);
    }
    return 0;
}

/* ---- faults and the log ---- */

enum fault { F_NONE, F_EBUSY, F_ENODEV, F_EIO, F_HANG, F_VANISH };
static const char *const fault_names[] = { "", "ebusy", "enodev", "eio", "hang", "vanish" };

/* The first line of fake/faults matching (bdf, op); a "once" line is
 * removed as it fires.  Format: "BDF OP FAULT [once]", BDF may be "*",
 * '#' starts a comment. */
static enum fault take_fault(const char *bdf, enum op op) {
    char path[PATH_MAX], buf[16384];
    fake_path(path, sizeof path, "faults");
    ssize_t len = read_file(path, buf, sizeof buf);
    if (len <= 0)
        return F_NONE;
    for (char *line = buf; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) + 1 : strlen(line);
        char copy[LINE_MAX_], w_bdf[64], w_op[32], w_fault[32], w_once[32];
        snprintf(copy, sizeof copy, "%.*s", (int)n, line);
        copy[strcspn(copy, "#")] = '\0';
        int k = sscanf(copy, "%63s %31s %31s %31s", w_bdf, w_op, w_fault, w_once);
        if (k >= 3 && (strcmp(w_bdf, "*") == 0 || strcmp(w_bdf, bdf) == 0) && strcmp(w_op, op_names[op]) == 0) {
            enum fault f = F_NONE;
            for (size_t i = 1; i < sizeof fault_names / sizeof *fault_names; i++)
                if (strcmp(w_fault, fault_names[i]) == 0)
                    f = (enum fault)i;
            if (f != F_NONE) {
                if (k == 4 && strcmp(w_once, "once") == 0) {
                    memmove(line, line + n, strlen(line + n) + 1);
                    replace_file(path, buf, strlen(buf));
                }
                return f;
            }
        }
        line += n;
    }
    return F_NONE;
}

/* Bytes as one log field: printable ASCII as is, the rest escaped, ""
 * for nothing. */
static void escape(const char *s, size_t n, char *out, size_t size) {
    size_t o = 0;
    if (n == 0)
        snprintf(out, size, "\"\"");
    for (size_t i = 0; i < n && o + 5 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            o += (size_t)snprintf(out + o, size - o, "\\n");
        else if (c == '\\')
            o += (size_t)snprintf(out + o, size - o, "\\\\");
        else if (c > ' ' && c < 0x7f)
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, size - o, "\\x%02x", c);
    }
    if (n)
        out[o] = '\0';
}

static void log_line(const char *a, const char *b, const char *c, const char *d) {
    char path[PATH_MAX], line[4 * LINE_MAX_];
    fake_path(path, sizeof path, "log");
    int n = snprintf(line, sizeof line, "%s %s %s %s\n", a, b, c, d);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line) {
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';
    }
    int fd = sys_open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0)
        return;
    write_all(fd, line, (size_t)n);    /* one write: O_APPEND keeps lines whole */
    sys_close(fd);
}

static const char *errno_name(int e) {
    switch (e) {
    case 0: return "ok";
    case EBUSY: return "EBUSY";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case E2BIG: return "E2BIG";
    default: return "EOTHER";
    }
}

static void lock_all(void) {
    pthread_mutex_lock(&mutex);
    char path[PATH_MAX];
    fake_path(path, sizeof path, "lock");
    lock_fd = sys_open(path, O_RDWR | O_CREAT, 0644);
    if (lock_fd >= 0)
        while (flock(lock_fd, LOCK_EX) < 0 && errno == EINTR)
            ;
}

static void unlock_all(void) {
    sys_close(lock_fd);     /* drops the flock */
    lock_fd = -1;
    pthread_mutex_unlock(&mutex);
}

static void wait_release(void) {
    char path[PATH_MAX];
    fake_path(path, sizeof path, "release");
    struct timespec ts = { 0, 5 * 1000 * 1000 };
    while (access(path, F_OK) < 0)
        nanosleep(&ts, NULL);
}

/* Classifies path (below sys/), applies the store, logs it.  Returns n or
 * -errno.  Probe logs the driver bound afterwards ("-" for none). */
static ssize_t fake_store(const char *path, const char *buf, size_t n) {
    if (n > STORE_MAX)
        return -E2BIG;
    char val[STORE_MAX + 1];
    memcpy(val, buf, n);
    val[n] = '\0';

    const char *rel = path + sysdir_len + 1;
    enum op op = OP_WRITE;
    char drv[NAME_MAX + 1] = "", bdf[STORE_MAX + 1] = "", devdir[PATH_MAX] = "";
    const char *base = base_name(rel);
    if (strcmp(rel, "bus/pci/drivers_probe") == 0) {
        op = OP_PROBE;
    } else if (strncmp(rel, "bus/pci/drivers/", 16) == 0 && base - rel > 16 &&
               (strcmp(base, "bind") == 0 || strcmp(base, "unbind") == 0)) {
        op = strcmp(base, "bind") == 0 ? OP_BIND : OP_UNBIND;
        snprintf(drv, sizeof drv, "%.*s", (int)(base - rel - 17), rel + 16);
        if (strchr(drv, '/'))
            op = OP_WRITE;
    } else if (strncmp(rel, "devices/", 8) == 0 &&
               (strcmp(base, "driver_override") == 0 || strcmp(base, "uevent") == 0)) {
        op = strcmp(base, "uevent") == 0 ? OP_UEVENT : OP_OVERRIDE;
        snprintf(devdir, sizeof devdir, "%.*s", (int)(base - path - 1), path);
        snprintf(bdf, sizeof bdf, "%s", base_name(devdir));
    }
    if (op == OP_PROBE || op == OP_BIND || op == OP_UNBIND) {
        /* sysfs_streq(): one trailing newline does not count. */
        size_t len = n;
        if (len && val[len - 1] == '\n')
            len--;
        snprintf(bdf, sizeof bdf, "%.*s", (int)len, val);
    }

    busy = true;
    lock_all();
    char f_bdf[LINE_MAX_], f_val[LINE_MAX_], result_drv[NAME_MAX + 1] = "-";
    escape(bdf, strlen(bdf), f_bdf, sizeof f_bdf);
    int r = 0;
    /* sysfs_kf_write() never calls a store for zero bytes: logged, no
     * effect (an empty write does not clear driver_override). */
    enum fault f = op <= OP_PROBE && n > 0 ? take_fault(bdf, op) : F_NONE;
    if (f != F_NONE)
        log_line("fault", f_bdf, op_names[op], fault_names[f]);
    switch (f) {
    case F_EBUSY: r = -EBUSY; break;
    case F_ENODEV: r = -ENODEV; break;
    case F_EIO: r = -EIO; break;
    case F_VANISH: vanish(bdf); r = -ENODEV; break;
    case F_HANG:
        /* Block like a stuck remove(): other writers go on meanwhile. */
        unlock_all();
        wait_release();
        lock_all();
        __attribute__((fallthrough));
    case F_NONE:
        if (n == 0)
            break;
        switch (op) {
        case OP_OVERRIDE: r = store_override(devdir, val); break;
        case OP_UNBIND: r = store_unbind(drv, bdf); break;
        case OP_BIND: r = store_bind(drv, bdf); break;
        case OP_PROBE: r = store_probe(bdf, result_drv); break;
        case OP_UEVENT: r = 0; break;
        case OP_WRITE: r = store_generic(path, val, n); break;
        }
        break;
    }

    switch (op) {
    case OP_OVERRIDE:
    case OP_UEVENT:
        escape(val, n, f_val, sizeof f_val);
        log_line(op_names[op], f_bdf, f_val, errno_name(-r));
        break;
    case OP_UNBIND:
    case OP_BIND:
        log_line(op_names[op], f_bdf, drv, errno_name(-r));
        break;
    case OP_PROBE:
        log_line(op_names[op], f_bdf, r < 0 ? "-" : result_drv, errno_name(-r));
        break;
    case OP_WRITE: {
        char f_rel[LINE_MAX_];
        escape(rel, strlen(rel), f_rel, sizeof f_rel);
        escape(val, n, f_val, sizeof f_val);
        log_line(op_names[op], f_rel, f_val, errno_name(-r));
        break;
    }
    }
    unlock_all();
    busy = false;
    return r < 0 ? r : (ssize_t)n;
}

static ssize_t result(ssize_t r) {
    if (r < 0) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

/* ---- the interposed entry points ---- */

EXPORT ssize_t write(int fd, const void *buf, size_t n) {
    char path[PATH_MAX];
    if (fd_in_sys(fd, path, sizeof path))
        return result(fake_store(path, buf, n));
    if (real_write)
        return real_write(fd, buf, n);
    return sys_write(fd, buf, n);
}

/* sysfs ignores the offset of a store (sysfs_kf_write()). */
EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    char path[PATH_MAX];
    if (fd_in_sys(fd, path, sizeof path))
        return result(fake_store(path, buf, n));
    if (real_pwrite)
        return real_pwrite(fd, buf, n, off);
    return syscall(SYS_pwrite64, fd, buf, n, off);
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    char path[PATH_MAX];
    if (fd_in_sys(fd, path, sizeof path))
        return result(fake_store(path, buf, n));
    if (real_pwrite64)
        return real_pwrite64(fd, buf, n, off);
    return syscall(SYS_pwrite64, fd, buf, n, off);
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    char path[PATH_MAX];
    if (fd_in_sys(fd, path, sizeof path)) {
        char buf[STORE_MAX + 1];
        size_t n = 0;
        for (int i = 0; i < cnt; i++) {
            if (iov[i].iov_len > STORE_MAX - n)
                return result(-E2BIG);
            memcpy(buf + n, iov[i].iov_base, iov[i].iov_len);
            n += iov[i].iov_len;
        }
        return result(fake_store(path, buf, n));
    }
    if (real_writev)
        return real_writev(fd, iov, cnt);
    return syscall(SYS_writev, fd, iov, cnt);
}
