/* The metrics text, family by family (see render.h, docs/metrics.md). */
#include "supervisor/metrics/render.h"

#include "cleanup.h"
#include "supervisor/metrics/expo.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- per VM ------------------------------------------------------------------ */

/* A family with one sample per VM; `get` says whether this VM has one. */
typedef struct vm_family {
    const char *name;
    const char *type;
    const char *help;
    bool (*get_u)(const sv_vm_stats *s, uint64_t *ret);
    bool (*get_d)(const sv_vm_stats *s, int64_t now, double *ret);
} vm_family;

static bool vcpus(const sv_vm_stats *s, uint64_t *v) {
    *v = s->cpus;
    return true;
}
static bool memory(const sv_vm_stats *s, uint64_t *v) {
    *v = s->memory;
    return true;
}
static bool gpus(const sv_vm_stats *s, uint64_t *v) {
    *v = s->gpus;
    return true;
}
static bool restarts_row(const sv_vm_stats *s, uint64_t *v) {
    *v = s->restarts;
    return true;
}
static bool restarts_total(const sv_vm_stats *s, uint64_t *v) {
    *v = s->restarts_total;
    return true;
}
static bool start_time(const sv_vm_stats *s, uint64_t *v) {
    *v = (uint64_t)s->started_at;
    return s->has_qemu && s->started_at > 0;
}
static bool uptime(const sv_vm_stats *s, int64_t now, double *v) {
    *v = now > s->started_at ? (double)(now - s->started_at) : 0;
    return s->has_qemu && s->started_at > 0;
}
static bool cpu_seconds(const sv_vm_stats *s, int64_t now, double *v) {
    (void)now;
    *v = s->cpu_seconds;
    return s->has_qemu && s->have_proc;
}
static bool rss(const sv_vm_stats *s, uint64_t *v) {
    *v = s->rss_bytes;
    return s->has_qemu && s->have_proc;
}
static bool agent_up(const sv_vm_stats *s, uint64_t *v) {
    *v = s->agent > 0;
    return s->has_qemu && s->agent >= 0;
}

static const vm_family vm_families[] = {
    {"qvisor_vm_vcpus", "gauge", "vCPUs the VM is configured with.", vcpus, NULL},
    {"qvisor_vm_memory_bytes", "gauge", "Guest RAM the VM is configured with, in bytes.", memory, NULL},
    {"qvisor_vm_gpus", "gauge", "GPUs the VM's spec passes through (held while it has a QEMU).", gpus, NULL},
    {"qvisor_vm_consecutive_restarts", "gauge",
     "Automatic restarts in a row by the restart policy (vm show's restarts); 0 again once the VM ran 60 s.",
     restarts_row, NULL},
    {"qvisor_vm_restarts_total", "counter", "Automatic restarts by the restart policy since the daemon started.",
     restarts_total, NULL},
    {"qvisor_vm_start_time_seconds", "gauge", "Unix time the VM's QEMU was started (VMs with a QEMU).", start_time,
     NULL},
    {"qvisor_vm_uptime_seconds", "gauge", "Seconds since the VM's QEMU was started (VMs with a QEMU).", NULL, uptime},
    {"qvisor_vm_cpu_seconds_total", "counter",
     "CPU time used by all threads of the VM's QEMU (vCPUs, I/O, emulator), user and system, in seconds.", NULL,
     cpu_seconds},
    {"qvisor_vm_resident_memory_bytes", "gauge", "Resident memory of the VM's QEMU process, in bytes.", rss, NULL},
    {"qvisor_vm_agent_up", "gauge",
     "1 when the VM's guest agent answered within the scrape's deadline, else 0 (VMs with an agent and a QEMU).",
     agent_up, NULL},
};

static void vm_labels(const sv_vm_stats *s, const char *labels[5]) {
    labels[0] = "vm";
    labels[1] = s->name;
    labels[2] = "pool";
    labels[3] = s->pool;
    labels[4] = NULL;
}

static void render_vm_family(sv_expo *e, const vm_family *f, const sv_vm_stats *vms, size_t n, int64_t now) {
    sv_expo_family(e, f->name, f->type, f->help);
    for (size_t i = 0; i < n; i++) {
        const char *labels[5];
        vm_labels(&vms[i], labels);
        uint64_t u;
        double d;
        if (f->get_u && f->get_u(&vms[i], &u))
            sv_expo_u64(e, f->name, labels, u);
        else if (f->get_d && f->get_d(&vms[i], now, &d))
            sv_expo_double(e, f->name, labels, d);
    }
}

