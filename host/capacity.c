/* Node capacity from sysfs and procfs (see capacity.h). */
#include "host/capacity.h"

#include "cleanup.h"
#include "log.h"
#include "sysroot.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NODE_DIR "sys/devices/system/node"

/* ---- small readers -------------------------------------------------------- */

/* An unsigned decimal file ("512\n"). */
static int read_u64(const char *rel, uint64_t *ret) {
    char line[64];
    int r = qv_sysroot_read_line(rel, line, sizeof line);
    if (r < 0)
        return r;
    return qv_parse_uint(line, 0, UINT64_MAX, ret) < 0 ? -EBADMSG : 0;
}

/* A signed decimal file ("-1\n", "1\n"). */
static int read_int(const char *rel, int *ret) {
    char line[64];
    int r = qv_sysroot_read_line(rel, line, sizeof line);
    if (r < 0)
        return r;
    bool neg = line[0] == '-';
    uint64_t v;
    if (qv_parse_uint(line + neg, 0, (uint64_t)INT_MAX + neg, &v) < 0)
        return -EBADMSG;
    *ret = neg ? (int)-(int64_t)v : (int)v;
    return 0;
}

/* "NAME" followed by digits only: the number. */
static bool numbered(const char *name, const char *prefix, unsigned *ret) {
    size_t n = strlen(prefix);
    uint64_t v;
    if (strncmp(name, prefix, n) != 0 || qv_parse_uint(name + n, 0, INT_MAX, &v) < 0)
        return false;
    *ret = (unsigned)v;
    return true;
}

/* The value of `key` in a meminfo text, in bytes.  Lines read
 * "MemTotal:       16318428 kB" (proc/meminfo) or
 * "Node 0 MemTotal:       16318428 kB" (a node's meminfo). */
static int meminfo_value(const char *text, const char *key, uint64_t *ret) {
    size_t klen = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        const char *p = line;
        if (strncmp(p, "Node ", 5) == 0) {
            p += 5;
            while (isdigit((unsigned char)*p))
                p++;
            while (*p == ' ')
                p++;
        }
        if (strncmp(p, key, klen) != 0 || p[klen] != ':')
            continue;
        p += klen + 1;
        while (*p == ' ' || *p == '\t')
            p++;
        uint64_t v = 0;
        if (!isdigit((unsigned char)*p))
            return -EBADMSG;
        while (isdigit((unsigned char)*p)) {
            if (v > (UINT64_MAX - 9) / 10)
                return -EBADMSG;
            v = v * 10 + (uint64_t)(*p++ - '0');
        }
        if (strncmp(p, " kB", 3) == 0) {
            if (v > UINT64_MAX / 1024)
                return -EBADMSG;
            v *= 1024;
        }
        *ret = v;
        return 0;
    }
    return -ENOENT;
}

static int read_meminfo(const char *rel, uint64_t *ret_total, uint64_t *ret_free, qv_error *err) {
    _cleanup_free_ char *text = NULL;
    int r = qv_sysroot_read(rel, &text, NULL);
    if (r < 0)
        return qv_error_set(err, r, "cannot read /%s: %s", rel, strerror(-r));
    uint64_t total, avail;
    if (meminfo_value(text, "MemTotal", &total) < 0 || meminfo_value(text, "MemFree", &avail) < 0)
        return qv_error_set(err, EBADMSG, "/%s: no MemTotal and MemFree lines in kB", rel);
    *ret_total = total;
    *ret_free = avail;
    return 0;
}

/* A CPU list file; an empty one (a CPU-less node) gives no CPUs. */
static int read_cpulist(const char *rel, unsigned **ret, size_t *ret_n, qv_error *err) {
    _cleanup_free_ char *line = NULL;
    int r = qv_sysroot_read(rel, &line, NULL);
    if (r < 0)
        return qv_error_set(err, r, "cannot read /%s: %s", rel, strerror(-r));
    line[strcspn(line, "\n")] = '\0';
    if (!line[0]) {
        *ret = NULL;
        *ret_n = 0;
        return 0;
    }
    r = qv_parse_cpulist(line, ret, ret_n);
    if (r == -ENOMEM)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (r < 0)
        return qv_error_set(err, EBADMSG, "/%s: '%s' is not a CPU list", rel, line);
    return 0;
}

static int cmp_hugepages(const void *a, const void *b) {
    const sv_hugepages *x = a, *y = b;
    return x->page_size < y->page_size ? -1 : x->page_size > y->page_size;
}

