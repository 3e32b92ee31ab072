/* vm clone and image create --from-vm on the engine's side: the copy of a
 * stopped (or crashed) VM's disk goes through the door as the event `copy`
 * (action `hold`: the VM is held until sv_vm_copy_end(), its state
 * unchanged), the disk is opened as the file create made, and a clone is
 * created like any VM (create.c) with its disk copied instead of made
 * empty.  docs/lifecycle.md, "Clone and image from a VM". */
#include "supervisor/vm/engine.h"
#include "supervisor/vm/registry-internal.h"

void vm__act_hold(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    (void)a;
    rt->copies++;
}

/* A start, a remove, a snapshot or a revert would change the disk being
 * read (a start is QEMU writing it); another copy only reads it too.  The
 * other way round, a snapshot operation in flight refuses a copy (the
 * cell's check, vm__check_snapshot). */
bool vm__held_refuses(const vmrt *rt, sv_vm_action act) {
    return rt->copies > 0 && (act == SV_ACT_PREPARE || act == SV_ACT_REMOVE || act == SV_ACT_SNAPSHOT ||
                              act == SV_ACT_REVERT || act == SV_ACT_LIVE_SNAPSHOT || act == SV_ACT_EDIT ||
                              act == SV_ACT_GROW);
}

int sv_vm_copy_begin(sv_vmctl *c, sv_vm *vm, qv_error *err) {
    return vm__request(c, vm, SV_EV_COPY, &(vm_event_arg){.err = err});
}

void sv_vm_copy_end(sv_vmctl *c, sv_vm *vm) {
    (void)c;
    vmrt *rt = vm->rt;
    if (rt && rt->copies > 0)
        rt->copies--;
}

int sv_vm_disk_open(const sv_vm *vm, int *ret_fd, qv_error *err) {
    _cleanup_close_ int dfd = qv_open_dir_nofollow(vm->dir);
    if (dfd < 0)
        return qv_error_set(err, -dfd, "cannot open %s: %s", vm->dir, strerror(-dfd));
    /* disk.qcow2, or the link to the VM's file in its storage pool */
    _cleanup_close_ int fd = openat(dfd, SV_VM_DISK_FILE, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return qv_error_set(err, errno, "cannot open the disk of VM '%s': %s", vm->name, strerror(errno));
    if (!S_ISREG(st.st_mode) ||
        (vm->disk_ino && ((uint64_t)st.st_dev != vm->disk_dev || (uint64_t)st.st_ino != vm->disk_ino)))
        return qv_error_set(err, EIO, "the disk of VM '%s' is not the file its create made: left alone", vm->name);
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/* The source's copies of its kernel and initrd (its instance directory's),
 * opened for the clone's create to copy in turn; the clone's spec names
 * them by what the source was given. */
static int open_boot_file(const sv_vm *src, const char *file, const char *source, char **spec_name, int *ret_fd,
                          qv_error *err) {
    if (!*spec_name)
        return 0;
    _cleanup_close_ int dfd = qv_open_dir_nofollow(src->dir);
    int fd = dfd < 0 ? dfd : openat(dfd, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return qv_error_set(err, errno, "cannot open the %s of VM '%s': %s", file, src->name, strerror(errno));
    char *label = source ? strdup(source) : NULL;
    if (source && !label) {
        close(fd);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    if (label) {
        free(*spec_name);
        *spec_name = label;
    }
    *ret_fd = fd;
    return 0;
}

int sv_registry_clone(sv_registry *r, uv_loop_t *loop, const sv_vm *src, sv_vmspec *spec, const sv_clone_io *io,
                      sv_registry_done_fn done, void *userdata, qv_error *err) {
    if (strcmp(src->spec->image, spec->image) != 0)
        return qv_error_set(err, EINVAL, "a clone is on its source's base image '%s'", src->spec->image);
    int kernel_fd = -1, initrd_fd = -1;
    int rc = open_boot_file(src, SV_VM_KERNEL_FILE, src->kernel_source, &spec->kernel, &kernel_fd, err);
    if (rc == 0)
        rc = open_boot_file(src, SV_VM_INITRD_FILE, src->initrd_source, &spec->initrd, &initrd_fd, err);
    reg_copy copy = {.src_dir = src->dir, .disk_fd = io->disk_fd, .cancel_fd = io->cancel_fd, .progress = io->progress,
                     .userdata = io->userdata};
    if (rc == 0)
        rc = reg__create(r, loop, spec, kernel_fd, initrd_fd, &copy, done, userdata, err);
    if (rc < 0) {
        qv_closep(&kernel_fd);
        qv_closep(&initrd_fd);
    }
    return rc;
}
