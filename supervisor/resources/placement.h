/* The start side of placement: which NUMA node a VM runs bound to and
 * which host CPUs its threads may use (docs/resources.md), and the pinning
 * itself.  Admission (may it run at all) is sv_resources_admit(), called
 * with the node decided here.
 *
 * sv_start_place() is a pure function of what the node has, the policy and
 * what the VMs that count use, so tests hand it a fake topology;
 * sv_pin_threads() acts on a real process. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "error.h"
#include "supervisor/resources/admission.h"
#include "host/capacity.h"
#include "spec/vmspec.h"

typedef struct sv_start_placement {
    int numa_node;    /* the node guest RAM (and, without pin, the vCPUs) is bound to; -1: none */
    bool bind_memory; /* numa_node set on a kernel with NUMA: guest RAM bound to it (without NUMA
                       * support in the kernel, mbind fails: the one node is used unbound) */
    unsigned *cpus; /* host CPUs for the vCPU and emulator threads, sorted; NULL: no pinning */
    size_t n_cpus;
} sv_start_placement;

/* Decides, for a start of `spec`:
 * - the NUMA node: numa "auto" asks sv_placement_choose() (with the nodes of
 *   the VM's GPUs, matched by address against cap->gpus); numa "N" is node
 *   N, -EINVAL when the machine has no such node; none: -1.  A machine with
 *   one node (or without NUMA: cap->numa false) is that node for "auto",
 *   without asking (admission decides whether the VM fits there).
 * - the CPUs: pin's list, each of which must be an online CPU of the host
 *   (-EINVAL naming the first that is not); without pin, the chosen node's
 *   CPUs; with neither, none.
 * - hugepages: the RAM must be a whole number of pages (-EINVAL).
 * usage: the VMs that count at start (sv_resources_usage(r, false, …)).
 * Returns 0 with *ret filled (clear it with sv_start_placement_clear()), or
 * a negative errno with err set: -EINVAL, -QV_ECAPACITY (auto found no node
 * where the VM fits), -ENOMEM. */
int sv_start_place(const sv_capacity *cap, const sv_admission_policy *policy, const sv_vm_usage *usage,
                   size_t n_usage, const sv_vmspec *spec, sv_start_placement *ret, qv_error *err);
void sv_start_placement_clear(sv_start_placement *p);

/* Pins the threads of process `pid` (read below the sysfs root:
 * proc/PID/task) to `cpus`: the vCPU threads (vcpu_tids, from QMP
 * query-cpus-fast) and every other thread, the emulator threads, alike.
 * A thread that exits meanwhile is skipped; a vCPU thread that cannot be
 * pinned, or another thread that cannot for any reason but its exit, is an
 * error naming the thread and the CPUs.  *ret_emulator (may be NULL) counts
 * the emulator threads pinned. */
int sv_pin_threads(pid_t pid, const pid_t *vcpu_tids, size_t n_vcpus, const unsigned *cpus, size_t n_cpus,
                   size_t *ret_emulator, qv_error *err);
