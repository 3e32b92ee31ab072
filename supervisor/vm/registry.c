/* VM registry (see registry.h). */
#include "supervisor/vm/registry.h"
#include "supervisor/vm/vm-record.h"
#include "supervisor/vm/lifecycle.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "qv-build.h"
#include "util.h"
#include "host/firmware.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/nics.h"
#include "supervisor/vm/seed.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct sv_registry {
    sv_config *const *config; /* the daemon's current config (swapped by a reload) */
    sv_vm *vms;
};

static const char *const state_names[] = {
    [SV_VM_CREATING] = "creating", [SV_VM_STOPPED] = "stopped",   [SV_VM_STARTING] = "starting",
    [SV_VM_RUNNING] = "running",   [SV_VM_PAUSED] = "paused",     [SV_VM_STOPPING] = "stopping",
    [SV_VM_CRASHED] = "crashed",   [SV_VM_REMOVING] = "removing",
};

const char *sv_vm_state_name(sv_vm_state s) {
    return (unsigned)s < QV_ARRAY_SIZE(state_names) ? state_names[s] : "unknown";
}

static int state_from_name(const char *n) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(state_names); i++)
        if (n && strcmp(state_names[i], n) == 0)
            return (int)i;
    return -1;
}

void sv_crash_point(const char *point) {
#if QV_TEST_HOOKS
    const char *want = getenv("QVISOR_TEST_CRASH_AT");
    if (want && strcmp(want, point) == 0) {
        log_warning("test hook: crashing at %s", point);
        raise(SIGKILL);
    }
#else
    (void)point;
#endif
}

static void vm_free(sv_vm *vm) {
    if (!vm)
        return;
    sv_vmspec_free(vm->spec);
    free(vm->dir);
    free(vm->last_exit);
    free(vm->kernel_source);
    free(vm->initrd_source);
    free(vm->ip);
    json_decref(vm->addresses);
    free(vm);
}

const char *sv_vm_name(const sv_vm *vm) {
    return vm->name;
}

sv_vm_state sv_vm_state_of(const sv_vm *vm) {
    return vm->state;
}

const sv_vmspec *sv_vm_spec(const sv_vm *vm) {
    return vm->spec;
}

int sv_vm_path(const sv_vm *vm, const char *file, char *buf, size_t len) {
    return sv_layout_instance_file(vm->dir, file, buf, len);
}

uint64_t sv_vm_disk_size(const sv_vm *vm) {
    return vm->disk_size;
}

int sv_vm_pid(const sv_vm *vm) {
    return sv_vm_state_has_qemu(vm->state) ? vm->run.pid : 0;
}

int sv_vm_numa_node(const sv_vm *vm) {
    return sv_vm_state_has_qemu(vm->state) ? vm->run.numa_node : -1;
}

sv_vm *sv_registry_next(const sv_vm *vm) {
    return vm->next;
}

void sv_vm_set_last_exit(sv_vm *vm, const char *why) {
    free(vm->last_exit);
    vm->last_exit = why ? strdup(why) : NULL;
}

static sv_vm *vm_new(const sv_registry *r, sv_vmspec *spec) {
    sv_vm *vm = calloc(1, sizeof *vm);
    if (!vm)
        return NULL;
    snprintf(vm->name, sizeof vm->name, "%s", spec->name);
    vm->spec = spec;
    vm->run.numa_node = -1;
    char dir[PATH_MAX];
    if (sv_layout_instance_dir(*r->config, vm->name, dir, sizeof dir) < 0 || !(vm->dir = strdup(dir))) {
        vm->dir = NULL;
        vm->spec = NULL;
        vm_free(vm);
        return NULL;
    }
    return vm;
}

static void link_vm(sv_registry *r, sv_vm *vm) {
    /* keep the list sorted by name: listings come out in order */
    sv_vm **p = &r->vms;
    while (*p && strcmp((*p)->name, vm->name) < 0)
        p = &(*p)->next;
    vm->next = *p;
    *p = vm;
}

static void unlink_vm(sv_registry *r, sv_vm *vm) {
    for (sv_vm **p = &r->vms; *p; p = &(*p)->next)
        if (*p == vm) {
            *p = vm->next;
            return;
        }
}

sv_vm *sv_registry_find(sv_registry *r, const char *name) {
    for (sv_vm *vm = r->vms; vm; vm = vm->next)
        if (strcmp(vm->name, name) == 0)
            return vm;
    return NULL;
}

sv_vm *sv_registry_first(sv_registry *r) {
    return r->vms;
}

char *sv_registry_users_of_image(sv_registry *r, const char *image) {
    char *out = NULL;
    size_t len = 0;
    for (sv_vm *vm = r->vms; vm; vm = vm->next) {
        if (strcmp(vm->spec->image, image) != 0)
            continue;
        char *grown = realloc(out, len + strlen(vm->name) + 3);
        if (!grown)
            break;
        out = grown;
        len += (size_t)sprintf(out + len, "%s%s", len ? ", " : "", vm->name);
    }
    return out;
}

