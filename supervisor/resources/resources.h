/* The node's resources as the daemon uses them: what the node has (with its
 * GPUs) and what the VMs of the registry take, in the terms of the
 * admission rules (supervisor/resources/admission.h).
 *
 * Which VMs count: at create every defined VM (composition against the
 * node, as MAAS counts composed VMs), at start those that have a QEMU
 * (starting, running, paused, stopping). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "supervisor/resources/admission.h"
#include "host/capacity.h"
#include "spec/config.h"
#include "supervisor/vm/registry.h"

/* Capacity with the GPUs libudev finds (none when it cannot enumerate). */
int sv_resources_capacity(sv_capacity *ret, qv_error *err);
/* The capacity that admitting and placing `spec` needs: the nodes, and
 * the GPUs only when it asks for some (enumerating them is most of what
 * reading the capacity costs, and a VM without GPUs is admitted and placed
 * without looking at them); no NICs and no core counts (n_cores 0), which
 * neither looks at. */
int sv_resources_capacity_for(const sv_vmspec *spec, sv_capacity *ret, qv_error *err);

/* What a spec asks for, bound to `numa_node` (-1: none); name and pool
 * borrow from spec. */
void sv_resources_spec_usage(const sv_vmspec *spec, int numa_node, sv_vm_usage *ret);
/* What one VM takes: its spec's vCPUs, RAM, GPUs, hugepage size and pool;
 * its NUMA node is the one it runs bound to, else the spec's number. */
void sv_resources_vm_usage(const sv_vm *vm, sv_vm_usage *ret);
/* The usage of every VM (all = true) or of those with a QEMU; entries borrow
 * from the registry.  *ret freed by the caller. */
int sv_resources_usage(sv_registry *r, bool all, sv_vm_usage **ret, size_t *ret_n);

/* vCPUs of the VMs with a QEMU that are pinned (--pin) to any CPU of node
 * nn: what `node status` shows per NUMA node. */
uint64_t sv_resources_pinned_vcpus(sv_registry *r, const sv_numa_node *nn);
/* The VM whose spec names the PCI address as a GPU (borrowed), or NULL. */
const sv_vm *sv_resources_gpu_holder(sv_registry *r, const char *address);

/* A storage pool as sv_storage_fit() sees it: statvfs of its directory,
 * and the virtual and occupied sizes of the disks of the registry's VMs in
 * it.  -ENOENT when the config has no such pool. */
int sv_resources_storage(sv_registry *r, const sv_config *c, const char *pool, sv_storage_usage *ret,
                         qv_error *err);
/* The storage pool of a VM's spec (its own, else the default). */
const char *sv_resources_storage_pool_of(const sv_config *c, const sv_vmspec *spec);

/* Admission of `spec` (as VM `name`) against the VMs that count (all: at
 * create; else: at start), with its NUMA node (-1: none), on capacity `cap`
 * (NULL: read now).  0 or -QV_ECAPACITY / -ENOENT (no such pool) / -EINVAL
 * with err set. */
int sv_resources_admit(sv_registry *r, const sv_config *c, const sv_capacity *cap, const sv_vmspec *spec, bool all,
                       int numa_node, qv_error *err);
