/* Admission, storage fit and NUMA placement (see admission.h). */
#include "supervisor/resources/admission.h"

#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* ---- arithmetic and wording ----------------------------------------------- */

static uint64_t add_sat(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* x × ratio, rounded down: a limit is never rounded up. */
static uint64_t scale(uint64_t x, double ratio) {
    double p = (double)x * ratio;
    if (p >= 18446744073709551615.0)
        return UINT64_MAX;
    return p <= 0 ? 0 : (uint64_t)p;
}

/* "24.0 GiB", "512.0 MiB", "100 B": the largest unit, with one decimal when
 * that is exact; else the next unit down when that is ("8193.0 MiB" for
 * 8 GiB + 1 MiB, which "8.0 GiB" would hide next to a limit of 8 GiB);
 * else the largest unit with two decimals. */
static void fmt_bytes(uint64_t b, char *buf, size_t size) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    unsigned u = 0;
    while (u + 1 < sizeof units / sizeof units[0] && (b >> (10 * (u + 1))) >= 1)
        u++;
    if (u == 0) {
        snprintf(buf, size, "%llu B", (unsigned long long)b);
        return;
    }
    for (unsigned v = u; v + 1 >= u && v > 0; v--) {
        uint64_t unit = 1ull << (10 * v);
        if (((b % unit) * 10) % unit == 0) {
            snprintf(buf, size, "%.1f %s", (double)b / (double)unit, units[v]);
            return;
        }
    }
    snprintf(buf, size, "%.2f %s", (double)b / (double)(1ull << (10 * u)), units[u]);
}

/* "4.0", "1.5", "0.333" */
static void fmt_ratio(double r, char *buf, size_t size) {
    snprintf(buf, size, "%g", r);
    if (!strpbrk(buf, ".e"))
        snprintf(buf + strlen(buf), size - strlen(buf), ".0");
}

static const char *pool_of(const char *pool) {
    return pool && *pool ? pool : "default";
}

static bool same_vm(const sv_vm_usage *u, const sv_vm_usage *vm) {
    return u->name && vm->name && strcmp(u->name, vm->name) == 0;
}

void sv_usage_sum(const sv_vm_usage *usage, size_t n, const char *pool, int node, sv_usage_total *ret) {
    *ret = (sv_usage_total){0};
    for (size_t i = 0; i < n; i++) {
        const sv_vm_usage *u = &usage[i];
        if (pool && strcmp(pool_of(u->pool), pool) != 0)
            continue;
        if (node >= 0 && u->numa_node != node)
            continue;
        ret->vms++;
        ret->cpus = add_sat(ret->cpus, u->cpus);
        ret->memory = add_sat(ret->memory, u->memory);
        if (u->hugepage_size)
            ret->hugepage_memory = add_sat(ret->hugepage_memory, u->memory);
        ret->gpus = add_sat(ret->gpus, u->gpus);
    }
}

/* The sums over the VMs that count against vm: all of usage (or those of
 * `pool`, or those bound to `node`), less an entry that is vm itself. */
static void counted(const sv_vm_usage *usage, size_t n, const char *pool, int node, const sv_vm_usage *vm,
                    sv_usage_total *ret) {
    sv_usage_sum(usage, n, pool, node, ret);
    for (size_t i = 0; i < n; i++) {
        const sv_vm_usage *u = &usage[i];
        if (!same_vm(u, vm) || (pool && strcmp(pool_of(u->pool), pool) != 0) || (node >= 0 && u->numa_node != node))
            continue;
        /* exact: these were added just above */
        ret->vms--;
        ret->cpus -= u->cpus;
        ret->memory -= u->memory;
        if (u->hugepage_size)
            ret->hugepage_memory -= u->memory;
        ret->gpus -= u->gpus;
    }
}

/* ---- the rules ------------------------------------------------------------ */

/* The whole machine (node -1) or one NUMA node. */
typedef struct scope {
    int node;
    uint64_t cpus;   /* logical CPUs */
    uint64_t memory; /* RAM, bytes */
} scope;

static void scope_where(const scope *s, char *buf, size_t size) {
    if (s->node < 0)
        snprintf(buf, size, "the node");
    else
        snprintf(buf, size, "NUMA node %d", s->node);
}