/* ---- persistence ----------------------------------------------------------- */

static int write_json(const char *dir, const char *file, json_t *j, qv_error *err);

/* state.json of vm, as if it were in `state`. */
static json_t *state_json_as(const sv_vm *vm, sv_vm_state state) {
    const sv_vm_run *run = &vm->run;
    json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:s?, s:{s:i, s:I, s:I, s:i, s:b, s:I, s:I, s:i}}", "state",
                     sv_vm_state_name(state), "created_at", (json_int_t)vm->created_at, "disk_size",
                     (json_int_t)vm->disk_size, "base_size", (json_int_t)vm->base_size, "base_mtime_ns",
                     (json_int_t)vm->base_mtime_ns, "last_exit", vm->last_exit, "run", "pid", run->pid,
                     "start_ticks", (json_int_t)run->start_ticks, "started_at", (json_int_t)run->started_at,
                     "ssh_port", run->ssh_port, "stop_force", run->stop_force, "stop_timeout_ms",
                     (json_int_t)run->stop_timeout_ms, "restarts", (json_int_t)run->restarts, "numa_node",
                     run->numa_node);
    if (j && vm->disk_ino) {
        json_object_set_new(j, "disk_dev", json_integer((json_int_t)vm->disk_dev));
        json_object_set_new(j, "disk_ino", json_integer((json_int_t)vm->disk_ino));
    }
    if (j && vm->kernel_source)
        json_object_set_new(j, "kernel_source", json_string(vm->kernel_source));
    if (j && vm->initrd_source)
        json_object_set_new(j, "initrd_source", json_string(vm->initrd_source));
    return j;
}

static json_t *state_json(const sv_vm *vm) {
    return state_json_as(vm, vm->state);
}

int sv_registry_save(sv_registry *r, sv_vm *vm, qv_error *err) {
    (void)r;
    json_t *st = state_json(vm);
    int rc = write_json(vm->dir, SV_VM_STATE_FILE, st, err);
    json_decref(st);
    return rc;
}

/* Files of an instance directory are reached through the directory's fd,
 * opened without following a symlink in its place (issue 15: someone who
 * can write the instances directory must not redirect qvisor's writes). */
static int write_json(const char *dir, const char *file, json_t *j, qv_error *err) {
    _cleanup_free_ char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (!text)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t len = strlen(text);
    text[len] = '\n'; /* room of the NUL; written length includes it */
    _cleanup_close_ int dfd = qv_open_dir_nofollow(dir);
    int r = dfd < 0 ? dfd : qv_write_file_atomic_at(dfd, file, text, len + 1, 0640);
    if (r < 0)
        return qv_error_set(err, -r, "cannot write %s/%s: %s", dir, file, strerror(-r));
    return 0;
}

/* spec.json holds user-data and network-config (each bounded by the request
 * size); anything bigger was not written by qvisor */
#define INSTANCE_JSON_MAX (128u << 20)

