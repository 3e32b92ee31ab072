/* The daemon's VMs: one instance directory each under INSTANCES_DIR, loaded
 * at start, changed only through these functions so the files and memory
 * agree.  Every change to disk is crash-safe: a VM being created lives in
 * INSTANCES_DIR/.NAME.creating until it is complete and renamed into place; a
 * VM being removed is renamed to .NAME.removing first.  Leftovers of both are
 * cleaned when the registry loads. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"
#include "supervisor/config.h"
#include "supervisor/vmspec.h"

typedef enum sv_vm_state {
    SV_VM_CREATING,
    SV_VM_STOPPED,
    SV_VM_STARTING,
    SV_VM_RUNNING,
    SV_VM_PAUSED,
    SV_VM_STOPPING,
    SV_VM_CRASHED,
    SV_VM_REMOVING,
} sv_vm_state;

const char *sv_vm_state_name(sv_vm_state s);

typedef struct sv_vm {
    char name[64];
    sv_vmspec *spec;
    sv_vm_state state;
    char *dir;              /* INSTANCES_DIR/NAME */
    int64_t created_at;     /* unix time */
    char *last_exit;        /* why it last stopped, NULL if never */
    uint64_t disk_size;     /* virtual size of the overlay */
    struct sv_vm *next;
} sv_vm;

typedef struct sv_registry sv_registry;

/* Scans the instances directory: loads every VM, finishes interrupted
 * creates (rolled back) and removes (completed).  `cleaned` (may be NULL)
 * counts the leftovers removed. */
int sv_registry_load(const sv_config *c, sv_registry **ret, int *cleaned, qv_error *err);
void sv_registry_free(sv_registry *r);

sv_vm *sv_registry_find(sv_registry *r, const char *name);
sv_vm *sv_registry_first(sv_registry *r);
/* VM names using base image `image`, as "a, b" (caller frees); NULL if none. */
char *sv_registry_users_of_image(sv_registry *r, const char *image);

/* Creates a VM asynchronously (qemu-img runs on a worker thread).  The name
 * is reserved at once (state creating); `done` is called exactly once with 0
 * and the VM, or a negative errno and err filled.  Returns a negative errno
 * (with err) when the request is refused before any work starts: -EEXIST,
 * -ENOENT (no such image), -EINVAL. */
typedef void (*sv_registry_done_fn)(int status, sv_vm *vm, const qv_error *err, void *userdata);
int sv_registry_create(sv_registry *r, uv_loop_t *loop, sv_vmspec *spec, sv_registry_done_fn done, void *userdata,
                       qv_error *err);
/* Removes a stopped or crashed VM and its directory (synchronously: a rename
 * and an unlink walk).  -EBUSY when it is in any other state. */
int sv_registry_remove(sv_registry *r, const char *name, qv_error *err);

/* {"name", "state", "image", "cpus", "memory", "disk_size", "disk", "pid",
 * "ip", "gpus", "uptime_s", …}: the `vm list` row.  New reference. */
json_t *sv_vm_summary(const sv_vm *vm);
/* Everything `vm show` prints: summary + spec + paths + last exit. */
json_t *sv_vm_details(const sv_vm *vm);
