/* GPU passthrough glue between the lifecycle engine and vfio/. */
#include "supervisor/vm/gpus.h"
#include "supervisor/vm/vm-record.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "util.h"
#include "log.h"
#include "vfio/job.h"

void sv_pt_records_dir(const sv_config *c, char *buf, size_t len) {
    snprintf(buf, len, "%s/vfio", c->state_dir);
}

/* ---- create ---------------------------------------------------------------- */

/* Which VM (other than `self`) holds a device of plan p: by its spec, or by
 * a record. */
static const char *holder(sv_registry *r, const vfio_gpu_list *l, const char *self, const vfio_plan *p,
                          const vfio_record *recs, size_t n_recs, char bdf_out[VFIO_BDF_MAX]) {
    for (size_t i = 0; i < n_recs; i++)
        if (strcmp(recs[i].vm, self) != 0 && vfio_plan_has(p, recs[i].bdf)) {
            snprintf(bdf_out, VFIO_BDF_MAX, "%s", recs[i].bdf);
            return recs[i].vm;
        }
    for (sv_vm *vm = sv_registry_first(r); vm; vm = vm->next) {
        if (strcmp(vm->name, self) == 0 || !vm->spec->n_gpu_opts)
            continue;
        vfio_plan other = {0};
        qv_error e = {0};
        if (vfio_plan_make(l, vm->spec->gpu_opts, vm->spec->n_gpu_opts, &other, &e) < 0) {
            /* its plan does not hold today: compare the addresses it names */
            for (size_t g = 0; g < vm->spec->n_gpu_opts; g++) {
                const vfio_gpu_opt *o = &vm->spec->gpu_opts[g];
                if (o->bdf[0] && vfio_plan_has(p, o->bdf)) {
                    snprintf(bdf_out, VFIO_BDF_MAX, "%s", o->bdf);
                    return vm->name;
                }
            }
            continue;
        }
        for (size_t i = 0; i < other.n; i++)
            if (vfio_plan_has(p, other.devs[i].bdf)) {
                snprintf(bdf_out, VFIO_BDF_MAX, "%s", other.devs[i].bdf);
                vfio_plan_clear(&other);
                return vm->name;
            }
        vfio_plan_clear(&other);
    }
    return NULL;
}

int sv_pt_prepare_spec(sv_registry *r, const sv_config *c, sv_vmspec *spec, qv_error *err) {
    if (!spec->gpus || !spec->gpus[0])
        return 0;
    vfio_gpu_list l = {0};
    int rc = vfio_gpu_list_get(&l, err);
    if (rc < 0)
        return rc;
    vfio_plan p = {0};
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n_recs = 0;
    for (char **g = spec->gpus; *g; g++) {
        char *norm = NULL;
        if ((rc = vfio_gpu_spec_resolve(&l, *g, &norm, err)) < 0)
            goto out;
        free(*g);
        *g = norm;
    }
    if ((rc = sv_vmspec_parse_lists(spec, err)) < 0 ||
        (rc = vfio_plan_make(&l, spec->gpu_opts, spec->n_gpu_opts, &p, err)) < 0)
        goto out;
    char dir[PATH_MAX];
    sv_pt_records_dir(c, dir, sizeof dir);
    vfio_record_list(dir, &recs, &n_recs);
    char bdf[VFIO_BDF_MAX];
    const char *who = holder(r, &l, spec->name, &p, recs, n_recs, bdf);
    if (who)
        rc = qv_error_set(err, EBUSY, "%s is held by VM '%s' (a GPU, a function of its slot or its IOMMU group)",
                          bdf, who);
out:
    vfio_plan_clear(&p);
    vfio_gpu_list_clear(&l);
    return rc;
}

/* ---- jobs ------------------------------------------------------------------- */

/* The thread's part: owned by the job (freed after the work returned). */
typedef struct work_arg {
    char dir[PATH_MAX];
    char vm[64];
    bool take;
    bool include_kept;
    vfio_plan plan;
} work_arg;

static void work_arg_free(void *p) {
    work_arg *a = p;
    vfio_plan_clear(&a->plan);
    free(a);
}