static json_t *read_json(const char *dir, const char *file, qv_error *err) {
    _cleanup_close_ int dfd = qv_open_dir_nofollow(dir);
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = dfd < 0 ? dfd : qv_read_regular_file_at(dfd, file, INSTANCE_JSON_MAX, &text, &len);
    if (r < 0) {
        qv_error_set(err, EBADMSG, "%s/%s: %s", dir, file,
                     r == -EINVAL ? "not a regular file" : r == -EFBIG ? "too large" : strerror(-r));
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        qv_error_set(err, EBADMSG, "%s/%s: %s", dir, file, je.text);
    return j;
}

static int load_vm(sv_registry *r, const char *name, qv_error *err) {
    char dir[PATH_MAX];
    if (sv_layout_instance_dir(*r->config, name, dir, sizeof dir) < 0)
        return qv_error_set(err, ENAMETOOLONG, "instance directory path too long");
    json_t *specj = read_json(dir, SV_VM_SPEC_FILE, err);
    if (!specj)
        return -EBADMSG;
    sv_vmspec *spec = NULL;
    int rc = sv_vmspec_from_json(specj, &spec, err);
    json_decref(specj);
    if (rc < 0)
        return rc;
    if (!spec->name || strcmp(spec->name, name) != 0) {
        sv_vmspec_free(spec);
        return qv_error_set(err, EBADMSG, "%s/spec.json names another VM", dir);
    }
    sv_vm *vm = vm_new(r, spec);
    if (!vm) {
        sv_vmspec_free(spec);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    json_t *st = read_json(dir, SV_VM_STATE_FILE, err);
    if (!st) {
        vm_free(vm);
        return -EBADMSG;
    }
    int s = state_from_name(json_string_value(json_object_get(st, "state")));
    vm->state = s < 0 ? SV_VM_STOPPED : (sv_vm_state)s;
    vm->created_at = json_integer_value(json_object_get(st, "created_at"));
    vm->disk_size = (uint64_t)json_integer_value(json_object_get(st, "disk_size"));
    vm->base_size = (uint64_t)json_integer_value(json_object_get(st, "base_size"));
    vm->base_mtime_ns = json_integer_value(json_object_get(st, "base_mtime_ns"));
    vm->disk_dev = (uint64_t)json_integer_value(json_object_get(st, "disk_dev"));
    vm->disk_ino = (uint64_t)json_integer_value(json_object_get(st, "disk_ino"));
    const char *le = json_string_value(json_object_get(st, "last_exit"));
    vm->last_exit = le ? strdup(le) : NULL;
    const char *ks = json_string_value(json_object_get(st, "kernel_source"));
    vm->kernel_source = ks ? strdup(ks) : NULL;
    const char *is = json_string_value(json_object_get(st, "initrd_source"));
    vm->initrd_source = is ? strdup(is) : NULL;
    json_t *run = json_object_get(st, "run");
    vm->run.pid = (int)json_integer_value(json_object_get(run, "pid"));
    vm->run.start_ticks = (uint64_t)json_integer_value(json_object_get(run, "start_ticks"));
    vm->run.started_at = json_integer_value(json_object_get(run, "started_at"));
    vm->run.ssh_port = (int)json_integer_value(json_object_get(run, "ssh_port"));
    vm->run.stop_force = json_is_true(json_object_get(run, "stop_force"));
    vm->run.stop_timeout_ms = (uint64_t)json_integer_value(json_object_get(run, "stop_timeout_ms"));
    vm->run.restarts = (uint64_t)json_integer_value(json_object_get(run, "restarts"));
    json_t *node = json_object_get(run, "numa_node");
    vm->run.numa_node = json_is_integer(node) ? (int)json_integer_value(node) : -1;
    json_decref(st);
    link_vm(r, vm);
    return 0;
}

/* A disk in another storage pool than the instances directory is
 * POOL/NAME.qcow2, and INSTANCE_DIR/disk.qcow2 is a symlink to it.  This
 * removes the pool's file of the instance directory tmpfd (a leftover of an
 * interrupted create or remove, or one being removed) -- but only what
 * qvisor can prove it made: the link must name exactly POOL/NAME.qcow2 of a
 * configured pool, and the file there must be a regular file of ours with
 * one link (qv_unlink_own_file_at), the very file create recorded when
 * `want` is given.  Anybody who can write the instances directory can plant
 * such a directory with a link to anywhere: the link's target is never
 * opened nor unlinked by its own name. */
static void remove_pool_disk(const sv_config *c, int tmpfd, const char *name, const struct stat *want) {
    char target[PATH_MAX];
    ssize_t n = readlinkat(tmpfd, SV_VM_DISK_FILE, target, sizeof target - 1);
    if (n <= 0)
        return; /* no link: the disk, if any, is in the directory itself */
    target[n] = '\0';
    char file[QV_NAME_MAX + 16];
    snprintf(file, sizeof file, "%s.qcow2", name);
    for (size_t i = 0; c->storage_pools && c->storage_pools[i]; i++) {
        const sv_storage_pool *pool = c->storage_pools[i];
        size_t plen = strlen(pool->path);
        if (strcmp(pool->path, c->instances_dir) == 0 || strncmp(target, pool->path, plen) != 0 ||
            target[plen] != '/' || strcmp(target + plen + 1, file) != 0)
            continue;
        _cleanup_close_ int pfd = open(pool->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int r = pfd < 0 ? -errno : qv_unlink_own_file_at(pfd, file, want);
        if (r == -EPERM)
            log_warning("%s is not the disk qvisor made for VM '%s': left alone", target, name);
        else if (r < 0 && r != -ENOENT)
            log_warning("cannot remove %s: %s", target, strerror(-r));
        return;
    }
    log_warning("the disk link of VM '%s' names %s, not its file in a storage pool: left alone", name, target);
}

/* Removes INSTANCES_DIR/ENTRY, the temp directory of VM `name`, with its pool
 * disk (see remove_pool_disk).  Never through a symlink: ENTRY itself a link
 * is only unlinked. */
static int remove_temp_dir(const sv_config *c, int instfd, const char *entry, const char *name,
                           const struct stat *want) {
    int tmpfd = qv_open_dir_at(instfd, entry);
    if (tmpfd >= 0) {
        remove_pool_disk(c, tmpfd, name, want);
        close(tmpfd);
    }
    return qv_rm_rf_at(instfd, entry);
}

int sv_registry_load(sv_config *const *config, sv_registry **ret, int *cleaned, qv_error *err) {
    const sv_config *c = *config;
    sv_registry *r = calloc(1, sizeof *r);
    if (!r)
        return qv_error_set(err, ENOMEM, "out of memory");
    r->config = config;
    int n_cleaned = 0;
    _cleanup_closedir_ DIR *d = opendir(c->instances_dir);
    if (!d && errno != ENOENT) {
        int e = errno;
        sv_registry_free(r);
        return qv_error_set(err, e, "cannot read %s: %s", c->instances_dir, strerror(e));
    }
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *n = e->d_name;
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
            continue;
        char vm_name[QV_NAME_MAX + 1];
        bool creating;
        if (sv_layout_leftover_name(n, vm_name, &creating)) {
            log_info("removing %s/%s left by an interrupted %s", c->instances_dir, n, creating ? "create" : "remove");
            /* a live VM of that name owns POOL/NAME.qcow2: an interrupted
             * create or remove never leaves both behind */
            struct stat st;
            if (fstatat(dirfd(d), vm_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                log_warning("%s/%s is beside a VM of that name: its pool disk is left alone", c->instances_dir, n);
                qv_rm_rf_at(dirfd(d), n);
            } else {
                remove_temp_dir(c, dirfd(d), n, vm_name, NULL);
            }
            n_cleaned++;
            continue;
        }
        if (!qv_name_valid(n))
            continue;
        qv_error e2 = {0};
        if (load_vm(r, n, &e2) < 0)
            log_error("VM %s is not loaded: %s", n, e2.msg);
    }
    if (cleaned)
        *cleaned = n_cleaned;
    *ret = r;
    return 0;
}

void sv_registry_free(sv_registry *r) {
    if (!r)
        return;
    while (r->vms) {
        sv_vm *vm = r->vms;
        r->vms = vm->next;
        vm_free(vm);
    }
    free(r);
}

/* ---- create ------------------------------------------------------------------ */

typedef struct create_job {
    uv_work_t work;
    sv_registry *registry;
    sv_vm *vm;
    int kernel_fd, initrd_fd; /* the client's files to copy, -1 for none */
    sv_config *config; /* copy for the worker thread */
    sv_registry_done_fn done;
    void *userdata;
    int status;
    qv_error err;
} create_job;

/* Copies the client's file src (a boot file, at most max bytes: it was
 * checked, but the client may still write it) into dirfd as name, a new
 * file (O_EXCL|O_NOFOLLOW), mode 0640, synced. */
static int copy_boot_file(int src, int dirfd, const char *name, uint64_t max, qv_error *err) {
    _cleanup_close_ int out = qv_create_at(dirfd, name, O_WRONLY, 0640);
    if (out < 0)
        return qv_error_set(err, -out, "cannot create the VM's %s: %s", name, strerror(-out));
    static _Thread_local char buf[1 << 17];
    uint64_t total = 0;
    for (off_t off = 0;;) {
        ssize_t n = pread(src, buf, sizeof buf, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return qv_error_set(err, errno, "cannot read the %s: %s", name, strerror(errno));
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (total > max)
            return qv_error_set(err, EINVAL, "spec: %s: larger than %llu MiB", name, (unsigned long long)(max >> 20));
        int r = qv_write_all(out, buf, (size_t)n);
        if (r < 0)
            return qv_error_set(err, -r, "cannot write the VM's %s: %s", name, strerror(-r));
        off += n;
    }
    if (total == 0)
        return qv_error_set(err, EINVAL, "spec: %s: the file is empty", name);
    if (fsync(out) < 0)
        return qv_error_set(err, errno, "cannot write the VM's %s: %s", name, strerror(errno));
    return 0;
}

/* Worker thread: everything that touches the disk. */
static void create_work(uv_work_t *w) {
    create_job *job = w->data;
    sv_vm *vm = job->vm;
    const sv_config *c = job->config;
    qv_error *err = &job->err;
    char tmp[PATH_MAX], tmpname[QV_NAME_MAX + 16], base[PATH_MAX];
    int instfd = -1, tmpfd = -1, poolfd = -1, diskfd = -1;
    struct stat disk_st = {0};
    sv_layout_leftover(vm->name, true, tmpname, sizeof tmpname);
    sv_layout_instance_dir(c, tmpname, tmp, sizeof tmp);

    int r = sv_image_path(c, vm->spec->image, base, sizeof base, err);
    if (r < 0)
        goto fail;
    json_t *info = NULL;
    r = sv_image_info(c, vm->spec->image, &info, err);
    if (r < 0)
        goto fail;
    uint64_t base_size = (uint64_t)json_integer_value(json_object_get(info, "virtual_size"));
    json_decref(info);
    if (vm->spec->disk < base_size) {
        char want[32], have[32];
        qv_format_size(vm->spec->disk, want, sizeof want);
        qv_format_size(base_size, have, sizeof have);
        r = qv_error_set(err, EINVAL, "disk %s is smaller than image '%s' (%s); a disk cannot shrink below its image",
                         want, vm->spec->image, have);
        goto fail;
    }
    r = qv_mkdir_p(c->instances_dir, 0750);
    if (r >= 0 && (instfd = open(c->instances_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        r = -errno;
    if (r >= 0) {
        /* a stale temp directory of this name: a leftover, or planted */
        remove_temp_dir(c, instfd, tmpname, vm->name, NULL);
        r = mkdirat(instfd, tmpname, 0750) < 0 ? -errno : 0;
    }
    if (r >= 0 && (tmpfd = qv_open_dir_at(instfd, tmpname)) < 0)
        r = tmpfd;
    if (r >= 0 && fchmod(tmpfd, 0750) < 0)
        r = -errno;
    if (r < 0) {
        qv_error_set(err, r, "cannot create %s: %s", tmp, strerror(-r));
        goto fail_tmp;
    }
    /* a storage pool other than the instances directory holds the disk
     * itself; the instance directory links to it.  The file is made here,
     * O_EXCL|O_NOFOLLOW relative to the directory, and qemu-img writes that
     * very file through /proc/PID/fd/N: a name planted in the pool (a
     * symlink, dangling or not) is refused, never followed. */
    const sv_storage_pool *pool = sv_config_storage_pool(c, vm->spec->storage_pool ? vm->spec->storage_pool
                                                                                     : c->default_storage_pool);
    char pool_disk[PATH_MAX + 80] = "", file[QV_NAME_MAX + 16];
    snprintf(file, sizeof file, "%s.qcow2", vm->name);
    if (pool && strcmp(pool->path, c->instances_dir) != 0) {
        snprintf(pool_disk, sizeof pool_disk, "%s/%s", pool->path, file);
        if ((r = qv_mkdir_p(pool->path, 0750)) < 0) {
            qv_error_set(err, r, "cannot create storage pool directory %s: %s", pool->path, strerror(-r));
            goto fail_tmp;
        }
        if ((poolfd = open(pool->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            r = qv_error_set(err, errno, "cannot open storage pool directory %s: %s", pool->path, strerror(errno));
            goto fail_tmp;
        }
        diskfd = qv_create_at(poolfd, file, O_RDWR, 0600);
        if (diskfd == -EEXIST) {
            r = qv_error_set(err, EEXIST, "%s exists already in storage pool %s (not qvisor's: left alone)",
                             pool_disk, pool->name);
            goto fail_tmp;
        }
        if (diskfd >= 0 && symlinkat(pool_disk, tmpfd, SV_VM_DISK_FILE) < 0) {
            r = qv_error_set(err, errno, "cannot link %s/disk.qcow2: %s", tmp, strerror(errno));
            goto fail_tmp;
        }
    } else {
        diskfd = qv_create_at(tmpfd, SV_VM_DISK_FILE, O_RDWR, 0600);
    }
    if (diskfd < 0) {
        r = qv_error_set(err, -diskfd, "cannot create the disk of VM '%s': %s", vm->name, strerror(-diskfd));
        goto fail_tmp;
    }
    if (fstat(diskfd, &disk_st) < 0) {
        r = qv_error_set(err, errno, "cannot stat the disk of VM '%s': %s", vm->name, strerror(errno));
        goto fail_tmp;
    }
    char disk[64], size[32];
    if ((r = qv_fd_path(diskfd, disk, sizeof disk)) < 0) {
        qv_error_set(err, r, "cannot name the disk's fd");
        goto fail_tmp;
    }
    snprintf(size, sizeof size, "%llu", (unsigned long long)vm->spec->disk);
    const char *args[] = {"create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", disk, size, NULL};
    qv_run_result res;
    r = sv_qemu_img(c, args, NULL, NULL, &res, err);
    if (r < 0)
        goto fail_tmp;
    qv_run_result_free(&res);
    sv_crash_point("create-after-disk");
    /* the boot files, copied: a defined VM boots what it was created with */
    if (job->kernel_fd >= 0 && (r = copy_boot_file(job->kernel_fd, tmpfd, SV_VM_KERNEL_FILE, SV_KERNEL_MAX, err)) < 0)
        goto fail_tmp;
    if (job->initrd_fd >= 0 && (r = copy_boot_file(job->initrd_fd, tmpfd, SV_VM_INITRD_FILE, SV_INITRD_MAX, err)) < 0)
        goto fail_tmp;
    /* the SSH key and the cloud-init seed: a failure leaves nothing behind.
     * Written through /proc/PID/fd/N of the directory made above, so that a
     * name swapped in the instances directory meanwhile is not followed
     * (ssh-keygen, a child, reaches it the same way). */
    char at[64];
    if ((r = qv_fd_path(tmpfd, at, sizeof at)) < 0) {
        qv_error_set(err, -r, "cannot name the fd of %s", tmp);
        goto fail_tmp;
    }
    if (vm->spec->seed && vm->spec->ssh_generate && (r = sv_seed_ssh_keygen(vm->name, at, err)) < 0)
        goto fail_tmp;
    if ((r = sv_seed_prepare(vm->spec, c, at, NULL, err)) < 0)
        goto fail_tmp;
    /* UEFI: the VM's own variable store, from the template create chose;
     * the daemon's user owns it like the disk: QEMU opens both before
     * -runas drops its privileges */
    if (vm->spec->firmware != SV_FIRMWARE_BIOS) {
        char vars[PATH_MAX + 16];
        sv_layout_instance_file(at, SV_VM_VARS_FILE, vars, sizeof vars);
        if ((r = sv_fw_vars_copy(vm->spec->firmware_vars, vars, err)) < 0)
            goto fail_tmp;
    }

    r = sv_image_stamp(base, &vm->base_size, &vm->base_mtime_ns, err);
    if (r < 0)
        goto fail_tmp;
    vm->disk_size = vm->spec->disk;
    vm->disk_dev = (uint64_t)disk_st.st_dev;
    vm->disk_ino = (uint64_t)disk_st.st_ino;
    vm->created_at = (int64_t)time(NULL);
    /* on disk the VM is born in the state the table gives a finished create;
     * in memory it gets there on the loop (create_after) */
    sv_vm_state defined = SV_VM_STOPPED;
    sv_vm_next_state(SV_VM_CREATING, SV_EV_CREATED, &defined);
    json_t *specj = sv_vmspec_to_json(vm->spec);
    r = write_json(tmp, SV_VM_SPEC_FILE, specj, err);
    json_decref(specj);
    if (r < 0)
        goto fail_tmp;
    json_t *st = state_json_as(vm, defined);
    r = write_json(tmp, SV_VM_STATE_FILE, st, err);
    json_decref(st);
    if (r < 0)
        goto fail_tmp;
    sv_crash_point("create-before-rename");
    /* NOREPLACE: an empty directory planted under the name is not replaced */
    if (renameat2(instfd, tmpname, instfd, vm->name, RENAME_NOREPLACE) < 0) {
        r = qv_error_set(err, errno, "cannot move %s into place: %s", tmp, strerror(errno));
        goto fail_tmp;
    }
    fsync(instfd);
    job->status = 0;
    goto out;

fail_tmp:
    if (diskfd >= 0 && poolfd >= 0)
        qv_unlink_own_file_at(poolfd, file, &disk_st);
    if (instfd >= 0)
        qv_rm_rf_at(instfd, tmpname);
fail:
    job->status = r < 0 ? r : -EIO;
out:
    qv_closep(&diskfd);
    qv_closep(&poolfd);
    qv_closep(&tmpfd);
    qv_closep(&instfd);
    qv_closep(&job->kernel_fd);
    qv_closep(&job->initrd_fd);
}

static void create_after(uv_work_t *w, int status) {
    create_job *job = w->data;
    sv_vm *vm = job->vm;
    qv_closep(&job->kernel_fd); /* when the work never ran */
    qv_closep(&job->initrd_fd);
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, -status, "create was cancelled");
    if (job->status < 0) {
        unlink_vm(job->registry, vm);
        job->done(job->status, NULL, &job->err, job->userdata);
        vm_free(vm);
    } else {
        sv_vm_next_state(vm->state, SV_EV_CREATED, &vm->state);
        job->done(0, vm, NULL, job->userdata);
    }
    sv_config_free(job->config);
    free(job);
}

/* The spec names the instance directory's copies of the boot files from
 * now on, vm keeps where they came from. */
static int boot_files_to_copies(sv_vm *vm) {
    sv_vmspec *s = vm->spec;
    char *kernel = NULL, *initrd = NULL;
    if ((s->kernel && asprintf(&kernel, "%s/%s", vm->dir, SV_VM_KERNEL_FILE) < 0) ||
        (s->initrd && asprintf(&initrd, "%s/%s", vm->dir, SV_VM_INITRD_FILE) < 0)) {
        free(kernel);
        return -ENOMEM;
    }
    vm->kernel_source = s->kernel;
    vm->initrd_source = s->initrd;
    s->kernel = kernel;
    s->initrd = initrd;
    return 0;
}

/* Puts the client's names back in the spec (it is the caller's again). */
static void boot_files_to_sources(sv_vm *vm) {
    sv_vmspec *s = vm->spec;
    if (vm->kernel_source) {
        free(s->kernel);
        s->kernel = TAKE_PTR(vm->kernel_source);
    }
    if (vm->initrd_source) {
        free(s->initrd);
        s->initrd = TAKE_PTR(vm->initrd_source);
    }
}

int sv_registry_create(sv_registry *r, uv_loop_t *loop, sv_vmspec *spec, int kernel_fd, int initrd_fd,
                       sv_registry_done_fn done, void *userdata, qv_error *err) {
    if (sv_registry_find(r, spec->name))
        return qv_error_set(err, EEXIST, "a VM named '%s' exists already", spec->name);
    if (!spec->kernel != (kernel_fd < 0) || !spec->initrd != (initrd_fd < 0))
        return qv_error_set(err, EINVAL, "spec: kernel and initrd go with their files");
    char base[PATH_MAX];
    int rc = sv_image_path(*r->config, spec->image, base, sizeof base, err);
    if (rc < 0)
        return rc;
    if (access(base, F_OK) < 0)
        return qv_error_set(err, ENOENT, "no image '%s' (see `qvisor image list`)", spec->image);
    create_job *job = calloc(1, sizeof *job);
    sv_vm *vm = job ? vm_new(r, spec) : NULL;
    if (!vm || !(job->config = sv_config_ref(*r->config)) || boot_files_to_copies(vm) < 0) {
        if (vm)
            vm->spec = NULL;
        vm_free(vm);
        if (job)
            sv_config_free(job->config);
        free(job);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    vm->state = SV_VM_CREATING;
    link_vm(r, vm);
    job->registry = r;
    job->vm = vm;
    job->done = done;
    job->userdata = userdata;
    job->work.data = job;
    job->kernel_fd = kernel_fd;
    job->initrd_fd = initrd_fd;
    rc = uv_queue_work(loop, &job->work, create_work, create_after);
    if (rc < 0) {
        unlink_vm(r, vm);
        boot_files_to_sources(vm);
        vm->spec = NULL; /* still the caller's */
        vm_free(vm);
        sv_config_free(job->config);
        free(job);
        return qv_error_set(err, -rc, "cannot queue the create: %s", uv_strerror(rc));
    }
    return 0;
}

/* ---- remove ----------------------------------------------------------------- */

int sv_registry_remove(sv_registry *r, const char *name, qv_error *err) {
    sv_vm *vm = sv_registry_find(r, name);
    if (!vm)
        return qv_error_set(err, ENOENT, "no VM named '%s'", name);
    sv_vm_state removing;
    if (sv_vm_next_state(vm->state, SV_EV_REMOVE, &removing) != 0)
        return qv_error_set(err, EBUSY, "VM '%s' is %s; stop it first", name, sv_vm_state_name(vm->state));
    const sv_config *c = *r->config;
    char tmpname[QV_NAME_MAX + 16];
    sv_layout_leftover(name, false, tmpname, sizeof tmpname);
    _cleanup_close_ int instfd = open(c->instances_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (instfd < 0)
        return qv_error_set(err, errno, "cannot open %s: %s", c->instances_dir, strerror(errno));
    qv_rm_rf_at(instfd, tmpname); /* a stale one: its pool disk, if any, is not this VM's */
    if (renameat(instfd, name, instfd, tmpname) < 0 && errno != ENOENT)
        return qv_error_set(err, errno, "cannot remove %s: %s", vm->dir, strerror(errno));
    sv_crash_point("remove-after-rename");
    vm->state = removing; /* the rename was the point of no return */
    struct stat want = {.st_dev = (dev_t)vm->disk_dev, .st_ino = (ino_t)vm->disk_ino};
    int rc = remove_temp_dir(c, instfd, tmpname, name, vm->disk_ino ? &want : NULL);
    if (rc < 0)
        log_warning("could not remove all of %s/%s: %s (cleaned at the next start)", c->instances_dir, tmpname,
                    strerror(-rc));
    unlink_vm(r, vm);
    vm_free(vm);
    return 0;
}

/* ---- views ------------------------------------------------------------------- */

bool sv_vm_state_has_qemu(sv_vm_state s) {
    return s == SV_VM_STARTING || s == SV_VM_RUNNING || s == SV_VM_PAUSED || s == SV_VM_STOPPING;
}

static bool has_qemu(const sv_vm *vm) {
    return vm->run.pid > 0 && sv_vm_state_has_qemu(vm->state);
}

json_t *sv_vm_summary(const sv_vm *vm) {
    char disk[PATH_MAX];
    snprintf(disk, sizeof disk, "%s/disk.qcow2", vm->dir);
    bool up = has_qemu(vm);
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:[]}", "name", vm->name, "state",
                          sv_vm_state_name(vm->state), "image", vm->spec->image, "cpus", (json_int_t)vm->spec->cpus,
                          "memory", (json_int_t)vm->spec->memory, "disk_size", (json_int_t)vm->disk_size, "disk",
                          disk, "gpus");
    json_t *gpus = json_object_get(j, "gpus");
    for (size_t g = 0; gpus && g < vm->spec->n_gpu_opts; g++)
        json_array_append_new(gpus, json_string(vm->spec->gpu_opts[g].bdf)); /* the address, without options */
    json_object_set_new(j, "pool", json_string(vm->spec->pool ? vm->spec->pool : "default"));
    json_object_set_new(j, "pid", up ? json_integer(vm->run.pid) : json_null());
    int64_t uptime = (int64_t)time(NULL) - vm->run.started_at;
    json_object_set_new(j, "uptime_s", up && vm->run.started_at ? json_integer(uptime < 0 ? 0 : uptime) : json_null());
    /* the agent's answer, else the static address of the first NIC that has one */
    char static_ip[ND_IPV4_CIDR_STRLEN];
    const char *ip = vm->ip ? vm->ip : sv_vm_static_ip(vm, static_ip) ? static_ip : NULL;
    json_object_set_new(j, "ip", up && ip ? json_string(ip) : json_null());
    json_object_set_new(j, "agent", json_string(!vm->spec->agent ? "off" : up && vm->agent ? vm->agent : "-"));
    json_object_set_new(j, "ssh_port", up && vm->run.ssh_port ? json_integer(vm->run.ssh_port) : json_null());
    return j;
}

bool sv_vm_static_ip(const sv_vm *vm, char ret[ND_IPV4_CIDR_STRLEN]) {
    nd_nic nics[ND_NICS_MAX];
    size_t n_nics = 0;
    if (sv_net_nics(vm->spec, nics, &n_nics, NULL) < 0)
        return false;
    for (size_t i = 0; i < n_nics; i++)
        if (nics[i].ip[0]) {
            snprintf(ret, ND_IPV4_CIDR_STRLEN, "%.*s", (int)strcspn(nics[i].ip, "/"), nics[i].ip);
            return true;
        }
    return false;
}

json_t *sv_vm_details(const sv_vm *vm) {
    json_t *j = sv_vm_summary(vm);
    char p[PATH_MAX];
    json_object_set_new(j, "spec", sv_vmspec_to_json(vm->spec));
    json_object_set_new(j, "dir", json_string(vm->dir));
    sv_layout_instance_file(vm->dir, SV_VM_QEMU_LOG, p, sizeof p);
    json_object_set_new(j, "qemu_log", json_string(p));
    sv_layout_instance_file(vm->dir, SV_VM_SERIAL_LOG, p, sizeof p);
    json_object_set_new(j, "serial_log", json_string(p));
    sv_layout_instance_file(vm->dir, SV_VM_VARS_FILE, p, sizeof p);
    json_object_set_new(j, "firmware_vars_store", vm->spec->firmware != SV_FIRMWARE_BIOS ? json_string(p) : json_null());
    sv_layout_instance_file(vm->dir, SV_VM_SSH_KEY, p, sizeof p);
    json_object_set_new(j, "ssh_key", vm->spec->seed && vm->spec->ssh_generate ? json_string(p) : json_null());
    sv_layout_instance_file(vm->dir, SV_VM_KNOWN_HOSTS, p, sizeof p);
    json_object_set_new(j, "known_hosts", json_string(p));
    json_object_set_new(j, "created_at", json_integer((json_int_t)vm->created_at));
    /* the boot files the spec names are copies in the instance directory */
    json_object_set_new(j, "kernel_source", vm->kernel_source ? json_string(vm->kernel_source) : json_null());
    json_object_set_new(j, "initrd_source", vm->initrd_source ? json_string(vm->initrd_source) : json_null());
    json_object_set_new(j, "last_exit", vm->last_exit ? json_string(vm->last_exit) : json_null());
    json_object_set_new(j, "addresses", has_qemu(vm) && vm->addresses ? json_incref(vm->addresses) : json_array());
    json_object_set_new(j, "restarts", json_integer((json_int_t)vm->run.restarts));
    json_t *nics = json_array();
    nd_nic nic[ND_NICS_MAX];
    size_t n = 0;
    if (sv_net_nics(vm->spec, nic, &n, NULL) < 0)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        char tap[IFNAMSIZ] = "";
        if (nic[i].mode != ND_MODE_USER)
            nd_tap_name(vm->name, (unsigned)i, tap);
        json_t *row = json_pack("{s:I, s:s, s:s, s:s?, s:s?, s:s?, s:s?}", "nic", (json_int_t)i, "mode",
                                nd_mode_name(nic[i].mode), "mac", nic[i].mac, "ip", nic[i].ip[0] ? nic[i].ip : NULL,
                                "bridge", nic[i].bridge[0] ? nic[i].bridge : NULL, "gateway",
                                nic[i].gw[0] ? nic[i].gw : NULL, "tap", tap[0] ? tap : NULL);
        if (nic[i].vlan)
            json_object_set_new(row, "vlan", json_integer(nic[i].vlan));
        json_array_append_new(nics, row);
    }
    json_object_set_new(j, "nics", nics);
    json_object_set_new(j, "started_at", has_qemu(vm) ? json_integer(vm->run.started_at) : json_null());
    return j;
}