static int check_cpus(const scope *s, const sv_admission_policy *pol, const sv_usage_total *used,
                      const sv_vm_usage *vm, qv_error *err) {
    uint64_t allowed = scale(s->cpus, pol->cpu_overcommit);
    if (add_sat(used->cpus, vm->cpus) <= allowed)
        return 0;
    char where[32], ratio[32];
    scope_where(s, where, sizeof where);
    fmt_ratio(pol->cpu_overcommit, ratio, sizeof ratio);
    return qv_error_set(err, QV_ECAPACITY,
                        "not enough CPUs%s%s: VMs%s use %llu vCPUs, this one asks %llu, %s allows %llu "
                        "(%llu CPUs × cpu_overcommit %s)",
                        s->node < 0 ? "" : " on ", s->node < 0 ? "" : where, s->node < 0 ? "" : " bound to it",
                        (unsigned long long)used->cpus, (unsigned long long)vm->cpus, where,
                        (unsigned long long)allowed, (unsigned long long)s->cpus, ratio);
}

/* All guest RAM ≤ H + (RAM − H) × ratio, H the hugepage-backed part (vm's
 * included): hugepages are taken from RAM one for one. */
static int check_memory(const scope *s, const sv_admission_policy *pol, const sv_usage_total *used,
                        const sv_vm_usage *vm, qv_error *err) {
    uint64_t all = add_sat(used->memory, vm->memory);
    uint64_t huge = add_sat(used->hugepage_memory, vm->hugepage_size ? vm->memory : 0);
    uint64_t allowed = huge > s->memory ? s->memory : add_sat(huge, scale(s->memory - huge, pol->memory_overcommit));
    if (all <= allowed)
        return 0;
    char where[32], ratio[32], u[32], a[32], l[32], t[32], h[32], why[160];
    scope_where(s, where, sizeof where);
    fmt_ratio(pol->memory_overcommit, ratio, sizeof ratio);
    fmt_bytes(used->memory, u, sizeof u);
    fmt_bytes(vm->memory, a, sizeof a);
    fmt_bytes(allowed, l, sizeof l);
    fmt_bytes(s->memory, t, sizeof t);
    fmt_bytes(huge, h, sizeof h);
    if (huge > s->memory)
        snprintf(why, sizeof why, "%s of RAM; hugepage-backed memory, %s, is never overcommitted", t, h);
    else if (huge) {
        char rest[32];
        fmt_bytes(s->memory - huge, rest, sizeof rest);
        snprintf(why, sizeof why, "%s hugepage-backed, never overcommitted, + the other %s × memory_overcommit %s", h,
                 rest, ratio);
    } else
        snprintf(why, sizeof why, "%s × memory_overcommit %s", t, ratio);
    return qv_error_set(err, QV_ECAPACITY, "not enough memory%s%s: VMs%s use %s, this one asks %s, %s allows %s (%s)",
                        s->node < 0 ? "" : " on ", s->node < 0 ? "" : where, s->node < 0 ? "" : " bound to it", u,
                        a, where, l, why);
}

static void fmt_page(uint64_t page_size, char *buf, size_t size) {
    qv_format_size(page_size, buf, size); /* "2M", "1G" */
}

/* vm's RAM in whole pages against the free pages of its size. */
static int check_hugepages(const sv_capacity *cap, const sv_vm_usage *vm, qv_error *err) {
    if (!vm->hugepage_size)
        return 0;
    char page[32], where[40] = "";
    fmt_page(vm->hugepage_size, page, sizeof page);
    if (vm->numa_node >= 0)
        snprintf(where, sizeof where, " on NUMA node %d", vm->numa_node);
    sv_hugepages hp;
    if (sv_capacity_hugepages(cap, vm->numa_node, vm->hugepage_size, &hp) < 0)
        return qv_error_set(err, QV_ECAPACITY, "no %s hugepages%s: the kernel has no pool of that size (hugepagesz=%s)",
                            page, where, page);
    uint64_t pages = vm->memory / vm->hugepage_size + (vm->memory % vm->hugepage_size != 0);
    if (pages <= hp.free)
        return 0;
    char asked[32], avail[32];
    fmt_bytes(vm->memory, asked, sizeof asked);
    fmt_bytes(hp.free * vm->hugepage_size, avail, sizeof avail);
    return qv_error_set(err, QV_ECAPACITY,
                        "not enough free %s hugepages%s: %llu of %llu pages are in use, this one asks %llu pages (%s), "
                        "%llu are free (%s); hugepage-backed memory is never overcommitted",
                        page, where, (unsigned long long)(hp.total - (hp.free < hp.total ? hp.free : hp.total)),
                        (unsigned long long)hp.total, (unsigned long long)pages, asked, (unsigned long long)hp.free,
                        avail);
}

