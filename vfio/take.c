/* A VM's devices: which ones (the plan), taking them for the VM with a
 * durable record first, and giving them back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "vfio/bind.h"

int vfio_gpu_opt_parse(const char *s, vfio_gpu_opt *ret, qv_error *err) {
    vfio_gpu_opt o = {0};
    _cleanup_free_ char *copy = strdup(s ? s : "");
    if (!copy)
        return qv_error_set(err, ENOMEM, "out of memory");
    char *save = NULL;
    char *id = strtok_r(copy, ",", &save);
    if (!id || vfio_bdf_normalize(id, o.bdf) < 0)
        return qv_error_set(err, EINVAL, "gpu '%s': expected a PCI address like 0000:01:00.0", s ? s : "");
    for (char *opt = strtok_r(NULL, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
        if (strcmp(opt, "keep") == 0)
            o.keep = true;
        else if (strcmp(opt, "take-group") == 0)
            o.take_group = true;
        else
            return qv_error_set(err, EINVAL, "gpu '%s': unknown option '%s' (known: keep, take-group)", s, opt);
    }
    *ret = o;
    return 0;
}

int vfio_gpu_spec_resolve(const vfio_gpu_list *l, const char *s, char **ret, qv_error *err) {
    const char *comma = strchr(s, ',');
    char id[64];
    size_t idlen = comma ? (size_t)(comma - s) : strlen(s);
    if (idlen == 0 || idlen >= sizeof id)
        return qv_error_set(err, EINVAL, "gpu '%s': expected a PCI address or an index from `qvisor gpu list`", s);
    memcpy(id, s, idlen);
    id[idlen] = '\0';
    const vfio_gpu *g = vfio_gpu_list_find(l, id);
    if (!g) {
        char bdf[VFIO_BDF_MAX];
        if (vfio_bdf_normalize(id, bdf) < 0)
            return qv_error_set(err, ENODEV, "gpu '%s': no such GPU (see `qvisor gpu list`; %zu found)", id, l->n);
        /* an address that is not in the list: say what it is */
        qv_error e2 = {0};
        vfio_pci_dev d;
        if (vfio_pci_dev_get(bdf, &d, &e2) < 0)
            return qv_error_set(err, ENODEV, "gpu %s: no such PCI device", bdf);
        return qv_error_set(err, EINVAL, "gpu %s: not a display device (class 0x%06x, %s)", bdf, d.class_code,
                            vfio_class_name(d.class_code));
    }
    vfio_gpu_opt o;
    char *spec = NULL;
    if (asprintf(&spec, "%s%s", g->dev.bdf, comma ? comma : "") < 0)
        return qv_error_set(err, ENOMEM, "out of memory");
    int r = vfio_gpu_opt_parse(spec, &o, err);
    free(spec);
    if (r < 0)
        return r;
    if (asprintf(ret, "%s%s%s", o.bdf, o.keep ? ",keep" : "", o.take_group ? ",take-group" : "") < 0)
        return qv_error_set(err, ENOMEM, "out of memory");
    return 0;
}

void vfio_plan_clear(vfio_plan *p) {
    if (!p)
        return;
    free(p->devs);
    p->devs = NULL;
    p->n = 0;
}

bool vfio_plan_has(const vfio_plan *p, const char *bdf) {
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->devs[i].bdf, bdf) == 0)
            return true;
    return false;
}

/* Drivers that hold a device without using it for the host. */
static bool driver_is_placeholder(const char *d) {
    return !d[0] || strcmp(d, VFIO_DRIVER) == 0 || strcmp(d, "pci-stub") == 0;
}

static int plan_add(vfio_plan *p, const vfio_pci_dev *d, bool pass, bool keep, int gpu) {
    vfio_plan_dev *grown = realloc(p->devs, (p->n + 1) * sizeof(*p->devs));
    if (!grown)
        return -ENOMEM;
    p->devs = grown;
    vfio_plan_dev *x = &p->devs[p->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->bdf, sizeof x->bdf, "%s", d->bdf);
    snprintf(x->driver, sizeof x->driver, "%s", d->driver);
    x->pass = pass;
    x->keep = keep;
    x->gpu = gpu;
    x->function = d->bdf[11] - '0';
    return 0;
}