static int work(vfio_ctx *ctx, void *p, qv_error *err) {
    work_arg *a = p;
    if (a->take)
        return vfio_take(ctx, a->dir, a->vm, &a->plan, err);
    return vfio_give_back(ctx, a->dir, a->vm, a->include_kept, err);
}

/* The loop's part. */
typedef struct call {
    work_arg *arg; /* valid in the done callback unless the job timed out */
    char dir[PATH_MAX];
    char vm[64];
    sv_pt_done_fn done;
    void *userdata;
} call;

/* A job that hung: whatever it was moving is stuck until a person looks. */
static void mark_stuck(const char *dir, const char *vm, const qv_error *err) {
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n = 0;
    if (vfio_record_list(dir, &recs, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(recs[i].vm, vm) != 0 ||
            (recs[i].state != VFIO_REC_BINDING && recs[i].state != VFIO_REC_RETURNING))
            continue;
        /* only the device the hung step names; the others were not touched yet */
        if (!strstr(err->msg, recs[i].bdf))
            continue;
        recs[i].state = VFIO_REC_STUCK;
        snprintf(recs[i].reason, sizeof recs[i].reason, "%s", err->msg);
        if (vfio_record_save(dir, &recs[i]) == 0)
            log_error("GPU passthrough: %s is stuck: %s", recs[i].bdf, err->msg);
    }
}

static void on_job_done(int status, const qv_error *err, void *userdata) {
    call *c = userdata;
    if (status == -ETIMEDOUT)
        mark_stuck(c->dir, c->vm, err);
    c->done(status, err, status == -ETIMEDOUT ? NULL : &c->arg->plan, c->userdata);
    free(c);
}

static int start_job(uv_loop_t *loop, work_arg *a, size_t n_devices, uint64_t per_device_ms, sv_pt_done_fn done,
                     void *userdata, qv_error *err) {
    call *c = calloc(1, sizeof *c);
    if (!c) {
        work_arg_free(a);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    c->arg = a;
    snprintf(c->dir, sizeof c->dir, "%s", a->dir);
    snprintf(c->vm, sizeof c->vm, "%s", a->vm);
    c->done = done;
    c->userdata = userdata;
    /* each device: up to four writes and a verification, within its budget */
    uint64_t timeout = per_device_ms * (n_devices ? n_devices : 1) + 1000;
    int r = vfio_job_start(loop, timeout, work, a, work_arg_free, on_job_done, c);
    if (r < 0) {
        free(c);
        work_arg_free(a);
        return qv_error_set(err, r, "cannot start the passthrough work: %s", strerror(-r));
    }
    return 0;
}

int sv_pt_take(uv_loop_t *loop, const sv_config *c, const sv_vmspec *spec, sv_pt_done_fn done, void *userdata,
               qv_error *err) {
    work_arg *a = calloc(1, sizeof *a);
    if (!a)
        return qv_error_set(err, ENOMEM, "out of memory");
    sv_pt_records_dir(c, a->dir, sizeof a->dir);
    snprintf(a->vm, sizeof a->vm, "%s", spec->name);
    a->take = true;
    /* the plan is made here, from what the node shows now: devices move */
    vfio_gpu_list l = {0};
    int r = vfio_gpu_list_get(&l, err);
    if (r == 0)
        r = vfio_plan_make(&l, spec->gpu_opts, spec->n_gpu_opts, &a->plan, err);
    vfio_gpu_list_clear(&l);
    if (r < 0) {
        work_arg_free(a);
        return r;
    }
    return start_job(loop, a, a->plan.n, c->vfio_sysfs_timeout_ms, done, userdata, err);
}

int sv_pt_give_back(uv_loop_t *loop, const sv_config *c, const char *vm, bool include_kept, sv_pt_done_fn done,
                    void *userdata, qv_error *err) {
    work_arg *a = calloc(1, sizeof *a);
    if (!a)
        return qv_error_set(err, ENOMEM, "out of memory");
    sv_pt_records_dir(c, a->dir, sizeof a->dir);
    snprintf(a->vm, sizeof a->vm, "%s", vm);
    a->include_kept = include_kept;
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n = 0, mine = 0;
    vfio_record_list(a->dir, &recs, &n);
    for (size_t i = 0; i < n; i++)
        mine += strcmp(recs[i].vm, vm) == 0;
    return start_job(loop, a, mine, c->vfio_sysfs_timeout_ms, done, userdata, err);
}

bool sv_pt_holds(const sv_config *c, const char *vm) {
    char dir[PATH_MAX];
    sv_pt_records_dir(c, dir, sizeof dir);
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n = 0;
    vfio_record_list(dir, &recs, &n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(recs[i].vm, vm) == 0)
            return true;
    return false;
}

uint64_t sv_pt_start_timeout_ms(const sv_vmspec *spec, uint64_t base_ms) {
    return spec->n_gpu_opts ? base_ms * 4 : base_ms;
}

/* ---- gpu list ------------------------------------------------------------------ */

static json_t *dev_json_full(const vfio_pci_dev *d) {
    char cls[16], ven[8], dev[8];
    snprintf(cls, sizeof cls, "0x%06x", d->class_code);
    snprintf(ven, sizeof ven, "%04x", d->vendor);
    snprintf(dev, sizeof dev, "%04x", d->device);
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s?, s:b, s:i}", "address", d->bdf, "class", cls,
                          "class_name", vfio_class_name(d->class_code), "vendor_id", ven, "device_id", dev, "vendor",
                          d->vendor_name, "device", d->device_name, "driver", d->driver[0] ? d->driver : NULL,
                          "bridge", d->bridge, "numa_node", d->numa_node);
    if (j)
        json_object_set_new(j, "iommu_group", d->iommu_group < 0 ? json_null() : json_integer(d->iommu_group));
    return j;
}

