/* What the metrics show of each VM (docs/metrics.md), sampled by the engine
 * at scrape time: the registry's facts (the guest agent's status among
 * them, kept by the engine: no agent is asked), cheap reads of /proc and
 * /sys, and QEMU's answers (query-blockstats) within a deadline.  A QEMU
 * that does not answer in time leaves its part out of this sample; it never
 * holds the loop.  Plain data, copied: it
 * outlives the VMs it describes. */
#pragma once

#include <net/if.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qmp/qmp.h"
#include "netdev/nic.h"
#include "supervisor/vm/lifecycle.h"
#include "supervisor/vm/vm.h"

typedef struct sv_disk_stats {
    char device[QMP_BLOCK_NAME_MAX + 1]; /* QEMU's name for the backend: "disk0", "seed0" */
    uint64_t read_bytes, write_bytes, read_ops, write_ops;
} sv_disk_stats;

/* A NIC with a TAP, counted as the guest sees it (libvirt's convention):
 * rx is what the guest received, the TAP's tx. */
typedef struct sv_nic_stats {
    unsigned index; /* in the spec's order, as `vm show` numbers NICs */
    char tap[IFNAMSIZ];
    uint64_t rx_bytes, tx_bytes, rx_packets, tx_packets;
} sv_nic_stats;

typedef struct sv_vm_stats {
    char name[64];
    char pool[64];
    sv_vm_state state;
    uint64_t cpus;             /* configured vCPUs */
    uint64_t memory;           /* configured RAM, bytes */
    uint64_t gpus;             /* GPUs its spec passes through */
    uint64_t restarts;         /* automatic restarts in a row (`vm show`'s restarts) */
    uint64_t restarts_total;   /* automatic restarts since the daemon started */
    bool has_qemu;             /* the fields below mean something */
    int64_t started_at;        /* unix time QEMU was started; 0 unknown */
    bool have_proc;            /* /proc/PID/stat was read (the QEMU we started) */
    double cpu_seconds;        /* CPU time of all of QEMU's threads, living and exited */
    uint64_t rss_bytes;
    int agent;                 /* -1 no agent configured, 0 not up (or not known yet), 1 up */
    sv_nic_stats nics[ND_NICS_MAX];
    size_t n_nics;
    bool have_disks;           /* QEMU answered query-blockstats in time */
    sv_disk_stats *disks;      /* n_disks of them, owned by the sample */
    size_t n_disks;
} sv_vm_stats;

/* The sample: status 0 and every VM (borrowed during the call; `missed`
 * counts VMs whose QEMU did not answer in time), or -ENOMEM. */
typedef void (*sv_vm_stats_fn)(int status, const sv_vm_stats *vms, size_t n, size_t missed, void *userdata);

typedef struct sv_stats_job sv_stats_job;

/* Samples every VM of the registry: /proc and /sys at once, QEMU with at
 * most timeout_ms each, all at once.  done runs exactly once unless cancelled: before this returns when
 * nothing needs asking (or memory is short), else when the last answer or
 * timeout came.  Returns the job while it waits (for sv_stats_job_cancel),
 * NULL once done has run. */
sv_stats_job *sv_vmctl_stats(sv_vmctl *c, uint64_t timeout_ms, sv_vm_stats_fn done, void *userdata);
/* done will not be called; the job frees itself when its queries end (at
 * the latest when the engine shuts down, which cancels them). */
void sv_stats_job_cancel(sv_stats_job *job);
