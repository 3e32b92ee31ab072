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
#include "spec/config.h"
#include "netdev/ip.h"
#include "spec/vmspec.h"
#include "supervisor/vm/layout.h"

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

/* What state.json keeps about the running QEMU and the operation in
 * progress, so a new daemon can re-adopt or finish it. */
typedef struct sv_vm_run {
    int pid;                  /* QEMU, 0 when none */
    uint64_t start_ticks;     /* /proc/PID/stat field 22: the identity with the cmdline */
    int64_t started_at;       /* unix time QEMU was started */
    int ssh_port;             /* 127.0.0.1 port forwarded to the guest's 22; 0 when none */
    bool stop_force;          /* a stop in progress skips the graceful step */
    uint64_t stop_timeout_ms; /* a stop in progress: its graceful timeout (0: the VM's) */
    uint64_t restarts;        /* automatic restarts in a row (restart policy) */
    int numa_node;            /* while QEMU runs: the NUMA node it is bound to, -1 for none */
} sv_vm_run;

typedef struct sv_vm {
    char name[64];
    sv_vmspec *spec;
    sv_vm_state state;
    char *dir;              /* INSTANCES_DIR/NAME */
    int64_t created_at;     /* unix time */
    char *last_exit;        /* why it last stopped, NULL if never */
    uint64_t disk_size;     /* virtual size of the overlay */
    uint64_t base_size;     /* the base image's file size and mtime when the */
    int64_t base_mtime_ns;  /* disk was made: a base that changed is refused */
    uint64_t disk_dev;      /* the disk file create made (st_dev, st_ino): */
    uint64_t disk_ino;      /* vm rm removes a pool's file only if it is that one; 0 unknown */
    /* where the kernel and initrd were copied from at create (the client's
     * names for its files: shown, never opened), NULL for none or for VMs
     * created before boot files were copied */
    char *kernel_source;
    char *initrd_source;
    sv_vm_run run;
    /* Not persisted: what the lifecycle engine (supervisor/vm/engine.h) knows right now. */
    void *rt;               /* its per-VM runtime, NULL when none */
    char *ip;               /* first address the guest agent reported */
    json_t *addresses;      /* every address the agent reported (array), NULL when unknown */
    const char *agent;      /* "ok", "no answer", "off", "unknown" */
    struct sv_vm *next;
} sv_vm;

typedef struct sv_registry sv_registry;

/* Scans the instances directory: loads every VM, finishes interrupted
 * creates (rolled back) and removes (completed).  `cleaned` (may be NULL)
 * counts the leftovers removed.  `config` is where the daemon keeps its
 * current config (a reload swaps it); the registry reads it there, and a
 * create's worker takes its own reference (spec/config.h). */
int sv_registry_load(sv_config *const *config, sv_registry **ret, int *cleaned, qv_error *err);
void sv_registry_free(sv_registry *r);

sv_vm *sv_registry_find(sv_registry *r, const char *name);
sv_vm *sv_registry_first(sv_registry *r);
/* VM names using base image `image`, as "a, b" (caller frees); NULL if none. */
char *sv_registry_users_of_image(sv_registry *r, const char *image);

/* Creates a VM asynchronously (qemu-img runs on a worker thread).  The name
 * is reserved at once (state creating); `done` is called exactly once with 0
 * and the VM, or a negative errno and err filled.  Returns a negative errno
 * (with err) when the request is refused before any work starts: -EEXIST,
 * -ENOENT (no such image), -EINVAL; the spec and the fds are then still the
 * caller's.  Otherwise spec is taken, and so are kernel_fd and initrd_fd
 * (the client's files, checked with sv_vmspec_check_boot(); -1 for none):
 * the worker copies them into the instance directory (SV_VM_KERNEL_FILE,
 * SV_VM_INITRD_FILE, 0640) and the stored spec names those copies, while
 * vm->kernel_source and initrd_source keep the names spec gave. */
typedef void (*sv_registry_done_fn)(int status, sv_vm *vm, const qv_error *err, void *userdata);
int sv_registry_create(sv_registry *r, uv_loop_t *loop, sv_vmspec *spec, int kernel_fd, int initrd_fd,
                       sv_registry_done_fn done, void *userdata, qv_error *err);
/* Removes a stopped or crashed VM and its directory (synchronously: a rename
 * and an unlink walk).  -EBUSY when it is in any other state. */
int sv_registry_remove(sv_registry *r, const char *name, qv_error *err);

/* The states in which the VM has (or is getting) a QEMU process. */
bool sv_vm_state_has_qemu(sv_vm_state s);

/* Writes the VM's state.json (atomic, durable). */
int sv_registry_save(sv_registry *r, sv_vm *vm, qv_error *err);
/* Replaces vm->last_exit (NULL clears it). */
void sv_vm_set_last_exit(sv_vm *vm, const char *why);

/* Test builds only: QVISOR_TEST_CRASH_AT=POINT kills the daemon there, to
 * prove that every operation survives a crash at that point.  A no-op in
 * release builds. */
void sv_crash_point(const char *point);

/* {"name", "state", "image", "cpus", "memory", "disk_size", "disk", "pid",
 * "ip", "gpus", "uptime_s", …}: the `vm list` row.  New reference. */
json_t *sv_vm_summary(const sv_vm *vm);
/* The first static address of the VM's NICs (without the prefix length) into
 * ret: true; false when no NIC has one.  What `vm ssh` and `vm start` name
 * when no user-mode NIC forwards a port. */
bool sv_vm_static_ip(const sv_vm *vm, char ret[ND_IPV4_CIDR_STRLEN]);
/* Everything `vm show` prints: summary + spec + paths + last exit. */
json_t *sv_vm_details(const sv_vm *vm);