int sv_pt_gpu_list_json(sv_registry *r, const sv_config *c, json_t **ret, qv_error *err) {
    vfio_gpu_list l = {0};
    int rc = vfio_gpu_list_get(&l, err);
    if (rc < 0)
        return rc;
    char dir[PATH_MAX];
    sv_pt_records_dir(c, dir, sizeof dir);
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n_recs = 0;
    vfio_record_list(dir, &recs, &n_recs);
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < l.n; i++) {
        const vfio_gpu *g = &l.gpus[i];
        json_t *j = dev_json_full(&g->dev);
        if (!j)
            continue;
        json_object_set_new(j, "index", json_integer(g->index));
        json_t *comp = json_array(), *grp = json_array();
        for (size_t k = 0; k < g->n_companions; k++)
            json_array_append_new(comp, dev_json_full(&g->companions[k]));
        for (size_t k = 0; g->dev.iommu_group >= 0 && k < g->n_group; k++)
            json_array_append_new(grp, dev_json_full(&g->group[k]));
        json_object_set_new(j, "companions", comp);
        json_object_set_new(j, "group", grp);
        /* held by: the VM whose spec names it (or its group), then the records */
        const char *vm_name = NULL, *state = NULL, *reason = NULL;
        for (size_t k = 0; k < n_recs; k++)
            if (strcmp(recs[k].bdf, g->dev.bdf) == 0) {
                vm_name = recs[k].vm;
                state = vfio_rec_state_to_string(recs[k].state);
                reason = recs[k].reason[0] ? recs[k].reason : NULL;
            }
        if (!vm_name) {
            vfio_plan_dev only;
            memset(&only, 0, sizeof only);
            snprintf(only.bdf, sizeof only.bdf, "%s", g->dev.bdf);
            vfio_plan one = {.devs = &only, .n = 1};
            char bdf[VFIO_BDF_MAX];
            vm_name = holder(r, &l, "", &one, NULL, 0, bdf);
        }
        json_object_set_new(j, "vm", vm_name ? json_string(vm_name) : json_null());
        json_object_set_new(j, "binding", state ? json_string(state) : json_null());
        if (reason)
            json_object_set_new(j, "stuck_reason", json_string(reason));
        json_array_append_new(arr, j);
    }
    vfio_gpu_list_clear(&l);
    if (!arr)
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret = json_pack("{s:o}", "gpus", arr);
    return *ret ? 0 : qv_error_set(err, ENOMEM, "out of memory");
}
