/* What the registry's files share: registry.c (the VMs in memory, load,
 * remove), store.c (one VM's files), create.c (vm create) and view.c (the
 * JSON views).  For those files only; reg__ names are theirs. */
#pragma once

#include "supervisor/vm/registry.h"
#include "supervisor/vm/vm-record.h"

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

/* store.c */
json_t *reg__state_json_as(const sv_vm *vm, sv_vm_state state);
int reg__write_json(const char *dir, const char *file, json_t *j, qv_error *err);
/* The file's JSON object, read through the directory's fd (NULL with err). */
json_t *reg__read_json(const char *dir, const char *file, qv_error *err);