/* The hugepage pools under dir ("…/hugepages": hugepages-2048kB/ …); a
 * missing dir gives none. */
static int read_hugepages(const char *dir, sv_hugepages **ret, size_t *ret_n, qv_error *err) {
    _cleanup_(qv_strv_freep) char **names = NULL;
    int n = qv_sysroot_list(dir, &names);
    *ret = NULL;
    *ret_n = 0;
    if (n == -ENOENT || n == 0)
        return 0;
    if (n < 0)
        return qv_error_set(err, n, "cannot list /%s: %s", dir, strerror(-n));
    _cleanup_free_ sv_hugepages *hp = calloc((size_t)n, sizeof *hp);
    if (!hp)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        /* "hugepages-2048kB" */
        char digits[32];
        uint64_t kb;
        const char *p = names[i] + strlen("hugepages-");
        size_t len = strlen(names[i]);
        if (strncmp(names[i], "hugepages-", 10) != 0 || len < 13 || strcmp(names[i] + len - 2, "kB") != 0 ||
            len - 12 >= sizeof digits)
            continue;
        memcpy(digits, p, len - 12);
        digits[len - 12] = '\0';
        if (qv_parse_uint(digits, 1, UINT64_MAX >> 10, &kb) < 0)
            continue;
        char rel[PATH_MAX];
        sv_hugepages *h = &hp[k];
        h->page_size = kb << 10;
        snprintf(rel, sizeof rel, "%s/%s/nr_hugepages", dir, names[i]);
        int r = read_u64(rel, &h->total);
        if (r == 0) {
            snprintf(rel, sizeof rel, "%s/%s/free_hugepages", dir, names[i]);
            r = read_u64(rel, &h->free);
        }
        if (r < 0)
            return qv_error_set(err, r, "cannot read /%s: %s", rel, strerror(-r));
        k++;
    }
    qv_qsort(hp, k, sizeof *hp, cmp_hugepages);
    *ret = TAKE_PTR(hp);
    *ret_n = k;
    return 0;
}

/* ---- cores ---------------------------------------------------------------- */

typedef struct core_id {
    int package;
    int core;
} core_id;

/* The (package, core) of a CPU; a CPU without topology files counts as a
 * core of its own. */
static core_id cpu_core(unsigned cpu) {
    char rel[PATH_MAX];
    core_id id = {-1, (int)cpu};
    int package, core;
    snprintf(rel, sizeof rel, "sys/devices/system/cpu/cpu%u/topology/physical_package_id", cpu);
    if (read_int(rel, &package) < 0)
        return id;
    snprintf(rel, sizeof rel, "sys/devices/system/cpu/cpu%u/topology/core_id", cpu);
    if (read_int(rel, &core) < 0)
        return id;
    return (core_id){package, core};
}

static int cmp_core(const void *a, const void *b) {
    const core_id *x = a, *y = b;
    if (x->package != y->package)
        return x->package < y->package ? -1 : 1;
    return x->core < y->core ? -1 : x->core > y->core;
}

/* Distinct cores among the CPUs of every node. */
static int count_cores(sv_capacity *c) {
    size_t all = 0;
    for (size_t i = 0; i < c->n_nodes; i++)
        all += c->nodes[i].n_cpus;
    _cleanup_free_ core_id *ids = calloc(all ? all : 1, sizeof *ids);
    if (!ids)
        return -ENOMEM;
    size_t at = 0, total = 0;
    for (size_t i = 0; i < c->n_nodes; i++) {
        sv_numa_node *n = &c->nodes[i];
        core_id *mine = ids + at;
        for (size_t j = 0; j < n->n_cpus; j++)
            mine[j] = cpu_core(n->cpus[j]);
        qv_qsort(mine, n->n_cpus, sizeof *mine, cmp_core);
        n->n_cores = 0;
        for (size_t j = 0; j < n->n_cpus; j++)
            n->n_cores += j == 0 || cmp_core(&mine[j - 1], &mine[j]) != 0;
        at += n->n_cpus;
    }
    /* a core is on one node; counting globally guards against odd tables */
    qv_qsort(ids, all, sizeof *ids, cmp_core);
    for (size_t j = 0; j < all; j++)
        total += j == 0 || cmp_core(&ids[j - 1], &ids[j]) != 0;
    c->n_cores = total;
    return 0;
}

/* ---- nodes ---------------------------------------------------------------- */

static void node_clear(sv_numa_node *n) {
    free(n->cpus);
    free(n->hugepages);
    *n = (sv_numa_node){0};
}