static const sv_vm_state all_states[] = {
    SV_VM_CREATING, SV_VM_STOPPED, SV_VM_STARTING, SV_VM_RUNNING,
    SV_VM_PAUSED,   SV_VM_STOPPING, SV_VM_CRASHED, SV_VM_REMOVING,
};

/* One series per state, 1 for the VM's, as Prometheus does enums. */
static void render_states(sv_expo *e, const sv_vm_stats *vms, size_t n) {
    static const char name[] = "qvisor_vm_state";
    sv_expo_family(e, name, "gauge", "1 for the VM's lifecycle state, 0 for the others (docs/lifecycle.md).");
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < QV_ARRAY_SIZE(all_states); k++) {
            const char *labels[] = {"vm", vms[i].name, "pool", vms[i].pool, "state",
                                    sv_vm_state_name(all_states[k]), NULL};
            sv_expo_u64(e, name, labels, vms[i].state == all_states[k]);
        }
}

typedef struct disk_family {
    const char *name;
    const char *help;
    size_t offset; /* of the uint64_t in sv_disk_stats */
} disk_family;

static const disk_family disk_families[] = {
    {"qvisor_vm_block_read_bytes_total", "Bytes read by the guest from a block device (query-blockstats rd_bytes).",
     offsetof(sv_disk_stats, read_bytes)},
    {"qvisor_vm_block_written_bytes_total",
     "Bytes written by the guest to a block device (query-blockstats wr_bytes).",
     offsetof(sv_disk_stats, write_bytes)},
    {"qvisor_vm_block_reads_total", "Read operations of the guest on a block device (rd_operations).",
     offsetof(sv_disk_stats, read_ops)},
    {"qvisor_vm_block_writes_total", "Write operations of the guest on a block device (wr_operations).",
     offsetof(sv_disk_stats, write_ops)},
};

static void render_disks(sv_expo *e, const disk_family *f, const sv_vm_stats *vms, size_t n) {
    sv_expo_family(e, f->name, "counter", f->help);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; vms[i].have_disks && k < vms[i].n_disks; k++) {
            const sv_disk_stats *d = &vms[i].disks[k];
            const char *labels[] = {"vm", vms[i].name, "pool", vms[i].pool, "device", d->device, NULL};
            uint64_t v;
            memcpy(&v, (const char *)d + f->offset, sizeof v);
            sv_expo_u64(e, f->name, labels, v);
        }
}

typedef struct nic_family {
    const char *name;
    const char *help;
    size_t offset; /* of the uint64_t in sv_nic_stats */
} nic_family;

static const nic_family nic_families[] = {
    {"qvisor_vm_network_receive_bytes_total", "Bytes the guest received on a NIC with a TAP (the TAP's tx_bytes).",
     offsetof(sv_nic_stats, rx_bytes)},
    {"qvisor_vm_network_transmit_bytes_total", "Bytes the guest sent on a NIC with a TAP (the TAP's rx_bytes).",
     offsetof(sv_nic_stats, tx_bytes)},
    {"qvisor_vm_network_receive_packets_total", "Packets the guest received on a NIC with a TAP.",
     offsetof(sv_nic_stats, rx_packets)},
    {"qvisor_vm_network_transmit_packets_total", "Packets the guest sent on a NIC with a TAP.",
     offsetof(sv_nic_stats, tx_packets)},
};

static void render_nics(sv_expo *e, const nic_family *f, const sv_vm_stats *vms, size_t n) {
    sv_expo_family(e, f->name, "counter", f->help);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; vms[i].has_qemu && k < vms[i].n_nics; k++) {
            const sv_nic_stats *t = &vms[i].nics[k];
            char idx[16];
            snprintf(idx, sizeof idx, "%u", t->index);
            const char *labels[] = {"vm", vms[i].name, "pool", vms[i].pool, "nic", idx, "tap", t->tap, NULL};
            uint64_t v;
            memcpy(&v, (const char *)t + f->offset, sizeof v);
            sv_expo_u64(e, f->name, labels, v);
        }
}

