/* vm create (see registry.h): the name reserved at once, the instance
 * directory made on a worker (disk, pool link, boot files, key pair, seed,
 * variable store) as .NAME.creating and renamed into place. */
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
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- create ------------------------------------------------------------------ */

typedef struct create_job {
    uv_work_t work;
    sv_registry *registry;
    sv_vm *vm;
    int kernel_fd, initrd_fd; /* the client's files to copy, -1 for none */
    reg_copy copy;            /* vm clone: the source's disk (copy.disk_fd -1 for a create) */
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

/* Whether the cancel descriptor of a clone became readable. */
static bool cancelled(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* A clone's seed must not have its source's instance-id, or cloud-init in
 * the copied disk would take the clone for the source and not run again.
 * Its host name and MACs differ from the source's, which the id covers; a
 * --hostname and a network_config of the user's can still make them equal:
 * refused (EINVAL), never booted as a twin. */
static int seed_differs(const char *src_dir, int tmpfd, qv_error *err) {
    _cleanup_free_ char *mine = NULL, *theirs = NULL;
    _cleanup_close_ int sfd = qv_open_dir_nofollow(src_dir);
    if (qv_read_file_at(tmpfd, SV_SEED_ID, 256, &mine, NULL) < 0 || sfd < 0 ||
        qv_read_file_at(sfd, SV_SEED_ID, 256, &theirs, NULL) < 0)
        return 0; /* no seed on one side: nothing to tell apart */
    if (strcmp(mine, theirs) == 0)
        return qv_error_set(err, EINVAL,
                            "the clone's cloud-init seed would be its source's (instance-id %.40s: same host name, "
                            "user-data and network-config); give it another --hostname",
                            mine);
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
        reg__remove_temp_dir(c, instfd, tmpname, vm->name, NULL);
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
    qv_run_result res;
    if (job->copy.disk_fd >= 0) {
        /* vm clone: an overlay on the same base with the clusters where the
         * source differs from it (docs/lifecycle.md, "Clone") */
        char src[64];
        const char *args[SV_QEMU_IMG_CONVERT_ARGS_MAX];
        if ((r = qv_fd_path(job->copy.disk_fd, src, sizeof src)) < 0) {
            qv_error_set(err, -r, "cannot name the source disk's fd");
            goto fail_tmp;
        }
        sv_qemu_img_convert_args(src, disk, base, args);
        r = sv_qemu_img_cancellable(c, args, job->copy.cancel_fd, job->copy.progress, job->copy.userdata, &res, err);
    } else {
        const char *args[] = {"create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", disk, size, NULL};
        r = sv_qemu_img(c, args, NULL, NULL, &res, err);
    }
    if (r < 0)
        goto fail_tmp;
    qv_run_result_free(&res);
    sv_crash_point(job->copy.disk_fd >= 0 ? "clone-after-disk" : "create-after-disk");
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
    if (job->copy.src_dir && (r = seed_differs(job->copy.src_dir, tmpfd, err)) < 0)
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
    r = reg__write_json(tmp, SV_VM_SPEC_FILE, specj, err);
    json_decref(specj);
    if (r < 0)
        goto fail_tmp;
    json_t *st = reg__state_json_as(vm, defined);
    r = reg__write_json(tmp, SV_VM_STATE_FILE, st, err);
    json_decref(st);
    if (r < 0)
        goto fail_tmp;
    sv_crash_point(job->copy.disk_fd >= 0 ? "clone-before-rename" : "create-before-rename");
    /* an interrupted clone (its client gone) is rolled back up to here */
    if (job->copy.cancel_fd >= 0 && cancelled(job->copy.cancel_fd)) {
        r = qv_error_set(err, ECANCELED, "the clone was interrupted");
        goto fail_tmp;
    }
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
        reg__unlink_vm(job->registry, vm);
        job->done(job->status, NULL, &job->err, job->userdata);
        reg__vm_free(vm);
    } else {
        job->done(0, vm, NULL, job->userdata); /* which calls sv_vm_created() */
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
    return reg__create(r, loop, spec, kernel_fd, initrd_fd, NULL, done, userdata, err);
}

int reg__create(sv_registry *r, uv_loop_t *loop, sv_vmspec *spec, int kernel_fd, int initrd_fd, const reg_copy *copy,
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
    sv_vm *vm = job ? reg__vm_new(r, spec) : NULL;
    if (!vm || !(job->config = sv_config_ref(*r->config)) || boot_files_to_copies(vm) < 0) {
        if (vm)
            vm->spec = NULL;
        reg__vm_free(vm);
        if (job)
            sv_config_free(job->config);
        free(job);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    vm->state = SV_VM_CREATING;
    reg__link_vm(r, vm);
    job->registry = r;
    job->vm = vm;
    job->done = done;
    job->userdata = userdata;
    job->work.data = job;
    job->kernel_fd = kernel_fd;
    job->initrd_fd = initrd_fd;
    job->copy = copy ? *copy : (reg_copy){.disk_fd = -1, .cancel_fd = -1};
    rc = uv_queue_work(loop, &job->work, create_work, create_after);
    if (rc < 0) {
        reg__unlink_vm(r, vm);
        boot_files_to_sources(vm);
        vm->spec = NULL; /* still the caller's */
        reg__vm_free(vm);
        sv_config_free(job->config);
        free(job);
        return qv_error_set(err, -rc, "cannot queue the create: %s", uv_strerror(rc));
    }
    return 0;
}