static int read_node(unsigned id, sv_numa_node *n, qv_error *err) {
    char rel[PATH_MAX];
    n->id = (int)id;
    snprintf(rel, sizeof rel, NODE_DIR "/node%u/cpulist", id);
    int r = read_cpulist(rel, &n->cpus, &n->n_cpus, err);
    if (r < 0)
        return r;
    snprintf(rel, sizeof rel, NODE_DIR "/node%u/meminfo", id);
    if ((r = read_meminfo(rel, &n->mem_total, &n->mem_free, err)) < 0)
        return r;
    snprintf(rel, sizeof rel, NODE_DIR "/node%u/hugepages", id);
    return read_hugepages(rel, &n->hugepages, &n->n_hugepages, err);
}

static int cmp_uint(const void *a, const void *b) {
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

/* The nodes under sys/devices/system/node; 0 nodes when there is no such
 * directory or it lists none. */
static int read_numa_nodes(sv_capacity *c, qv_error *err) {
    _cleanup_(qv_strv_freep) char **names = NULL;
    int n = qv_sysroot_list(NODE_DIR, &names);
    if (n == -ENOENT || n == 0)
        return 0;
    if (n < 0)
        return qv_error_set(err, n, "cannot list /" NODE_DIR ": %s", strerror(-n));
    _cleanup_free_ unsigned *ids = calloc((size_t)n, sizeof *ids);
    if (!ids)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t k = 0;
    for (int i = 0; i < n; i++)
        if (numbered(names[i], "node", &ids[k]))
            k++;
    if (!k)
        return 0;
    qv_qsort(ids, k, sizeof *ids, cmp_uint);
    c->nodes = calloc(k, sizeof *c->nodes);
    if (!c->nodes)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < k; i++) {
        c->n_nodes = i + 1; /* so that clear() frees what this one read */
        int r = read_node(ids[i], &c->nodes[i], err);
        if (r < 0)
            return r;
    }
    c->numa = true;
    return 0;
}

/* No NUMA in the kernel: one node 0 from the machine-wide files. */
static int read_flat_node(sv_capacity *c, qv_error *err) {
    c->nodes = calloc(1, sizeof *c->nodes);
    if (!c->nodes)
        return qv_error_set(err, ENOMEM, "out of memory");
    c->n_nodes = 1;
    sv_numa_node *n = &c->nodes[0];
    int r = read_cpulist("sys/devices/system/cpu/online", &n->cpus, &n->n_cpus, err);
    if (r < 0)
        return r;
    if ((r = read_meminfo("proc/meminfo", &n->mem_total, &n->mem_free, err)) < 0)
        return r;
    return read_hugepages("sys/kernel/mm/hugepages", &n->hugepages, &n->n_hugepages, err);
}

/* ---- devices -------------------------------------------------------------- */

/* -1 (unknown) for a node that does not exist; then the only node when
 * there is just one (see capacity.h). */
static int normalise_node(const sv_capacity *c, int node) {
    if (node >= 0 && !sv_capacity_node(c, node))
        node = -1;
    if (node < 0 && c->n_nodes == 1)
        node = c->nodes[0].id;
    return node;
}

static int read_nic(const sv_capacity *c, const char *name, sv_nic *nic) {
    char rel[PATH_MAX], target[PATH_MAX];
    snprintf(nic->name, sizeof nic->name, "%s", name);
    snprintf(rel, sizeof rel, "sys/class/net/%s/device", name);
    if (qv_sysroot_readlink(rel, target, sizeof target) == 0) {
        const char *base = strrchr(target, '/');
        snprintf(nic->device, sizeof nic->device, "%s", base ? base + 1 : target);
    }
    int node = -1;
    snprintf(rel, sizeof rel, "sys/class/net/%s/device/numa_node", name);
    if (read_int(rel, &node) < 0)
        node = -1;
    nic->numa_node = normalise_node(c, node);
    uint64_t total, num = 0;
    snprintf(rel, sizeof rel, "sys/class/net/%s/device/sriov_totalvfs", name);
    if (read_u64(rel, &total) == 0 && total <= UINT_MAX) {
        nic->sriov = true;
        nic->sriov_totalvfs = (unsigned)total;
        snprintf(rel, sizeof rel, "sys/class/net/%s/device/sriov_numvfs", name);
        if (read_u64(rel, &num) == 0 && num <= total)
            nic->sriov_numvfs = (unsigned)num;
    }
    snprintf(rel, sizeof rel, "sys/class/net/%s/device/physfn", name);
    nic->virtfn = qv_sysroot_exists(rel) > 0;
    return 0;
}

