/* Node capacity: what this node has for VMs, read through the sysfs root
 * (common/sysroot.h), so tests hand it a fake tree.  A snapshot of plain
 * data: read it, look at it, clear it.  What the VMs use is not here (see
 * supervisor/resources/admission.h); `qvisor node status` shows both.
 *
 * Sources, below the root:
 *   sys/devices/system/node/nodeN/cpulist        logical CPUs of node N
 *   sys/devices/system/node/nodeN/meminfo        "Node N MemTotal: … kB", MemFree
 *   sys/devices/system/node/nodeN/hugepages/hugepages-SIZEkB/{nr,free}_hugepages
 *   sys/devices/system/cpu/cpuN/topology/{physical_package_id,core_id}
 *   sys/class/net/IF (those with a `device` link: physical), IF/device/numa_node,
 *       IF/device/sriov_totalvfs and sriov_numvfs (SR-IOV), IF/device/physfn (a VF)
 * A machine without sys/devices/system/node (no NUMA support in the kernel)
 * is one node 0 made of sys/devices/system/cpu/online, proc/meminfo and
 * sys/kernel/mm/hugepages.
 *
 * A device NUMA node of -1 (the platform did not say) is node 0 when the
 * node has one NUMA node, since the device can be nowhere else; with several
 * nodes it stays -1, "unknown" (null in JSON), rather than pretending to be
 * on node 0 and misleading placement.  A node number that names no node is
 * treated the same way.
 *
 * GPUs are not discovered here: vfio/ does that through libudev.  The caller
 * adds them (sv_capacity_add_gpus()), which keeps this module testable with
 * a plain fake tree. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "vfio/vfio.h"

/* Hugepages of one size, on one node or on the whole machine. */
typedef struct sv_hugepages {
    uint64_t page_size; /* bytes: 2M, 1G */
    uint64_t total;     /* pages in the pool (nr_hugepages) */
    uint64_t free;      /* pages not in use (free_hugepages) */
} sv_hugepages;

typedef struct sv_numa_node {
    int id;
    unsigned *cpus;           /* logical CPUs, sorted; NULL for a CPU-less node */
    size_t n_cpus;
    size_t n_cores;           /* distinct (package, core) among cpus */
    uint64_t mem_total;       /* bytes (includes hugepage pools) */
    uint64_t mem_free;        /* bytes (MemFree: page cache not counted as free) */
    sv_hugepages *hugepages;  /* sorted by page size */
    size_t n_hugepages;
} sv_numa_node;

#define SV_CAP_DEVICE_MAX 64

/* A physical network interface. */
typedef struct sv_nic {
    char name[16];                  /* "eth0", "enp59s0f0" */
    char device[SV_CAP_DEVICE_MAX]; /* its device: PCI address "0000:3b:00.0" (or another bus's name) */
    int numa_node;                  /* -1: unknown */
    bool sriov;                     /* SR-IOV capable: the fields below mean something */
    unsigned sriov_totalvfs;        /* VFs the device supports */
    unsigned sriov_numvfs;          /* VFs enabled now */
    bool virtfn;                    /* itself a virtual function of another NIC */
} sv_nic;

typedef struct sv_gpu {
    char device[SV_CAP_DEVICE_MAX]; /* PCI address */
    char model[256];                /* "NVIDIA Corporation GA102GL [A10]"; "" when unknown */
    int numa_node;                  /* -1: unknown */
} sv_gpu;

typedef struct sv_capacity {
    bool numa;             /* false: the kernel shows no NUMA nodes; nodes[] is one node 0 */
    sv_numa_node *nodes;   /* sorted by id; at least one */
    size_t n_nodes;
    /* sums over nodes */
    size_t n_cpus;
    size_t n_cores;
    uint64_t mem_total;
    uint64_t mem_free;
    sv_nic *nics;          /* sorted by name */
    size_t n_nics;
    sv_gpu *gpus;          /* in the order added */
    size_t n_gpus;
} sv_capacity;

/* Reads the node's capacity (no GPUs) into *ret, which the caller clears
 * with sv_capacity_clear().  Missing optional parts (hugepages, NICs,
 * topology) are simply absent; a node without meminfo, or a file that does
 * not parse, is an error (-EBADMSG or the read's errno) with err naming the
 * file.  Debug logging only. */
int sv_capacity_read(sv_capacity *ret, qv_error *err);
/* The same for only what a caller needs: the nodes (CPUs, memory,
 * hugepages) always, and of the rest what `parts` names.  Without
 * SV_CAP_CORES the n_cores are 0 (they take two reads per CPU: hundreds on
 * a large host); without SV_CAP_NICS there are no NICs.  A start's
 * placement and admission need neither. */
enum { SV_CAP_CORES = 1, SV_CAP_NICS = 2, SV_CAP_ALL = SV_CAP_CORES | SV_CAP_NICS };
int sv_capacity_read_parts(sv_capacity *ret, unsigned parts, qv_error *err);
void sv_capacity_clear(sv_capacity *c);

/* Adds one GPU (its NUMA node normalised as described above).  0 or -ENOMEM. */
int sv_capacity_add_gpu(sv_capacity *c, const char *device, const char *model, int numa_node);
/* Adds every GPU of a vfio discovery (vfio_gpu_list_get()). */
int sv_capacity_add_gpus(sv_capacity *c, const vfio_gpu_list *l);

/* The node with this id (borrowed); NULL when there is none. */
const sv_numa_node *sv_capacity_node(const sv_capacity *c, int id);
/* Hugepages of page_size on node `node`, or summed over all nodes when node
 * is -1.  -ENOENT when there is no pool of that size there (ret zeroed). */
int sv_capacity_hugepages(const sv_capacity *c, int node, uint64_t page_size, sv_hugepages *ret);

/* The capacity as JSON for `node status --json` (new reference).  Stable
 * keys; sizes in bytes; unknown NUMA nodes are null:
 *   {"numa": true, "cpus": 8, "cores": 4, "memory_total": B, "memory_free": B,
 *    "hugepages": [{"page_size": 2097152, "total": 512, "free": 500}, …],  (all nodes)
 *    "nodes": [{"id": 0, "cpulist": "0-1,4-5", "cpus": 4, "cores": 2,
 *               "memory_total": B, "memory_free": B, "hugepages": […]}, …],
 *    "nics": [{"name": "eth0", "device": "0000:3b:00.0", "numa_node": 1,
 *              "sriov": {"total_vfs": 8, "num_vfs": 2} or null, "virtfn": false}, …],
 *    "gpus": [{"device": "0000:41:00.0", "model": "…", "numa_node": 1}, …]} */
json_t *sv_capacity_to_json(const sv_capacity *c);