static void render_vms(sv_expo *e, const sv_vm_stats *vms, size_t n, int64_t now) {
    render_states(e, vms, n);
    for (size_t i = 0; i < QV_ARRAY_SIZE(vm_families); i++)
        render_vm_family(e, &vm_families[i], vms, n, now);
    for (size_t i = 0; i < QV_ARRAY_SIZE(disk_families); i++)
        render_disks(e, &disk_families[i], vms, n);
    for (size_t i = 0; i < QV_ARRAY_SIZE(nic_families); i++)
        render_nics(e, &nic_families[i], vms, n);
}

/* ---- the node ---------------------------------------------------------------- */

/* A family of one sample without labels. */
static void single(sv_expo *e, const char *name, const char *type, const char *help, uint64_t v) {
    sv_expo_family(e, name, type, help);
    sv_expo_u64(e, name, NULL, v);
}

static void render_daemon(sv_expo *e, const sv_metrics_node *node) {
    static const char info[] = "qvisor_daemon_info";
    sv_expo_family(e, info, "gauge", "Version of the qvisor daemon; always 1.");
    sv_expo_u64(e, info, (const char *[]){"version", node->version, NULL}, 1);
    single(e, "qvisor_daemon_start_time_seconds", "gauge", "Unix time the qvisor daemon started.",
           (uint64_t)node->start_time);
    sv_expo_family(e, "qvisor_scrape_duration_seconds", "gauge",
                   "Seconds this scrape took to collect, waiting for QEMU and the guest agents included.");
    sv_expo_double(e, "qvisor_scrape_duration_seconds", NULL, node->scrape_seconds);
    single(e, "qvisor_scrape_vms_missed", "gauge",
           "VMs whose QEMU did not answer query-blockstats within the deadline; their block series are left out.",
           node->missed);
}

/* {numa_node="ID"} families over the capacity's nodes. */
typedef struct numa_family {
    const char *name;
    const char *help;
    uint64_t (*get)(const sv_metrics_node *node, size_t i);
} numa_family;

static uint64_t numa_cpus(const sv_metrics_node *n, size_t i) {
    return n->cap->nodes[i].n_cpus;
}
static uint64_t numa_mem(const sv_metrics_node *n, size_t i) {
    return n->cap->nodes[i].mem_total;
}
static uint64_t numa_mem_free(const sv_metrics_node *n, size_t i) {
    return n->cap->nodes[i].mem_free;
}
static uint64_t numa_vcpu_limit(const sv_metrics_node *n, size_t i) {
    return (uint64_t)((double)n->cap->nodes[i].n_cpus * n->cpu_overcommit);
}
static uint64_t numa_bound_vcpus(const sv_metrics_node *n, size_t i) {
    return n->numa[i].bound.cpus;
}
static uint64_t numa_bound_mem(const sv_metrics_node *n, size_t i) {
    return n->numa[i].bound.memory;
}
static uint64_t numa_bound_huge(const sv_metrics_node *n, size_t i) {
    return n->numa[i].bound.hugepage_memory;
}
static uint64_t numa_pinned(const sv_metrics_node *n, size_t i) {
    return n->numa[i].pinned_vcpus;
}

static const numa_family numa_families[] = {
    {"qvisor_numa_node_cpus", "Logical CPUs of the NUMA node.", numa_cpus},
    {"qvisor_numa_node_memory_bytes", "Memory of the NUMA node (hugepage pools included), in bytes.", numa_mem},
    {"qvisor_numa_node_memory_free_bytes", "Free memory of the NUMA node (MemFree), in bytes.", numa_mem_free},
    {"qvisor_numa_node_vcpu_limit", "vCPUs running VMs bound to the NUMA node may have: its CPUs x cpu_overcommit.",
     numa_vcpu_limit},
    {"qvisor_numa_node_allocated_vcpus", "vCPUs of running VMs bound to the NUMA node (--numa).", numa_bound_vcpus},
    {"qvisor_numa_node_allocated_memory_bytes", "Guest RAM of running VMs bound to the NUMA node, in bytes.",
     numa_bound_mem},
    {"qvisor_numa_node_allocated_hugepage_memory_bytes",
     "Hugepage-backed guest RAM of running VMs bound to the NUMA node, in bytes.", numa_bound_huge},
    {"qvisor_numa_node_pinned_vcpus", "vCPUs of running VMs pinned (--pin) to CPUs of the NUMA node.", numa_pinned},
};