static int check_quota(const char *what, const char *key, const char *pool, uint64_t used, uint64_t ask,
                       uint64_t quota, bool bytes, qv_error *err) {
    if (quota == SV_NO_QUOTA || add_sat(used, ask) <= quota)
        return 0;
    char u[32], a[32], q[32];
    if (bytes) {
        fmt_bytes(used, u, sizeof u);
        fmt_bytes(ask, a, sizeof a);
        fmt_bytes(quota, q, sizeof q);
    } else {
        snprintf(u, sizeof u, "%llu", (unsigned long long)used);
        snprintf(a, sizeof a, "%llu", (unsigned long long)ask);
        snprintf(q, sizeof q, "%llu", (unsigned long long)quota);
    }
    return qv_error_set(err, QV_ECAPACITY,
                        "not enough %s in pool '%s': its VMs use %s, this one asks %s, the quota is %s (pools.%s.%s)",
                        what, pool, u, a, q, pool, key);
}

/* The rules for vm bound to node (vm->numa_node): that node's CPUs, RAM and
 * hugepages against the VMs bound to it. */
static int check_node(const sv_capacity *cap, const sv_admission_policy *pol, const sv_vm_usage *usage, size_t n,
                      const sv_vm_usage *vm, qv_error *err) {
    const sv_numa_node *node = sv_capacity_node(cap, vm->numa_node);
    scope s = {vm->numa_node, node->n_cpus, node->mem_total};
    sv_usage_total used;
    counted(usage, n, NULL, vm->numa_node, vm, &used);
    int r = check_cpus(&s, pol, &used, vm, err);
    if (r == 0)
        r = check_memory(&s, pol, &used, vm, err);
    if (r == 0)
        r = check_hugepages(cap, vm, err);
    return r;
}

static int no_such_node(const sv_capacity *cap, int node, qv_error *err) {
    char ids[256] = "";
    size_t off = 0;
    for (size_t i = 0; i < cap->n_nodes && off < sizeof ids; i++)
        off += (size_t)snprintf(ids + off, sizeof ids - off, "%s%d", i ? ", " : "", cap->nodes[i].id);
    return qv_error_set(err, EINVAL, "there is no NUMA node %d on this machine (nodes: %s)", node, ids);
}

int sv_admission_policy_init(sv_admission_policy *ret, const sv_config *c, const char *pool, qv_error *err) {
    pool = pool_of(pool);
    const sv_pool *p = sv_config_pool(c, pool);
    if (!p)
        return qv_error_set(err, ENOENT, "no pool '%s' in the node config", pool);
    *ret = (sv_admission_policy){
        .cpu_overcommit = c->cpu_overcommit,
        .memory_overcommit = c->memory_overcommit,
        .pool = p->name,
        .pool_cpus = p->cpus,
        .pool_memory = p->memory,
        .pool_gpus = p->gpus,
    };
    return 0;
}

int sv_admission_check(const sv_capacity *cap, const sv_admission_policy *pol, const sv_vm_usage *usage,
                       size_t n_usage, const sv_vm_usage *vm, qv_error *err) {
    if (vm->numa_node >= 0 && !sv_capacity_node(cap, vm->numa_node))
        return no_such_node(cap, vm->numa_node, err);

    scope whole = {-1, cap->n_cpus, cap->mem_total};
    sv_usage_total used;
    counted(usage, n_usage, NULL, -1, vm, &used);
    int r = check_cpus(&whole, pol, &used, vm, err);
    if (r == 0)
        r = check_memory(&whole, pol, &used, vm, err);
    if (r == 0 && vm->numa_node >= 0)
        r = check_node(cap, pol, usage, n_usage, vm, err);
    else if (r == 0)
        r = check_hugepages(cap, vm, err);
    if (r < 0)
        return r;

    const char *pool = pool_of(vm->pool);
    counted(usage, n_usage, pool, -1, vm, &used);
    r = check_quota("vCPUs", "cpus", pool, used.cpus, vm->cpus, pol->pool_cpus, false, err);
    if (r == 0)
        r = check_quota("memory", "memory", pool, used.memory, vm->memory, pol->pool_memory, true, err);
    if (r == 0)
        r = check_quota("GPUs", "gpus", pool, used.gpus, vm->gpus, pol->pool_gpus, false, err);
    return r;
}

