/* The registry (see registry.h): the VMs in memory, their accessors, the scan
 * of the instances directory at load, and vm rm. */
#include "supervisor/vm/registry-internal.h"
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

void reg__vm_free(sv_vm *vm) {
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

uint64_t sv_vm_disk_claim(const sv_vm *vm) {
    uint64_t now = vm->disk_size ? vm->disk_size : vm->spec->disk;
    return vm->disk_pending > now ? vm->disk_pending : now;
}

int sv_vm_pid(const sv_vm *vm) {
    return sv_vm_state_has_qemu(vm->state) ? vm->run.pid : 0;
}

bool sv_vm_agent_up(const sv_vm *vm) {
    return sv_vm_state_has_qemu(vm->state) && vm->agent && strcmp(vm->agent, "ok") == 0;
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

sv_vm *reg__vm_new(const sv_registry *r, sv_vmspec *spec) {
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
        reg__vm_free(vm);
        return NULL;
    }
    return vm;
}

void reg__link_vm(sv_registry *r, sv_vm *vm) {
    /* keep the list sorted by name: listings come out in order */
    sv_vm **p = &r->vms;
    while (*p && strcmp((*p)->name, vm->name) < 0)
        p = &(*p)->next;
    vm->next = *p;
    *p = vm;
}

void reg__unlink_vm(sv_registry *r, sv_vm *vm) {
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

static int load_vm(sv_registry *r, const char *name, qv_error *err) {
    char dir[PATH_MAX];
    if (sv_layout_instance_dir(*r->config, name, dir, sizeof dir) < 0)
        return qv_error_set(err, ENAMETOOLONG, "instance directory path too long");
    json_t *specj = reg__read_json(dir, SV_VM_SPEC_FILE, err);
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
    sv_vm *vm = reg__vm_new(r, spec);
    if (!vm) {
        sv_vmspec_free(spec);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    json_t *st = reg__read_json(dir, SV_VM_STATE_FILE, err);
    if (!st) {
        reg__vm_free(vm);
        return -EBADMSG;
    }
    int s = sv_vm_state_from_name(json_string_value(json_object_get(st, "state")));
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
    char run_dir[PATH_MAX];
    if (sv_layout_run_path(*r->config, name, NULL, run_dir, sizeof run_dir) == 0 &&
        sv_vm_stop_mark_apply(run_dir, vm))
        log_info("VM %s: a stop was under way (%s); state.json did not say so yet", name,
                 vm->run.stop_force ? "forced" : "graceful");
    reg__link_vm(r, vm);
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
int reg__remove_temp_dir(const sv_config *c, int instfd, const char *entry, const char *name,
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
                reg__remove_temp_dir(c, dirfd(d), n, vm_name, NULL);
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
        reg__vm_free(vm);
    }
    free(r);
}

/* ---- remove ----------------------------------------------------------------- */

int reg__remove_begin(sv_registry *r, sv_vm *vm, reg_removal *ret, qv_error *err) {
    const sv_config *c = *r->config;
    *ret = (reg_removal){.instfd = -1};
    snprintf(ret->name, sizeof ret->name, "%s", vm->name);
    sv_layout_leftover(vm->name, false, ret->entry, sizeof ret->entry);
    ret->instfd = open(c->instances_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ret->instfd < 0)
        return qv_error_set(err, errno, "cannot open %s: %s", c->instances_dir, strerror(errno));
    qv_rm_rf_at(ret->instfd, ret->entry); /* a stale one: its pool disk, if any, is not this VM's */
    if (renameat(ret->instfd, vm->name, ret->instfd, ret->entry) < 0 && errno != ENOENT) {
        int e = errno;
        reg__remove_clear(ret);
        return qv_error_set(err, e, "cannot remove %s: %s", vm->dir, strerror(e));
    }
    sv_crash_point("remove-after-rename");
    ret->want = (struct stat){.st_dev = (dev_t)vm->disk_dev, .st_ino = (ino_t)vm->disk_ino};
    ret->has_want = vm->disk_ino != 0;
    ret->config = sv_config_ref(*r->config);
    return 0;
}

void reg__remove_files(reg_removal *rm) {
    int r = reg__remove_temp_dir(rm->config, rm->instfd, rm->entry, rm->name, rm->has_want ? &rm->want : NULL);
    if (r < 0)
        log_warning("could not remove all of %s/%s: %s (cleaned at the next start)", rm->config->instances_dir,
                    rm->entry, strerror(-r));
}

void reg__remove_clear(reg_removal *rm) {
    if (rm->instfd >= 0)
        close(rm->instfd);
    rm->instfd = -1;
    sv_config_free(rm->config);
    rm->config = NULL;
}

void reg__remove_end(sv_registry *r, sv_vm *vm) {
    reg__unlink_vm(r, vm);
    reg__vm_free(vm);
}



