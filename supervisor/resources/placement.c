/* NUMA node and CPUs for a start, and thread pinning (see placement.h). */
#include "supervisor/resources/placement.h"

#include "cleanup.h"
#include "sysroot.h"
#include "util.h"
#include "supervisor/resources/resources.h"
#include "vfio/bind.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void sv_start_placement_clear(sv_start_placement *p) {
    free(p->cpus);
    *p = (sv_start_placement){.numa_node = -1};
}

static bool has_cpu(const sv_capacity *cap, unsigned cpu) {
    for (size_t i = 0; i < cap->n_nodes; i++)
        for (size_t j = 0; j < cap->nodes[i].n_cpus; j++)
            if (cap->nodes[i].cpus[j] == cpu)
                return true;
    return false;
}

/* "0-3,8" for messages; "?" when it does not fit. */
static void cpus_text(const unsigned *cpus, size_t n, char *buf, size_t size) {
    if (qv_format_cpulist(cpus, n, buf, size) < 0)
        snprintf(buf, size, "?");
}

static void online_text(const sv_capacity *cap, char *buf, size_t size) {
    size_t n = 0;
    for (size_t i = 0; i < cap->n_nodes; i++)
        n += cap->nodes[i].n_cpus;
    _cleanup_free_ unsigned *all = calloc(n ? n : 1, sizeof *all);
    if (!all) {
        snprintf(buf, size, "?");
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < cap->n_nodes; i++)
        for (size_t j = 0; j < cap->nodes[i].n_cpus; j++) {
            /* nodes are disjoint and each sorted: insert in order */
            unsigned c = cap->nodes[i].cpus[j];
            size_t at = k;
            while (at > 0 && all[at - 1] > c)
                at--;
            memmove(&all[at + 1], &all[at], (k - at) * sizeof *all);
            all[at] = c;
            k++;
        }
    cpus_text(all, k, buf, size);
}

/* The NUMA node of each of the spec's GPUs that the capacity knows (-1 for
 * the others). */
static size_t gpu_nodes(const sv_capacity *cap, const sv_vmspec *spec, int *ret, size_t max) {
    size_t n = 0;
    for (size_t g = 0; g < spec->n_gpu_opts && n < max; g++) {
        const char *bdf = spec->gpu_opts[g].bdf;
        int node = -1;
        for (size_t i = 0; bdf[0] && i < cap->n_gpus; i++)
            if (strcasecmp(cap->gpus[i].device, bdf) == 0)
                node = cap->gpus[i].numa_node;
        ret[n++] = node;
    }
    return n;
}

int sv_start_place(const sv_capacity *cap, const sv_admission_policy *policy, const sv_vm_usage *usage,
                   size_t n_usage, const sv_vmspec *spec, sv_start_placement *ret, qv_error *err) {
    sv_start_placement p = {.numa_node = -1};
    uint64_t page = sv_hugepage_bytes(spec->hugepages);
    if (page && spec->memory % page != 0)
        return qv_error_set(err, EINVAL, "memory %lluM is not a whole number of %s hugepages",
                            (unsigned long long)(spec->memory >> 20), page == (1ull << 30) ? "1G" : "2M");

    if (spec->numa_want.mode == SV_NUMA_AUTO) {
        if (!cap->numa || cap->n_nodes == 1) {
            p.numa_node = cap->nodes[0].id; /* nowhere else to go; admission says whether it fits */
        } else {
            sv_vm_usage me;
            sv_resources_spec_usage(spec, -1, &me);
            int nodes[64];
            size_t n = gpu_nodes(cap, spec, nodes, QV_ARRAY_SIZE(nodes));
            int r = sv_placement_choose(cap, policy, usage, n_usage, &me, nodes, n, err);
            if (r < 0)
                return r;
            p.numa_node = r;
        }
    } else if (spec->numa_want.mode == SV_NUMA_NODE) {
        unsigned id = spec->numa_want.node;
        if (!sv_capacity_node(cap, (int)id)) {
            char ids[256] = "";
            for (size_t i = 0; i < cap->n_nodes; i++)
                snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%d", i ? ", " : "", cap->nodes[i].id);
            return qv_error_set(err, EINVAL, "numa: there is no NUMA node %u on this machine (nodes: %s)", id, ids);
        }
        p.numa_node = (int)id;
    }
    p.bind_memory = p.numa_node >= 0 && cap->numa;

    if (spec->pin_cpus) {
        if (!(p.cpus = malloc(spec->n_pin_cpus * sizeof *p.cpus)))
            return qv_error_set(err, ENOMEM, "out of memory");
        memcpy(p.cpus, spec->pin_cpus, spec->n_pin_cpus * sizeof *p.cpus);
        p.n_cpus = spec->n_pin_cpus;
        for (size_t i = 0; i < p.n_cpus; i++)
            if (!has_cpu(cap, p.cpus[i])) {
                char online[256];
                online_text(cap, online, sizeof online);
                unsigned bad = p.cpus[i];
                sv_start_placement_clear(&p);
                return qv_error_set(err, EINVAL, "pin: CPU %u is not an online CPU of this host (online: %s)", bad,
                                    online);
            }
    } else if (p.numa_node >= 0) {
        const sv_numa_node *node = sv_capacity_node(cap, p.numa_node);
        if (node && node->n_cpus) {
            p.cpus = malloc(node->n_cpus * sizeof *p.cpus);
            if (!p.cpus)
                return qv_error_set(err, ENOMEM, "out of memory");
            memcpy(p.cpus, node->cpus, node->n_cpus * sizeof *p.cpus);
            p.n_cpus = node->n_cpus;
        }
        /* a CPU-less node: memory only; admission refuses vCPUs there */
    }
    *ret = p;
    return 0;
}