/* ---- placement ------------------------------------------------------------ */

typedef struct candidate {
    int id;
    size_t gpus;
    uint64_t mem_left;
    uint64_t cpus_left;
} candidate;

/* a before b? */
static bool better(const candidate *a, const candidate *b) {
    if (a->gpus != b->gpus)
        return a->gpus > b->gpus;
    if (a->mem_left != b->mem_left)
        return a->mem_left > b->mem_left;
    if (a->cpus_left != b->cpus_left)
        return a->cpus_left > b->cpus_left;
    return a->id < b->id;
}

static uint64_t left(uint64_t allowed, uint64_t used) {
    return allowed > used ? allowed - used : 0;
}

int sv_placement_choose(const sv_capacity *cap, const sv_admission_policy *pol, const sv_vm_usage *usage,
                        size_t n_usage, const sv_vm_usage *vm, const int *gpu_nodes, size_t n_gpu_nodes,
                        qv_error *err) {
    candidate best = {.id = -1};
    char reasons[sizeof err->msg] = "";
    size_t off = 0;
    for (size_t i = 0; i < cap->n_nodes; i++) {
        const sv_numa_node *node = &cap->nodes[i];
        sv_vm_usage here = *vm;
        here.numa_node = node->id;
        qv_error why = {0};
        if (check_node(cap, pol, usage, n_usage, &here, &why) < 0) {
            if (off < sizeof reasons)
                off += (size_t)snprintf(reasons + off, sizeof reasons - off, "; %s", why.msg);
            continue;
        }
        sv_usage_total used;
        counted(usage, n_usage, NULL, node->id, vm, &used);
        candidate c = {.id = node->id};
        for (size_t g = 0; g < n_gpu_nodes; g++)
            c.gpus += gpu_nodes[g] == node->id;
        if (vm->hugepage_size) {
            sv_hugepages hp;
            sv_capacity_hugepages(cap, node->id, vm->hugepage_size, &hp);
            c.mem_left = hp.free > UINT64_MAX / vm->hugepage_size ? UINT64_MAX : hp.free * vm->hugepage_size;
        } else {
            uint64_t huge = used.hugepage_memory > node->mem_total ? node->mem_total : used.hugepage_memory;
            uint64_t allowed = add_sat(huge, scale(node->mem_total - huge, pol->memory_overcommit));
            c.mem_left = left(allowed, used.memory);
        }
        c.cpus_left = left(scale(node->n_cpus, pol->cpu_overcommit), used.cpus);
        if (best.id < 0 || better(&c, &best))
            best = c;
    }
    if (best.id >= 0)
        return best.id;
    char mem[32];
    fmt_bytes(vm->memory, mem, sizeof mem);
    return qv_error_set(err, QV_ECAPACITY, "no NUMA node can take this VM (%llu vCPUs, %s)%s",
                        (unsigned long long)vm->cpus, mem, reasons);
}

/* ---- storage -------------------------------------------------------------- */

int sv_storage_fit(const sv_storage_usage *p, uint64_t size, qv_error *err) {
    uint64_t need = add_sat(p->allocated, size);
    uint64_t room = add_sat(p->free, p->used);
    if (need <= room)
        return SV_STORAGE_FITS;
    if (p->thin_overcommit)
        return SV_STORAGE_THIN;
    char alloc[32], sz[32], rm[32], fr[32], us[32];
    fmt_bytes(p->allocated, alloc, sizeof alloc);
    fmt_bytes(size, sz, sizeof sz);
    fmt_bytes(room, rm, sizeof rm);
    fmt_bytes(p->free, fr, sizeof fr);
    fmt_bytes(p->used, us, sizeof us);
    return qv_error_set(err, QV_ECAPACITY,
                        "not enough space in storage pool '%s': its disks may grow to %s, this one to %s, the pool has "
                        "room for %s (%s free + %s its disks hold); thin overcommit is off for this pool "
                        "(storage_pools.%s.thin_overcommit)",
                        p->pool, alloc, sz, rm, fr, us, p->pool);
}
