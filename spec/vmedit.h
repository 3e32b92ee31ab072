/* What `vm edit` and `vm resize` change in a VM's spec: pure functions over
 * sv_vmspec (no I/O), shared by the daemon and the unit tests.  The daemon
 * checks the result against the node (GPUs, NICs, admission) as create
 * does; docs/lifecycle.md, "Edit and resize", says when either may run. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "spec/vmspec.h"

/* The spec keys `vm edit` may change, NULL-terminated: cpus, memory,
 * gpus, nets, restart, restart_limit, stop_timeout, agent, pool,
 * hugepages, numa, pin.  Everything else (the image, the disk: vm resize,
 * the storage pool, boot files, firmware, the seed, owner, slurm_job) is
 * fixed at create. */
extern const char *const sv_vmspec_editable_keys[];

/* A new spec: `old` with the keys of `changes` (an object of editable keys
 * in the spec's JSON form; null, or an empty list for gpus and nets,
 * returns a key to its default: no GPUs, one user NIC, no NUMA node, no
 * pinning), validated by the schema and sv_vmspec_complete() as a created
 * spec is.  NICs are carried over by sv_vmspec_keep_nics().  *ret is the
 * caller's; `old` is not changed.  -EINVAL naming the key (exit 65): a key
 * that is not editable or a value the schema refuses; -ENOMEM. */
int sv_vmspec_edit(const sv_vmspec *old, json_t *changes, const sv_config *node, sv_vmspec **ret,
                   qv_error *err);

/* NICs of `new` that match a NIC of `old` keep its MAC and (nat) address:
 * a NIC without mac= matches the first unmatched old NIC of the same mode,
 * bridge (when named), VLAN and address (when given); one with mac= the
 * old NIC of that MAC.  Unmatched NICs keep an empty MAC: the daemon gives
 * them a fresh one (never one of `old`'s: sv_net_prepare_spec's `avoid`).
 * Rewrites new->nets in canonical form.  -ENOMEM. */
int sv_vmspec_keep_nics(const sv_vmspec *old, sv_vmspec *new, qv_error *err);

/* The largest disk a spec takes (its schema's bound for `disk`). */
#define SV_DISK_MAX (64ull << 40)

/* vm resize --disk: the new virtual size from the current one and the
 * request: `size` itself, or current + size when `relative` (+SIZE).
 * 0 and *ret set: a larger size; 1 and *ret = current: the disk has that
 * size already (nothing to do, +0 included); -EINVAL (exit 65) a smaller
 * size (the message names both: disks never shrink) or more than
 * SV_DISK_MAX. */
int sv_disk_resize_target(uint64_t current, uint64_t size, bool relative, uint64_t *ret, qv_error *err);
