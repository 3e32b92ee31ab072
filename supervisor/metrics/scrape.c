/* One scrape: the VMs' sample, then the node, rendered (see scrape.h). */
#include "supervisor/metrics/scrape.h"

#include "cleanup.h"
#include "log.h"
#include "qv-build.h"
#include "util.h"
#include "supervisor/metrics/render.h"
#include "supervisor/resources/resources.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/vm/stats.h"
#include "vfio/vfio.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

struct sv_scrape {
    sv_scrape_ctx ctx;      /* ctx.config: our own reference */
    sv_stats_job *job;      /* the VMs' sample while it waits */
    uint64_t begin_ns;
    bool starting;          /* inside sv_scrape_start */
    bool finished;          /* done has run */
    sv_scrape_done_fn done;
    void *userdata;
};

/* Everything the node section is made of; freed with node_clear(). */
typedef struct node_snap {
    sv_capacity cap;
    bool have_cap;
    sv_vm_usage *all, *running;
    size_t n_all, n_running;
    sv_metrics_numa *numa;
    sv_metrics_pool *pools;
    sv_metrics_store *stores;
    sv_metrics_node node;
} node_snap;

static void node_clear(node_snap *s) {
    sv_capacity_clear(&s->cap);
    free(s->all);
    free(s->running);
    free(s->numa);
    free(s->pools);
    free(s->stores);
}

/* What running VMs bound to or pinned on each NUMA node take. */
static int snap_numa(node_snap *s, sv_registry *r) {
    if (!(s->numa = calloc(s->cap.n_nodes ? s->cap.n_nodes : 1, sizeof *s->numa)))
        return -ENOMEM;
    for (size_t i = 0; i < s->cap.n_nodes; i++) {
        sv_usage_sum(s->running, s->n_running, NULL, s->cap.nodes[i].id, &s->numa[i].bound);
        s->numa[i].pinned_vcpus = sv_resources_pinned_vcpus(r, &s->cap.nodes[i]);
    }
    return 0;
}

/* Each GPU in the first state that applies (render.h). */
static void snap_gpus(node_snap *s, sv_registry *r, const sv_config *c) {
    char dir[PATH_MAX];
    sv_pt_records_dir(c, dir, sizeof dir);
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n_recs = 0;
    if (s->cap.n_gpus)
        vfio_record_list(dir, &recs, &n_recs);
    for (size_t i = 0; i < s->cap.n_gpus; i++) {
        const char *bdf = s->cap.gpus[i].device;
        bool stuck = false;
        for (size_t k = 0; k < n_recs && !stuck; k++)
            stuck = recs[k].state == VFIO_REC_STUCK && strcmp(recs[k].bdf, bdf) == 0;
        const sv_vm *vm = sv_resources_gpu_holder(r, bdf);
        sv_gpu_state st = stuck ? SV_GPU_STUCK
                          : vm && sv_vm_state_has_qemu(sv_vm_state_of(vm)) ? SV_GPU_IN_USE
                          : vm ? SV_GPU_ASSIGNED
                               : SV_GPU_FREE;
        s->node.gpus[st]++;
    }
}

static int snap_pools(node_snap *s, sv_registry *r, const sv_config *c) {
    size_t n = 0, m = 0;
    while (c->pools && c->pools[n])
        n++;
    while (c->storage_pools && c->storage_pools[m])
        m++;
    if (!(s->pools = calloc(n ? n : 1, sizeof *s->pools)) || !(s->stores = calloc(m ? m : 1, sizeof *s->stores)))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const sv_pool *p = c->pools[i];
        s->pools[i] = (sv_metrics_pool){.name = p->name, .quota_cpus = p->cpus, .quota_memory = p->memory,
                                        .quota_gpus = p->gpus};
        sv_usage_sum(s->all, s->n_all, p->name, -1, &s->pools[i].used);
    }
    for (size_t i = 0; i < m; i++) {
        s->stores[i].name = c->storage_pools[i]->name;
        qv_error e = {0};
        s->stores[i].known = sv_resources_storage(r, c, s->stores[i].name, &s->stores[i].usage, &e) == 0;
        if (!s->stores[i].known)
            log_debug("metrics: storage pool %s left out: %s", s->stores[i].name, e.msg);
    }
    s->node.pools = s->pools;
    s->node.n_pools = n;
    s->node.stores = s->stores;
    s->node.n_stores = m;
    return 0;
}

/* The node as `node status` sees it, now. */
static int snap_node(node_snap *s, const sv_scrape_ctx *ctx) {
    sv_registry *r = ctx->registry;
    const sv_config *c = ctx->config;
    qv_error err = {0};
    s->have_cap = sv_resources_capacity(&s->cap, &err) == 0;
    if (!s->have_cap)
        log_debug("metrics: no node capacity in this scrape: %s", err.msg);
    if (sv_resources_usage(r, true, &s->all, &s->n_all) < 0 || sv_resources_usage(r, false, &s->running, &s->n_running) < 0)
        return -ENOMEM;
    sv_usage_sum(s->all, s->n_all, NULL, -1, &s->node.defined);
    sv_usage_sum(s->running, s->n_running, NULL, -1, &s->node.running);
    if (s->have_cap) {
        if (snap_numa(s, r) < 0)
            return -ENOMEM;
        s->node.cap = &s->cap;
        s->node.numa = s->numa;
        snap_gpus(s, r, c);
    }
    s->node.version = QV_VERSION;
    s->node.start_time = (int64_t)ctx->started_wall;
    s->node.cpu_overcommit = c->cpu_overcommit;
    s->node.memory_overcommit = c->memory_overcommit;
    s->node.now = (int64_t)time(NULL);
    return snap_pools(s, r, c);
}

static void scrape_free(sv_scrape *s) {
    sv_config_free((sv_config *)s->ctx.config);
    free(s);
}

static void on_stats(int status, const sv_vm_stats *vms, size_t n, size_t missed, void *userdata) {
    sv_scrape *s = userdata;
    s->job = NULL;
    s->finished = true;
    char *text = NULL;
    size_t len = 0;
    node_snap snap = {0};
    if (status == 0)
        status = snap_node(&snap, &s->ctx);
    if (status == 0) {
        snap.node.missed = missed;
        snap.node.scrape_seconds = (double)(qv_now_ns() - s->begin_ns) / 1e9;
        status = sv_metrics_render(&snap.node, vms, n, &text, &len);
    }
    node_clear(&snap);
    s->done(status, text, len, s->userdata);
    if (!s->starting)
        scrape_free(s);
}

sv_scrape *sv_scrape_start(const sv_scrape_ctx *ctx, sv_scrape_done_fn done, void *userdata) {
    sv_scrape *s = calloc(1, sizeof *s);
    if (!s) {
        done(-ENOMEM, NULL, 0, userdata);
        return NULL;
    }
    *s = (sv_scrape){.ctx = *ctx, .begin_ns = qv_now_ns(), .starting = true, .done = done, .userdata = userdata};
    s->ctx.config = sv_config_ref(ctx->config);
    if (ctx->vmctl)
        s->job = sv_vmctl_stats(ctx->vmctl, SV_SCRAPE_DEADLINE_MS, on_stats, s);
    else
        on_stats(0, NULL, 0, 0, s); /* the engine is shutting down: no VM section */
    s->starting = false;
    if (s->finished) {
        scrape_free(s);
        return NULL;
    }
    return s;
}

void sv_scrape_cancel(sv_scrape *s) {
    if (!s)
        return;
    sv_stats_job_cancel(s->job);
    scrape_free(s);
}
