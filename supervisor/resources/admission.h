/* Admission: may a VM be created or started on this node, does a disk fit
 * in its storage pool, and which NUMA node should `--numa auto` use.  Pure
 * functions of their arguments: what the node has (host/capacity.h),
 * the policy of the node config (overcommit ratios, the VM's pool quotas)
 * and what the VMs that count already use.  Which VMs count (running ones at
 * start, every defined one at create, …) is the caller's choice.
 *
 * A refusal is -QV_ECAPACITY (exit 75) with a message naming the resource,
 * what the VMs use, what this one asks and the limit with its arithmetic:
 *   "not enough memory: VMs use 20.0 GiB, this one asks 8.0 GiB, the node
 *    allows 24.0 GiB (24.0 GiB × memory_overcommit 1.0)"
 * Exactly at a limit passes; one more is refused.  There is no force. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "host/capacity.h"
#include "spec/config.h"

/* What one VM takes (or, as the candidate, asks for). */
typedef struct sv_vm_usage {
    const char *name;       /* an entry named like the candidate is not counted */
    const char *pool;       /* NULL or "": "default" */
    uint64_t cpus;          /* vCPUs */
    uint64_t memory;        /* bytes of guest RAM */
    uint64_t gpus;          /* passed-through GPUs */
    uint64_t hugepage_size; /* bytes per page backing the RAM; 0: ordinary memory */
    int numa_node;          /* the node its vCPUs and memory are bound to; -1: none */
} sv_vm_usage;

/* The config's side of a decision about one VM: the node ratios and the
 * quotas of the VM's pool (SV_NO_QUOTA: none). */
typedef struct sv_admission_policy {
    double cpu_overcommit;
    double memory_overcommit;
    const char *pool; /* borrowed; the pool the quotas are of */
    uint64_t pool_cpus;
    uint64_t pool_memory;
    uint64_t pool_gpus;
} sv_admission_policy;

/* The policy for a VM of pool `pool` (NULL or "": "default"); ret->pool
 * borrows from c.  -ENOENT with a message when the config has no such pool. */
int sv_admission_policy_init(sv_admission_policy *ret, const sv_config *c, const char *pool, qv_error *err);

/* Sum over the VMs of pool `pool` (NULL: every pool) bound to NUMA node
 * `node` (-1: every VM, bound or not). */
typedef struct sv_usage_total {
    size_t vms;
    uint64_t cpus;
    uint64_t memory;           /* all guest RAM, hugepage-backed included */
    uint64_t hugepage_memory;  /* the hugepage-backed part */
    uint64_t gpus;
} sv_usage_total;
void sv_usage_sum(const sv_vm_usage *usage, size_t n, const char *pool, int node, sv_usage_total *ret);

/* May `vm` run besides the VMs of `usage`?  The rules, each checked with vm
 * counted in:
 * - CPUs: the vCPUs of all VMs ≤ logical CPUs × cpu_overcommit.
 * - Memory: hugepage-backed RAM is never overcommitted, the rest is:
 *   all guest RAM ≤ H + (RAM − H) × memory_overcommit, where H is the
 *   hugepage-backed RAM of the VMs (so with ratio 1.0: all ≤ RAM).
 * - Hugepages (vm->hugepage_size set): vm's RAM, in whole pages, must fit in
 *   the free pages of that size (cap's live count, which already leaves out
 *   the pages of VMs that run), on vm's NUMA node when it has one.
 * - When vm is bound to a NUMA node: the CPU and memory rules again with
 *   that node's CPUs and RAM and the VMs bound to it.
 * - The quotas of vm's pool (policy): the sums over the pool's VMs of vCPUs,
 *   memory and GPUs.
 * Returns 0, -QV_ECAPACITY with the message of the first rule broken, or
 * -EINVAL when vm names a NUMA node the machine does not have. */
int sv_admission_check(const sv_capacity *cap, const sv_admission_policy *policy, const sv_vm_usage *usage,
                       size_t n_usage, const sv_vm_usage *vm, qv_error *err);

/* `--numa auto`: the NUMA node for vm (its own numa_node is ignored).
 * 1. A node fits when vm bound to it passes the per-node rules of
 *    sv_admission_check() (CPUs and memory against the VMs bound there, and
 *    free hugepages of vm's size on that node).
 * 2. Among the nodes that fit, the one holding most of vm's GPUs
 *    (gpu_nodes: the NUMA node of each of them; -1 entries are ignored).
 * 3. Otherwise, or to break a tie, the node with the most memory left: free
 *    hugepages of vm's size for a hugepage-backed vm, else the node's
 *    allowed memory less what the VMs bound to it use; then the most vCPUs
 *    left; then the lowest id.
 * VMs that are not bound to a node are not charged to any.  Returns the
 * node's id, or -QV_ECAPACITY when none fits (the message gives each node's
 * reason). */
int sv_placement_choose(const sv_capacity *cap, const sv_admission_policy *policy, const sv_vm_usage *usage,
                        size_t n_usage, const sv_vm_usage *vm, const int *gpu_nodes, size_t n_gpu_nodes,
                        qv_error *err);

/* A storage pool as a disk allocation sees it. */
typedef struct sv_storage_usage {
    const char *pool;     /* its name, for messages */
    uint64_t free;        /* statvfs: f_bavail × f_frsize */
    uint64_t allocated;   /* the virtual sizes of the disks in it, summed */
    uint64_t used;        /* bytes those disks occupy now (st_blocks × 512); 0 when unknown (stricter) */
    bool thin_overcommit; /* the pool's storage_pools.NAME.thin_overcommit */
} sv_storage_usage;

enum {
    SV_STORAGE_FITS = 0, /* every disk of the pool can grow to its virtual size */
    SV_STORAGE_THIN = 1, /* it does not, and thin_overcommit allows it */
};

/* May a disk of virtual size `size` be added to the pool?  It fits when
 * allocated + size ≤ free + used: every disk could be written in full.
 * Returns SV_STORAGE_FITS, SV_STORAGE_THIN, or -QV_ECAPACITY with a message
 * that says thin overcommit is off for the pool. */
int sv_storage_fit(const sv_storage_usage *pool, uint64_t size, qv_error *err);
