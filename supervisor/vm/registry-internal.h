/* What the registry's files share: registry.c (the VMs in memory, load,
 * remove), store.c (one VM's files), create.c (vm create) and view.c (the
 * JSON views).  For those files only; reg__ names are theirs. */
#pragma once

#include "supervisor/vm/registry.h"
#include "supervisor/vm/vm-record.h"

#include "run.h"
#include "util.h"

#include <sys/stat.h>

struct sv_registry {
    sv_config *const *config; /* the daemon's current config (swapped by a reload) */
    sv_vm *vms;
};

/* registry.c */
void reg__vm_free(sv_vm *vm);
sv_vm *reg__vm_new(const sv_registry *r, sv_vmspec *spec);
void reg__link_vm(sv_registry *r, sv_vm *vm);
void reg__unlink_vm(sv_registry *r, sv_vm *vm);
int reg__remove_temp_dir(const sv_config *c, int instfd, const char *entry, const char *name,
                         const struct stat *want);

/* vm rm in three steps (supervisor/vm/remove.c): the instance directory
 * renamed to .NAME.removing, the point of no return (on the loop: one
 * rename); that directory and its pool disk deleted (thread-safe: a big
 * disk takes its time, on a worker); the VM dropped from the registry and
 * freed (on the loop). */
typedef struct reg_removal {
    char name[QV_NAME_MAX + 1];
    char entry[QV_NAME_MAX + 16]; /* .NAME.removing */
    int instfd;
    struct stat want;   /* the disk create made (dev, inode) */
    bool has_want;
    sv_config *config;  /* a reference, for the worker */
} reg_removal;
int reg__remove_begin(sv_registry *r, sv_vm *vm, reg_removal *ret, qv_error *err);
void reg__remove_files(reg_removal *rm);
void reg__remove_clear(reg_removal *rm);
void reg__remove_end(sv_registry *r, sv_vm *vm);

/* create.c: vm create, and vm clone (clone.c) with `copy`: the disk is
 * the source's disk_fd copied onto the same base by `qemu-img convert -B`
 * (progress, cancel_fd as sv_qemu_img_cancellable; the fds stay the
 * caller's and must outlive the call's done), and a cancel_fd readable
 * before the rename rolls the clone back (ECANCELED); a seed with the
 * source's instance-id is refused (EINVAL).  Otherwise as
 * sv_registry_create(). */
typedef struct reg_copy {
    const char *src_dir; /* the source's instance directory: its seed.id must differ from the clone's */
    int disk_fd;
    int cancel_fd;
    qv_run_output_fn progress;
    void *userdata;
} reg_copy;
int reg__create(sv_registry *r, uv_loop_t *loop, sv_vmspec *spec, int kernel_fd, int initrd_fd, const reg_copy *copy,
                sv_registry_done_fn done, void *userdata, qv_error *err);

/* store.c */
json_t *reg__state_json_as(const sv_vm *vm, sv_vm_state state);
int reg__write_json(const char *dir, const char *file, json_t *j, qv_error *err);
/* The file's JSON object, read through the directory's fd (NULL with err). */
json_t *reg__read_json(const char *dir, const char *file, qv_error *err);
