/* The node config: one YAML file per node, parsed once into plain structs
 * by a table of keys (config.c).  Unknown keys, repeated keys, wrong types
 * and out-of-range values are errors that name file:line:column and key. */
#pragma once

/* The system user QEMU runs as by default (scripts/setup creates it). */
#define SV_QEMU_USER "qvisor-qemu"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "log.h"

/* Who may connect to the control socket (daemon.socket_access). */
typedef enum sv_socket_access {
    SV_SOCKET_GROUP,    /* 0660: root, the daemon's user, daemon.socket_group */
    SV_SOCKET_EVERYONE, /* 0666: every local user (reads, and the VMs they own) */
} sv_socket_access;

typedef enum sv_accel {
    SV_ACCEL_AUTO,
    SV_ACCEL_KVM,
    SV_ACCEL_TCG,
} sv_accel;

/* A quota or limit that is not set: no limit.  (The schema's SV_UNSET.) */
#define SV_NO_QUOTA UINT64_MAX

/* A resource pool (config `pools.NAME`): every VM belongs to one ("default"
 * unless it says otherwise).  Each quota bounds the sum over the pool's VMs
 * and is SV_NO_QUOTA when not set. */
typedef struct sv_pool {
    char *name;
    uint64_t cpus;   /* vCPUs */
    uint64_t memory; /* bytes */
    uint64_t gpus;   /* passed-through GPUs */
} sv_pool;

/* A storage pool (config `storage_pools.NAME`): a directory VM disks live in. */
typedef struct sv_storage_pool {
    char *name;
    char *path;           /* absolute */
    bool thin_overcommit; /* may allocate more virtual disk than there is free space */
} sv_storage_pool;

typedef struct sv_config {
    char *source; /* file the values came from; NULL for built-in defaults */

    int log_level; /* index: use sv_config_log_level() */

    /* paths */
    char *state_dir;
    char *images_dir;    /* default STATE_DIR/images */
    char *instances_dir; /* default STATE_DIR/instances */
    char *run_dir;
    char *sysfs_root;
    char *firmware_dir;  /* "": the system's firmware descriptors and OVMF (host/firmware.h) */

    /* daemon */
    char *socket_path; /* default RUN_DIR/qvisor.sock */
    char *socket_group;
    int socket_access; /* an sv_socket_access */
    uint64_t max_request_size;
    uint64_t max_clients;
    uint64_t ctl_line_timeout_ms; /* daemon.request_line_timeout: a request line, first byte to newline */
    uint64_t ctl_idle_timeout_ms; /* daemon.idle_timeout: a connection with nothing in flight */

    /* metrics: where the Prometheus endpoint listens ("" off; common/listenaddr.h) */
    char *metrics_listen;

    /* qemu */
    char *qemu_binary;
    char *qemu_img_binary;
    int accelerator; /* an sv_accel */
    char *run_as;    /* QEMU drops to this user when the daemon is root; "root": it does not */

    /* vm_defaults */
    uint64_t vm_cpus;
    uint64_t vm_memory;
    uint64_t vm_disk;
    uint64_t stop_timeout_ms;
    uint64_t kill_timeout_ms;

    /* vfio */
    uint64_t vfio_sysfs_timeout_ms; /* per device: how long its sysfs writes may take */

    /* network */
    char *nat_bridge;
    char *nat_subnet;  /* "a.b.c.d/len", normalised */
    char *nat_gateway;
    char *overlay_bridge;
    char **dns;        /* NULL-terminated; never NULL after load */

    /* resources */
    double cpu_overcommit;      /* vCPUs allowed per logical CPU, > 0 */
    double memory_overcommit;   /* guest memory allowed per byte of RAM, > 0 */
    char *default_storage_pool; /* names an entry of storage_pools */

    /* NULL-terminated, in config order.  Both always hold an entry "default"
     * (first when the config does not name it): the resource pool without
     * quotas, the storage pool at instances_dir. */
    sv_pool **pools;
    sv_storage_pool **storage_pools;

    unsigned refs_; /* references beyond the first (sv_config_ref); not a setting */
} sv_config;

/* Built-in defaults (what an empty file gives).  Returns NULL on ENOMEM. */
sv_config *sv_config_new_default(void);

/* Parses path into *ret (owned by the caller).  On error returns -QV_ECONFIG
 * (or -ENOENT/-EACCES for an unreadable file) with err->msg like
 * "/etc/qvisor/config.yaml:12:3: qemu.accelerator: expected one of auto, kvm, tcg". */
int sv_config_load(const char *path, sv_config **ret, qv_error *err);
/* sv_config_load(), except that a missing file that was not named by the
 * user (the built-in default path) gives the built-in defaults.
 * *ret_defaulted (may be NULL) tells which happened.  A missing named file
 * is -ENOENT. */
int sv_config_load_or_default(const char *path, bool named, sv_config **ret, bool *ret_defaulted, qv_error *err);
/* The inverse of sv_config_to_json() (a daemon's effective config). */
int sv_config_from_json(json_t *j, sv_config **ret, qv_error *err);
/* Same, from a buffer; `name` is used in messages. */
int sv_config_parse(const char *name, const char *data, size_t len, sv_config **ret, qv_error *err);

/* A loaded config is never changed: the daemon holds the current one, and an
 * operation that outlives one turn of the loop (a worker's job, a create, a
 * start) takes its own reference at its beginning and drops it at its end,
 * so a reload, which swaps the daemon's pointer, never changes a config
 * under a running operation.  References may be dropped on any thread. */
sv_config *sv_config_ref(const sv_config *c);
/* Drops a reference (the loader's, or one sv_config_ref took); the last one
 * frees.  NULL is a no-op. */
void sv_config_free(sv_config *c);
/* Deep copy: a new config with one reference. */
sv_config *sv_config_dup(const sv_config *c);
static inline void sv_config_freep(sv_config **c) {
    sv_config_free(*c);
}

/* Effective config as JSON ({"paths": {"state_dir": …}, …}, stable keys);
 * new reference. */
json_t *sv_config_to_json(const sv_config *c);

/* Visits every key in table order with its dotted name and its effective
 * value rendered as text (lists joined with ", ", unset quotas as "unset");
 * pools give one key per entry and setting ("pools.default.cpus"). */
typedef void (*sv_config_visit_fn)(const char *key, const char *value, void *userdata);
void sv_config_visit(const sv_config *c, sv_config_visit_fn fn, void *userdata);

/* Keys whose values differ and that a running daemon cannot change without a
 * restart (socket path, directories, …), as "paths.run_dir, daemon.socket";
 * caller frees.  NULL when there are none. */
char *sv_config_restart_keys_changed(const sv_config *old, const sv_config *new_config);
/* For a reload: gives `fresh` (not yet shared) copies of the running values
 * of every restart key that changed; `running`, which operations may still
 * hold, is not touched.  *ret_changed: the changed keys as
 * sv_config_restart_keys_changed() gives them (NULL: none).  -ENOMEM. */
int sv_config_keep_restart_keys(sv_config *fresh, const sv_config *running, char **ret_changed);

/* The pool / storage pool called name (borrowed); NULL when there is none. */
const sv_pool *sv_config_pool(const sv_config *c, const char *name);
const sv_storage_pool *sv_config_storage_pool(const sv_config *c, const char *name);

const char *sv_accel_to_string(sv_accel a);
qv_log_level sv_config_log_level(const sv_config *c);
