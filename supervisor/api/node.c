/* Control methods about the node: node.status (what the node has and what
 * its VMs use), gpu.list, cleanup. */
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "util.h"
#include "supervisor/metrics/expo.h"
#include "supervisor/resources/resources.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/vm/sweep.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static json_t *quota(uint64_t v) {
    return v == SV_NO_QUOTA ? json_null() : json_integer((json_int_t)v);
}

static json_t *total_json(const sv_usage_total *t) {
    return json_pack("{s:I, s:I, s:I, s:I, s:I}", "vms", (json_int_t)t->vms, "cpus", (json_int_t)t->cpus, "memory",
                     (json_int_t)t->memory, "hugepage_memory", (json_int_t)t->hugepage_memory, "gpus",
                     (json_int_t)t->gpus);
}

void sv_api_node_status(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    const sv_config *c = d->config;
    qv_error err = {0};
    sv_capacity cap = {0};
    if (sv_resources_capacity(&cap, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    _cleanup_free_ sv_vm_usage *all = NULL, *running = NULL;
    size_t n_all = 0, n_running = 0;
    if (sv_resources_usage(d->registry, true, &all, &n_all) < 0 ||
        sv_resources_usage(d->registry, false, &running, &n_running) < 0) {
        sv_capacity_clear(&cap);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    json_t *res = sv_capacity_to_json(&cap);
    sv_usage_total t;

    /* the node as a whole: limits are capacity × overcommit */
    json_t *usage = json_object();
    sv_usage_sum(all, n_all, NULL, -1, &t);
    json_object_set_new(usage, "defined", total_json(&t));
    sv_usage_sum(running, n_running, NULL, -1, &t);
    json_object_set_new(usage, "running", total_json(&t));
    json_object_set_new(res, "usage", usage);
    json_object_set_new(res, "overcommit",
                        json_pack("{s:f, s:f}", "cpu", c->cpu_overcommit, "memory", c->memory_overcommit));
    json_object_set_new(res, "limits",
                        json_pack("{s:I, s:I}", "cpus", (json_int_t)((double)cap.n_cpus * c->cpu_overcommit),
                                  "memory", (json_int_t)((double)cap.mem_total * c->memory_overcommit)));

    /* per NUMA node: what running VMs bound to it take */
    size_t i;
    json_t *node;
    json_array_foreach(json_object_get(res, "nodes"), i, node) {
        int id = (int)json_integer_value(json_object_get(node, "id"));
        sv_usage_sum(running, n_running, NULL, id, &t);
        json_object_set_new(node, "bound", total_json(&t));
        /* vCPUs of running VMs pinned (--pin) to any CPU of this node */
        const sv_numa_node *nn = sv_capacity_node(&cap, id);
        json_object_set_new(node, "pinned_vcpus",
                            json_integer((json_int_t)sv_resources_pinned_vcpus(d->registry, nn)));
        json_object_set_new(node, "vcpu_limit",
                            json_integer((json_int_t)((double)(nn ? nn->n_cpus : 0) * c->cpu_overcommit)));
    }
    /* GPUs: who holds each */
    json_t *gpu;
    json_array_foreach(json_object_get(res, "gpus"), i, gpu) {
        const sv_vm *vm = sv_resources_gpu_holder(d->registry, json_string_value(json_object_get(gpu, "device")));
        json_object_set_new(gpu, "vm", vm ? json_string(sv_vm_name(vm)) : json_null());
        json_object_set_new(gpu, "running", json_boolean(vm && sv_vm_state_has_qemu(sv_vm_state_of(vm))));
    }
    /* resource pools: every defined VM counts against the quotas */
    json_t *pools = json_array();
    for (sv_pool **p = c->pools; p && *p; p++) {
        sv_usage_sum(all, n_all, (*p)->name, -1, &t);
        json_array_append_new(pools, json_pack("{s:s, s:o, s:{s:o, s:o, s:o}}", "name", (*p)->name, "used",
                                               total_json(&t), "quota", "cpus", quota((*p)->cpus), "memory",
                                               quota((*p)->memory), "gpus", quota((*p)->gpus)));
    }
    json_object_set_new(res, "pools", pools);
    /* storage pools */
    json_t *stores = json_array();
    for (sv_storage_pool **p = c->storage_pools; p && *p; p++) {
        sv_storage_usage su;
        qv_error e = {0};
        json_t *row = json_pack("{s:s, s:s, s:b, s:b}", "name", (*p)->name, "path", (*p)->path, "thin_overcommit",
                                (*p)->thin_overcommit, "default", strcmp((*p)->name, c->default_storage_pool) == 0);
        if (sv_resources_storage(d->registry, c, (*p)->name, &su, &e) == 0) {
            json_object_set_new(row, "free", json_integer((json_int_t)su.free));
            json_object_set_new(row, "allocated", json_integer((json_int_t)su.allocated));
            json_object_set_new(row, "used", json_integer((json_int_t)su.used));
        } else {
            json_object_set_new(row, "error", json_string(e.msg));
        }
        json_array_append_new(stores, row);
    }
    json_object_set_new(res, "storage_pools", stores);
    sv_capacity_clear(&cap);
    sv_ctl_reply(req, res);
}

/* ---- metrics ---------------------------------------------------------------- */

static void metrics_done(int status, char *text, size_t len, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0) {
        sv_ctl_reply_error(req, -status, "cannot collect the metrics: %s", strerror(-status));
        return;
    }
    json_t *res = json_pack("{s:s, s:s%}", "content_type", SV_EXPO_CONTENT_TYPE, "text", text, len);
    free(text);
    if (!res) {
        sv_ctl_reply_error(req, EIO, "the metrics text is not UTF-8");
        return;
    }
    sv_ctl_reply(req, res);
}

/* The text the HTTP endpoint serves, whether or not metrics.listen is set.
 * Not cancelled when the client goes: the scrape ends within its deadline
 * and the reply is dropped. */
void sv_api_node_metrics(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    sv_scrape_ctx ctx = sv_daemon_scrape_ctx(d);
    sv_scrape_start(&ctx, metrics_done, req);
}

/* ---- GPUs ------------------------------------------------------------------- */

void sv_api_gpu_list(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    json_t *res = NULL;
    qv_error err = {0};
    if (sv_pt_gpu_list_json(d->registry, d->config, &res, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    sv_ctl_reply(req, res);
}

/* ---- cleanup ----------------------------------------------------------------- */

typedef struct sweep_job {
    uv_work_t work;
    sv_daemon *d;
    sv_ctl_req *req;
    sv_config *config;
    sv_sweep_vm *vms;
    size_t n_vms;
    bool dry_run;
    json_t *result;
    int status;
    qv_error err;
} sweep_job;

static void sweep_work(uv_work_t *w) {
    sweep_job *job = w->data;
    job->status = sv_sweep_run(job->config, job->vms, job->n_vms, job->dry_run, &job->result, &job->err);
}

static void sweep_job_free(sweep_job *job) {
    sv_config_free(job->config);
    free(job->vms);
    free(job);
}

/* Devices go after the files and processes: an orphan QEMU that held one
 * is gone by now. */
static void devices_swept(json_t *items, void *userdata) {
    sweep_job *job = userdata;
    json_t *actions = json_object_get(job->result, "actions");
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        json_t *vm = json_object_get(it, "vm");
        json_array_append_new(actions, json_pack("{s:s, s:O, s:O, s:O, s:O}", "what", "vfio device", "path",
                                                 json_object_get(it, "address"), "vm", vm, "action",
                                                 json_object_get(it, "action"), "detail",
                                                 json_object_get(it, "detail")));
    }
    sv_ctl_reply(job->req, job->result);
    sweep_job_free(job);
}

static void sweep_after(uv_work_t *w, int status) {
    sweep_job *job = w->data;
    if (status < 0) {
        sv_ctl_reply_error(job->req, ECANCELED, "cancelled");
    } else if (job->status < 0) {
        sv_ctl_reply_qv_error(job->req, &job->err);
    } else {
        sv_vmctl_release_devices(job->d->vmctl, job->dry_run, devices_swept, job);
        return;
    }
    sweep_job_free(job);
}

void sv_api_cleanup(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    json_t *dry = json_object_get(params, "dry_run");
    if (dry && !json_is_boolean(dry)) {
        sv_ctl_reply_error(req, EINVAL, "\"dry_run\" must be a boolean");
        return;
    }
    size_t n = 0;
    for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = sv_registry_next(vm))
        n++;
    sweep_job *job = calloc(1, sizeof *job);
    if (!job || !(job->config = sv_config_ref(d->config)) || !(job->vms = calloc(n ? n : 1, sizeof *job->vms))) {
        if (job)
            sv_config_free(job->config);
        free(job);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    /* what the daemon supervises, as of now: the worker must not touch the registry */
    for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = sv_registry_next(vm)) {
        sv_sweep_vm *v = &job->vms[job->n_vms++];
        snprintf(v->name, sizeof v->name, "%s", sv_vm_name(vm));
        v->pid = sv_vm_pid(vm);
        sv_vm_state st = sv_vm_state_of(vm);
        v->busy = st == SV_VM_CREATING || st == SV_VM_REMOVING || st == SV_VM_STARTING || st == SV_VM_STOPPING;
    }
    job->req = req;
    job->d = d;
    job->dry_run = json_is_true(dry);
    job->work.data = job;
    int r = uv_queue_work(&d->loop, &job->work, sweep_work, sweep_after);
    if (r < 0) {
        sv_config_free(job->config);
        free(job->vms);
        free(job);
        sv_ctl_reply_error(req, -r, "cannot queue the cleanup: %s", uv_strerror(r));
    }
}
