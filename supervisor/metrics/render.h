/* The metrics text (docs/metrics.md lists every metric): a pure function of
 * a node snapshot and the VMs' sample, so tests can pin it.  scrape.c
 * gathers both. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "host/capacity.h"
#include "supervisor/resources/admission.h"
#include "supervisor/vm/stats.h"

/* GPUs by state, each GPU in exactly one (the first that applies): a vfio
 * record says it is stuck; a VM that has a QEMU passes it through; a
 * defined VM names it; none does. */
typedef enum sv_gpu_state {
    SV_GPU_STUCK,
    SV_GPU_IN_USE,
    SV_GPU_ASSIGNED,
    SV_GPU_FREE,
    SV_GPU__COUNT,
} sv_gpu_state;

/* What running VMs take of one NUMA node (the same index as cap->nodes). */
typedef struct sv_metrics_numa {
    sv_usage_total bound;  /* running VMs bound to it (--numa) */
    uint64_t pinned_vcpus; /* vCPUs of running VMs pinned to any of its CPUs */
} sv_metrics_numa;

typedef struct sv_metrics_pool {
    const char *name;
    sv_usage_total used;  /* every defined VM of the pool */
    uint64_t quota_cpus, quota_memory, quota_gpus; /* SV_NO_QUOTA: none */
} sv_metrics_pool;

typedef struct sv_metrics_store {
    const char *name;
    bool known;           /* statvfs worked: usage means something */
    sv_storage_usage usage;
} sv_metrics_store;

typedef struct sv_metrics_node {
    const char *version;
    int64_t start_time;             /* the daemon's, unix seconds */
    const sv_capacity *cap;         /* NULL: the capacity could not be read */
    const sv_metrics_numa *numa;    /* cap->n_nodes of them */
    double cpu_overcommit, memory_overcommit;
    sv_usage_total defined, running;
    uint64_t gpus[SV_GPU__COUNT];
    const sv_metrics_pool *pools;
    size_t n_pools;
    const sv_metrics_store *stores;
    size_t n_stores;
    int64_t now;                    /* unix time of the sample, for uptimes */
    double scrape_seconds;          /* how long collecting took */
    size_t missed;                  /* VMs whose QEMU did not answer in time */
} sv_metrics_node;

/* The exposition text (caller frees) and its length; -ENOMEM. */
int sv_metrics_render(const sv_metrics_node *node, const sv_vm_stats *vms, size_t n, char **ret, size_t *ret_len);