/* Interfaces with a device behind them; virtual ones (lo, bridges, TAPs,
 * veths) have no `device` link and are left out. */
static int read_nics(sv_capacity *c, qv_error *err) {
    _cleanup_(qv_strv_freep) char **names = NULL;
    int n = qv_sysroot_list("sys/class/net", &names);
    if (n == -ENOENT || n == 0)
        return 0;
    if (n < 0)
        return qv_error_set(err, n, "cannot list /sys/class/net: %s", strerror(-n));
    c->nics = calloc((size_t)n, sizeof *c->nics);
    if (!c->nics)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        char rel[PATH_MAX];
        if (strlen(names[i]) >= sizeof c->nics[0].name)
            continue;
        snprintf(rel, sizeof rel, "sys/class/net/%s/device", names[i]);
        if (qv_sysroot_exists(rel) <= 0)
            continue;
        read_nic(c, names[i], &c->nics[c->n_nics++]);
    }
    return 0;
}

int sv_capacity_add_gpu(sv_capacity *c, const char *device, const char *model, int numa_node) {
    sv_gpu *grown = realloc(c->gpus, (c->n_gpus + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    c->gpus = grown;
    sv_gpu *g = &c->gpus[c->n_gpus++];
    *g = (sv_gpu){.numa_node = normalise_node(c, numa_node)};
    snprintf(g->device, sizeof g->device, "%s", device);
    snprintf(g->model, sizeof g->model, "%s", model ? model : "");
    return 0;
}

int sv_capacity_add_gpus(sv_capacity *c, const vfio_gpu_list *l) {
    for (size_t i = 0; i < l->n; i++) {
        const vfio_pci_dev *d = &l->gpus[i].dev;
        char model[256];
        snprintf(model, sizeof model, "%s%s%s", d->vendor_name, d->vendor_name[0] && d->device_name[0] ? " " : "",
                 d->device_name);
        int r = sv_capacity_add_gpu(c, d->bdf, model, d->numa_node);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- the whole ------------------------------------------------------------ */

void sv_capacity_clear(sv_capacity *c) {
    if (!c)
        return;
    for (size_t i = 0; i < c->n_nodes; i++)
        node_clear(&c->nodes[i]);
    free(c->nodes);
    free(c->nics);
    free(c->gpus);
    *c = (sv_capacity){0};
}

int sv_capacity_read(sv_capacity *ret, qv_error *err) {
    return sv_capacity_read_parts(ret, SV_CAP_ALL, err);
}

int sv_capacity_read_parts(sv_capacity *ret, unsigned parts, qv_error *err) {
    sv_capacity c = {0};
    int r = read_numa_nodes(&c, err);
    if (r == 0 && !c.numa) {
        log_debug("capacity: no NUMA nodes under %s/" NODE_DIR ": one node from /proc/meminfo",
                  qv_sysroot_path());
        r = read_flat_node(&c, err);
    }
    if (r == 0 && c.numa && c.n_nodes == 1) {
        /* One node is the whole machine, and /proc/meminfo says what the
         * kernel can hand out.  They agree on ordinary machines; where a
         * node's meminfo lags (memory initialised lazily, as in some
         * microVMs: node0 6 GiB, /proc/meminfo 23.5 GiB), the machine's
         * count is the truth. */
        uint64_t total, free_bytes;
        qv_error e = {0};
        if (read_meminfo("proc/meminfo", &total, &free_bytes, &e) == 0 && total != c.nodes[0].mem_total) {
            log_debug("capacity: node 0 reports %llu bytes, /proc/meminfo %llu: using /proc/meminfo",
                      (unsigned long long)c.nodes[0].mem_total, (unsigned long long)total);
            c.nodes[0].mem_total = total;
            c.nodes[0].mem_free = free_bytes;
        }
    }
    if (r == 0 && (parts & SV_CAP_CORES) && count_cores(&c) < 0)
        r = qv_error_set(err, ENOMEM, "out of memory");
    if (r == 0 && (parts & SV_CAP_NICS))
        r = read_nics(&c, err);
    if (r < 0) {
        sv_capacity_clear(&c);
        return r;
    }
    for (size_t i = 0; i < c.n_nodes; i++) {
        c.n_cpus += c.nodes[i].n_cpus;
        c.mem_total += c.nodes[i].mem_total;
        c.mem_free += c.nodes[i].mem_free;
    }
    *ret = c;
    return 0;
}

const sv_numa_node *sv_capacity_node(const sv_capacity *c, int id) {
    for (size_t i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].id == id)
            return &c->nodes[i];
    return NULL;
}

int sv_capacity_hugepages(const sv_capacity *c, int node, uint64_t page_size, sv_hugepages *ret) {
    *ret = (sv_hugepages){.page_size = page_size};
    bool found = false;
    for (size_t i = 0; i < c->n_nodes; i++) {
        const sv_numa_node *n = &c->nodes[i];
        if (node >= 0 && n->id != node)
            continue;
        for (size_t j = 0; j < n->n_hugepages; j++) {
            if (n->hugepages[j].page_size != page_size)
                continue;
            ret->total += n->hugepages[j].total;
            ret->free += n->hugepages[j].free;
            found = true;
        }
    }
    return found ? 0 : -ENOENT;
}

/* ---- JSON ----------------------------------------------------------------- */

static json_t *hugepages_json(const sv_hugepages *h, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_pack("{s:I, s:I, s:I}", "page_size", (json_int_t)h[i].page_size, "total",
                                           (json_int_t)h[i].total, "free", (json_int_t)h[i].free));
    return a;
}

static json_t *node_json(int node) {
    return node >= 0 ? json_integer(node) : json_null();
}

json_t *sv_capacity_to_json(const sv_capacity *c) {
    /* machine-wide hugepages: one entry per size, summed over nodes */
    size_t n_sizes = 0;
    _cleanup_free_ sv_hugepages *sizes = NULL;
    for (size_t i = 0; i < c->n_nodes; i++)
        n_sizes += c->nodes[i].n_hugepages;
    if (n_sizes && !(sizes = calloc(n_sizes, sizeof *sizes)))
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < c->n_nodes; i++)
        for (size_t j = 0; j < c->nodes[i].n_hugepages; j++) {
            uint64_t size = c->nodes[i].hugepages[j].page_size;
            bool seen = false;
            for (size_t m = 0; m < k; m++)
                seen |= sizes[m].page_size == size;
            if (!seen)
                sv_capacity_hugepages(c, -1, size, &sizes[k++]);
        }
    qv_qsort(sizes, k, sizeof *sizes, cmp_hugepages);

    json_t *nodes = json_array();
    for (size_t i = 0; nodes && i < c->n_nodes; i++) {
        const sv_numa_node *n = &c->nodes[i];
        /* at most "NNNN," per CPU */
        _cleanup_free_ char *list = malloc(n->n_cpus * 6 + 1);
        if (!list || qv_format_cpulist(n->cpus, n->n_cpus, list, n->n_cpus * 6 + 1) < 0) {
            json_decref(nodes);
            return NULL;
        }
        json_array_append_new(nodes,
                              json_pack("{s:i, s:s, s:I, s:I, s:I, s:I, s:o}", "id", n->id, "cpulist", list, "cpus",
                                        (json_int_t)n->n_cpus, "cores", (json_int_t)n->n_cores, "memory_total",
                                        (json_int_t)n->mem_total, "memory_free", (json_int_t)n->mem_free,
                                        "hugepages", hugepages_json(n->hugepages, n->n_hugepages)));
    }
    json_t *nics = json_array();
    for (size_t i = 0; nics && i < c->n_nics; i++) {
        const sv_nic *nic = &c->nics[i];
        json_t *sriov = nic->sriov ? json_pack("{s:I, s:I}", "total_vfs", (json_int_t)nic->sriov_totalvfs,
                                               "num_vfs", (json_int_t)nic->sriov_numvfs)
                                   : json_null();
        json_array_append_new(nics, json_pack("{s:s, s:s, s:o, s:o, s:b}", "name", nic->name, "device", nic->device,
                                              "numa_node", node_json(nic->numa_node), "sriov", sriov, "virtfn",
                                              nic->virtfn));
    }
    json_t *gpus = json_array();
    for (size_t i = 0; gpus && i < c->n_gpus; i++) {
        const sv_gpu *g = &c->gpus[i];
        json_array_append_new(gpus, json_pack("{s:s, s:s, s:o}", "device", g->device, "model", g->model, "numa_node",
                                              node_json(g->numa_node)));
    }
    return json_pack("{s:b, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o}", "numa", c->numa, "cpus", (json_int_t)c->n_cpus,
                     "cores", (json_int_t)c->n_cores, "memory_total", (json_int_t)c->mem_total, "memory_free",
                     (json_int_t)c->mem_free, "hugepages", hugepages_json(sizes, k), "nodes", nodes, "nics", nics,
                     "gpus", gpus);
}