int vfio_plan_make(const vfio_gpu_list *l, const vfio_gpu_opt *gpus, size_t n_gpus, vfio_plan *ret, qv_error *err) {
    vfio_plan p = {0};
    int r = 0;
    for (size_t i = 0; i < n_gpus; i++) {
        vfio_gpu_opt o = gpus[i];
        if (!o.bdf[0]) {
            r = qv_error_set(err, EINVAL, "GPU %zu: expected a PCI address like 0000:01:00.0, not a `gpu list` index",
                             i);
            goto fail;
        }
        const vfio_gpu *g = vfio_gpu_list_find(l, o.bdf);
        if (!g) {
            r = qv_error_set(err, ENODEV, "GPU %s is not on this node (or is no longer a display device)", o.bdf);
            goto fail;
        }
        if (g->dev.iommu_group < 0) {
            r = qv_error_set(err, EOPNOTSUPP,
                             "GPU %s has no IOMMU group: the IOMMU is off; enable VT-d/AMD-Vi in the firmware "
                             "and boot with intel_iommu=on or amd_iommu=on (see `qvisor check`)",
                             o.bdf);
            goto fail;
        }
        if (vfio_plan_has(&p, o.bdf)) {
            r = qv_error_set(err, EINVAL, "GPU %s is named twice (or shares an IOMMU group with another one named)",
                             o.bdf);
            goto fail;
        }
        /* the GPU first, then its slot, then the rest of its group */
        if (plan_add(&p, &g->dev, true, o.keep, (int)i) < 0)
            goto oom;
        for (size_t k = 0; k < g->n_group; k++) {
            const vfio_pci_dev *m = &g->group[k];
            if (strcmp(m->bdf, g->dev.bdf) == 0 || m->bridge || vfio_plan_has(&p, m->bdf))
                continue;
            bool slot = vfio_bdf_same_slot(m->bdf, g->dev.bdf);
            if (!slot && !o.take_group && !driver_is_placeholder(m->driver)) {
                r = qv_error_set(err, EBUSY,
                                 "GPU %s shares IOMMU group %d with %s (%s, driver %s), which the host is using; "
                                 "the whole group must go to vfio-pci: pass --gpu %s,take-group to take it from "
                                 "the host too, or move the card to a slot with its own group",
                                 o.bdf, g->dev.iommu_group, m->bdf, vfio_class_name(m->class_code), m->driver,
                                 o.bdf);
                goto fail;
            }
            if (plan_add(&p, m, slot, o.keep, (int)i) < 0)
                goto oom;
        }
        /* functions of the slot outside the group (unusual): they go along */
        for (size_t k = 0; k < g->n_companions; k++)
            if (!vfio_plan_has(&p, g->companions[k].bdf) && plan_add(&p, &g->companions[k], true, o.keep, (int)i) < 0)
                goto oom;
    }
    *ret = p;
    return 0;
oom:
    r = qv_error_set(err, ENOMEM, "out of memory");
fail:
    vfio_plan_clear(&p);
    return r;
}

static void mark_stuck(const char *dir, vfio_record *rec, const qv_error *e) {
    rec->state = VFIO_REC_STUCK;
    snprintf(rec->reason, sizeof rec->reason, "%s", e->msg);
    (void)vfio_record_save(dir, rec);
}

/* Gives back one recorded device; its record goes when that worked. */
static int give_back_one(vfio_ctx *ctx, const char *dir, vfio_record *rec, qv_error *err) {
    rec->state = VFIO_REC_RETURNING;
    int r = vfio_record_save(dir, rec);
    if (r < 0)
        return qv_error_set(err, r, "%s: cannot write its record in %s: %s", rec->bdf, dir, strerror(-r));
    r = vfio_release_one(ctx, rec->bdf, rec->driver, err);
    if (r == -ECANCELED)
        return r; /* abandoned after a timeout: the job's owner marks it */
    if (r < 0) {
        mark_stuck(dir, rec, err);
        return r;
    }
    return vfio_record_remove(dir, rec->bdf);
}

