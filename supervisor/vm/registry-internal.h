/* What the registry's files share: registry.c (the VMs in memory, load,
 * remove), store.c (one VM's files), create.c (vm create) and view.c (the
 * JSON views).  For those files only; reg__ names are theirs. */
#pragma once

#include "supervisor/vm/registry.h"
#include "supervisor/vm/vm-record.h"

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

/* store.c */
json_t *reg__state_json_as(const sv_vm *vm, sv_vm_state state);
int reg__write_json(const char *dir, const char *file, json_t *j, qv_error *err);
/* The file's JSON object, read through the directory's fd (NULL with err). */
json_t *reg__read_json(const char *dir, const char *file, qv_error *err);
