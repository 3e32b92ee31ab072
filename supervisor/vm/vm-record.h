/* The VM record: what supervisor/vm/ knows about one VM.  For the files of
 * supervisor/vm/ only; everything else holds an opaque sv_vm and reads it
 * through registry.h's accessors. */
#pragma once

#include "supervisor/vm/registry.h"

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

struct sv_vm {
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
    uint64_t restarts_total; /* automatic restarts since the daemon started (a metric's counter) */
    uint64_t disk_pending;  /* a resize under way: the size it grows the disk to (edit.c), 0 when none */
    struct sv_vm *next;
};