/* ---- pinning -------------------------------------------------------------- */

static void cpu_set_freep(cpu_set_t **s) {
    if (*s)
        CPU_FREE(*s);
}

int sv_pin_threads(pid_t pid, const pid_t *vcpu_tids, size_t n_vcpus, const unsigned *cpus, size_t n_cpus,
                   size_t *ret_emulator, qv_error *err) {
    if (n_cpus == 0)
        return qv_error_set(err, EINVAL, "no CPUs to pin to");
    char list[256];
    cpus_text(cpus, n_cpus, list, sizeof list);
    unsigned max = 0;
    for (size_t i = 0; i < n_cpus; i++)
        max = cpus[i] > max ? cpus[i] : max;
    _cleanup_(cpu_set_freep) cpu_set_t *set = CPU_ALLOC(max + 1);
    if (!set)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t size = CPU_ALLOC_SIZE(max + 1);
    CPU_ZERO_S(size, set);
    for (size_t i = 0; i < n_cpus; i++)
        CPU_SET_S(cpus[i], size, set);

    char rel[64];
    snprintf(rel, sizeof rel, "proc/%d/task", (int)pid);
    char **tasks = NULL;
    int n = qv_sysroot_list(rel, &tasks);
    if (n < 0)
        return qv_error_set(err, -n, "cannot list the threads of QEMU pid %d: %s", (int)pid, strerror(-n));
    int rc = 0;
    /* a vCPU thread must be one of QEMU's: never pin another process on its word */
    for (size_t i = 0; i < n_vcpus && rc == 0; i++) {
        bool found = false;
        for (int t = 0; t < n && !found; t++) {
            uint64_t tid;
            found = qv_parse_uint(tasks[t], 1, INT32_MAX, &tid) == 0 && (pid_t)tid == vcpu_tids[i];
        }
        if (!found)
            rc = qv_error_set(err, ESRCH, "vCPU %zu: thread %d is not a thread of QEMU pid %d", i,
                              (int)vcpu_tids[i], (int)pid);
        else if (sched_setaffinity(vcpu_tids[i], size, set) < 0)
            rc = qv_error_set(err, errno, "cannot pin vCPU %zu (thread %d) to CPUs %s: %s", i, (int)vcpu_tids[i],
                              list, strerror(errno));
    }
    size_t emulator = 0;
    for (int t = 0; t < n && rc == 0; t++) {
        uint64_t tid;
        if (qv_parse_uint(tasks[t], 1, INT32_MAX, &tid) < 0)
            continue;
        bool vcpu = false;
        for (size_t i = 0; i < n_vcpus && !vcpu; i++)
            vcpu = vcpu_tids[i] == (pid_t)tid;
        if (vcpu)
            continue;
        if (sched_setaffinity((pid_t)tid, size, set) < 0) {
            if (errno == ESRCH)
                continue; /* a worker thread that ended meanwhile */
            rc = qv_error_set(err, errno, "cannot pin QEMU thread %d to CPUs %s: %s", (int)tid, list,
                              strerror(errno));
            break;
        }
        emulator++;
    }
    qv_strv_free(tasks);
    if (rc == 0 && ret_emulator)
        *ret_emulator = emulator;
    return rc;
}