static void render_numa(sv_expo *e, const sv_metrics_node *node) {
    for (size_t f = 0; f < QV_ARRAY_SIZE(numa_families); f++) {
        sv_expo_family(e, numa_families[f].name, "gauge", numa_families[f].help);
        for (size_t i = 0; i < node->cap->n_nodes; i++) {
            char id[16];
            snprintf(id, sizeof id, "%d", node->cap->nodes[i].id);
            sv_expo_u64(e, numa_families[f].name, (const char *[]){"numa_node", id, NULL},
                        numa_families[f].get(node, i));
        }
    }
}

static void render_hugepages(sv_expo *e, const sv_metrics_node *node, bool free_pages) {
    const char *name = free_pages ? "qvisor_numa_node_hugepages_free" : "qvisor_numa_node_hugepages";
    sv_expo_family(e, name, "gauge",
                   free_pages ? "Hugepages of the NUMA node's pool of that page size not in use."
                              : "Hugepages in the NUMA node's pool of that page size (nr_hugepages).");
    for (size_t i = 0; i < node->cap->n_nodes; i++) {
        const sv_numa_node *nn = &node->cap->nodes[i];
        for (size_t h = 0; h < nn->n_hugepages; h++) {
            char id[16], size[24];
            snprintf(id, sizeof id, "%d", nn->id);
            snprintf(size, sizeof size, "%" PRIu64, nn->hugepages[h].page_size);
            sv_expo_u64(e, name, (const char *[]){"numa_node", id, "page_size_bytes", size, NULL},
                        free_pages ? nn->hugepages[h].free : nn->hugepages[h].total);
        }
    }
}

static void render_capacity(sv_expo *e, const sv_metrics_node *node) {
    single(e, "qvisor_node_cpus", "gauge", "Logical CPUs of the node.", node->cap->n_cpus);
    single(e, "qvisor_node_memory_bytes", "gauge", "Memory of the node, in bytes.", node->cap->mem_total);
    single(e, "qvisor_node_vcpu_limit", "gauge", "vCPUs VMs may have in all: logical CPUs x cpu_overcommit.",
           (uint64_t)((double)node->cap->n_cpus * node->cpu_overcommit));
    single(e, "qvisor_node_memory_limit_bytes", "gauge", "Guest RAM VMs may have in all: memory x memory_overcommit.",
           (uint64_t)((double)node->cap->mem_total * node->memory_overcommit));
    render_numa(e, node);
    render_hugepages(e, node, false);
    render_hugepages(e, node, true);
}

/* {vms="defined"|"running"} families: what `vm create` and `vm start` admit against. */
static void render_allocation(sv_expo *e, const sv_metrics_node *node) {
    static const struct {
        const char *name;
        const char *help;
        size_t offset;
        bool is_size_t;
    } f[] = {
        {"qvisor_node_vms", "VMs: every defined VM, or those with a QEMU.", offsetof(sv_usage_total, vms), true},
        {"qvisor_node_allocated_vcpus", "vCPUs of the defined VMs, or of those with a QEMU.",
         offsetof(sv_usage_total, cpus), false},
        {"qvisor_node_allocated_memory_bytes", "Guest RAM of the defined VMs, or of those with a QEMU, in bytes.",
         offsetof(sv_usage_total, memory), false},
        {"qvisor_node_allocated_hugepage_memory_bytes", "The hugepage-backed part of that guest RAM, in bytes.",
         offsetof(sv_usage_total, hugepage_memory), false},
        {"qvisor_node_allocated_gpus", "GPUs passed through by the defined VMs, or by those with a QEMU.",
         offsetof(sv_usage_total, gpus), false},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(f); i++) {
        sv_expo_family(e, f[i].name, "gauge", f[i].help);
        const sv_usage_total *t[] = {&node->defined, &node->running};
        const char *which[] = {"defined", "running"};
        for (size_t k = 0; k < 2; k++) {
            const char *p = (const char *)t[k] + f[i].offset;
            uint64_t v;
            if (f[i].is_size_t) {
                size_t z;
                memcpy(&z, p, sizeof z);
                v = z;
            } else {
                memcpy(&v, p, sizeof v);
            }
            sv_expo_u64(e, f[i].name, (const char *[]){"vms", which[k], NULL}, v);
        }
    }
}