int vfio_take(vfio_ctx *ctx, const char *dir, const char *vm, const vfio_plan *p, qv_error *err) {
    size_t done = 0;
    int r = 0;
    for (; done < p->n; done++) {
        const vfio_plan_dev *d = &p->devs[done];
        vfio_record rec = {0};
        snprintf(rec.bdf, sizeof rec.bdf, "%s", d->bdf);
        snprintf(rec.vm, sizeof rec.vm, "%s", vm);
        rec.keep = d->keep;
        char now[VFIO_DRIVER_MAX];
        r = vfio_current_driver(d->bdf, now);
        if (r < 0) {
            qv_error_set(err, r, "%s: %s", d->bdf, r == -ENODEV ? "the device vanished" : strerror(-r));
            break;
        }
        vfio_record old;
        bool have_old = vfio_record_load(dir, d->bdf, &old) == 0;
        if (have_old && strcmp(old.vm, vm) != 0) {
            r = qv_error_set(err, EBUSY, "%s: held by VM '%s' (%s)", d->bdf, old.vm,
                             vfio_rec_state_to_string(old.state));
            break;
        }
        if (have_old && old.state == VFIO_REC_STUCK) {
            r = qv_error_set(err, EIO, "%s: stuck since an earlier operation (%s); see `qvisor check`", d->bdf,
                             old.reason);
            break;
        }
        if (strcmp(now, VFIO_DRIVER) == 0 && have_old)
            snprintf(rec.driver, sizeof rec.driver, "%s", old.driver); /* kept from last time: same origin */
        else
            snprintf(rec.driver, sizeof rec.driver, "%s", strcmp(now, VFIO_DRIVER) == 0 ? "" : now);
        rec.state = VFIO_REC_BINDING;
        /* durable before the first write: a crash from here on is repairable */
        r = vfio_record_save(dir, &rec);
        if (r < 0) {
            qv_error_set(err, r, "%s: cannot write its record in %s: %s", d->bdf, dir, strerror(-r));
            break;
        }
        r = vfio_bind_one(ctx, d->bdf, err);
        if (r < 0) {
            if (r == -ECANCELED)
                return r;
            done++; /* half-done: give it back too */
            break;
        }
        rec.state = VFIO_REC_BOUND;
        if ((r = vfio_record_save(dir, &rec)) < 0) {
            qv_error_set(err, r, "%s: cannot write its record in %s: %s", d->bdf, dir, strerror(-r));
            done++;
            break;
        }
    }
    if (r == 0)
        return 0;
    /* roll back, newest first */
    while (done-- > 0) {
        vfio_record rec;
        if (vfio_record_load(dir, p->devs[done].bdf, &rec) < 0)
            continue;
        rec.keep = false;
        qv_error e2 = {0};
        if (give_back_one(ctx, dir, &rec, &e2) == -ECANCELED)
            break;
    }
    return r;
}

int vfio_give_back(vfio_ctx *ctx, const char *dir, const char *vm, bool include_kept, qv_error *err) {
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n = 0;
    int r = vfio_record_list(dir, &recs, &n);
    if (r < 0)
        return qv_error_set(err, r, "cannot read %s: %s", dir, strerror(-r));
    int first = 0;
    /* newest function first mirrors the take order's reverse closely enough:
     * companions before the GPU */
    for (size_t i = n; i-- > 0;) {
        vfio_record *rec = &recs[i];
        if (strcmp(rec->vm, vm) != 0 || rec->state == VFIO_REC_STUCK || (rec->keep && !include_kept))
            continue;
        qv_error e = {0};
        r = give_back_one(ctx, dir, rec, &e);
        if (r == -ECANCELED)
            return first ? first : qv_error_set(err, ECANCELED, "%s", e.msg);
        if (r < 0 && !first) {
            first = r;
            *err = e;
        }
    }
    return first;
}