static void render_gpus(sv_expo *e, const sv_metrics_node *node) {
    static const char *const names[SV_GPU__COUNT] = {"stuck", "in_use", "assigned", "free"};
    static const char name[] = "qvisor_node_gpus";
    sv_expo_family(e, name, "gauge",
                   "PCI display devices by state: stuck (a vfio-pci move hung or failed), in_use (a VM with a QEMU "
                   "passes it through), assigned (a defined VM names it), free.");
    for (size_t s = 0; s < SV_GPU__COUNT; s++)
        sv_expo_u64(e, name, (const char *[]){"state", names[s], NULL}, node->gpus[s]);
}

static void render_pools(sv_expo *e, const sv_metrics_node *node) {
    static const struct {
        const char *name;
        const char *help;
        size_t used;  /* offset in sv_usage_total; SIZE_MAX: vms */
        size_t quota; /* offset in sv_metrics_pool; SIZE_MAX: no quota family */
    } f[] = {
        {"qvisor_pool_vms", "VMs defined in the resource pool.", SIZE_MAX, SIZE_MAX},
        {"qvisor_pool_vcpus", "vCPUs of the VMs defined in the resource pool.", offsetof(sv_usage_total, cpus),
         SIZE_MAX},
        {"qvisor_pool_memory_bytes", "Guest RAM of the VMs defined in the resource pool, in bytes.",
         offsetof(sv_usage_total, memory), SIZE_MAX},
        {"qvisor_pool_gpus", "GPUs of the VMs defined in the resource pool.", offsetof(sv_usage_total, gpus),
         SIZE_MAX},
        {"qvisor_pool_vcpus_quota", "The resource pool's vCPU quota (pools with one).", SIZE_MAX,
         offsetof(sv_metrics_pool, quota_cpus)},
        {"qvisor_pool_memory_quota_bytes", "The resource pool's memory quota, in bytes (pools with one).", SIZE_MAX,
         offsetof(sv_metrics_pool, quota_memory)},
        {"qvisor_pool_gpus_quota", "The resource pool's GPU quota (pools with one).", SIZE_MAX,
         offsetof(sv_metrics_pool, quota_gpus)},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(f); i++) {
        sv_expo_family(e, f[i].name, "gauge", f[i].help);
        for (size_t p = 0; p < node->n_pools; p++) {
            const sv_metrics_pool *pool = &node->pools[p];
            uint64_t v;
            if (f[i].quota != SIZE_MAX)
                memcpy(&v, (const char *)pool + f[i].quota, sizeof v);
            else if (f[i].used != SIZE_MAX)
                memcpy(&v, (const char *)&pool->used + f[i].used, sizeof v);
            else
                v = pool->used.vms;
            if (f[i].quota != SIZE_MAX && v == SV_NO_QUOTA)
                continue;
            sv_expo_u64(e, f[i].name, (const char *[]){"pool", pool->name, NULL}, v);
        }
    }
}

static void render_stores(sv_expo *e, const sv_metrics_node *node) {
    static const struct {
        const char *name;
        const char *help;
        size_t offset;
    } f[] = {
        {"qvisor_storage_pool_free_bytes", "Free space (statvfs f_bavail) of the file system that holds the storage pool, in bytes.",
         offsetof(sv_storage_usage, free)},
        {"qvisor_storage_pool_allocated_bytes", "Virtual sizes of the VM disks in the storage pool, summed, in bytes.",
         offsetof(sv_storage_usage, allocated)},
        {"qvisor_storage_pool_used_bytes", "Bytes the VM disks in the storage pool occupy now.",
         offsetof(sv_storage_usage, used)},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(f); i++) {
        sv_expo_family(e, f[i].name, "gauge", f[i].help);
        for (size_t s = 0; s < node->n_stores; s++) {
            if (!node->stores[s].known)
                continue;
            uint64_t v;
            memcpy(&v, (const char *)&node->stores[s].usage + f[i].offset, sizeof v);
            sv_expo_u64(e, f[i].name, (const char *[]){"storage_pool", node->stores[s].name, NULL}, v);
        }
    }
}

int sv_metrics_render(const sv_metrics_node *node, const sv_vm_stats *vms, size_t n, char **ret, size_t *ret_len) {
    sv_expo e = {0};
    render_daemon(&e, node);
    render_vms(&e, vms, n, node->now);
    if (node->cap)
        render_capacity(&e, node);
    render_allocation(&e, node);
    if (node->cap) /* the GPUs are found with the capacity */
        render_gpus(&e, node);
    render_pools(&e, node);
    render_stores(&e, node);
    char *text = sv_expo_take(&e, ret_len);
    if (!text)
        return -ENOMEM;
    *ret = text;
    return 0;
}
