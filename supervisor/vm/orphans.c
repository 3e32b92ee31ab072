/* Devices nobody runs with: GPUs left on vfio-pci by a VM that no longer
 * runs are given back (at adoption and by `qvisor cleanup`). */
#include "supervisor/vm/engine.h"

/* ---- devices nobody runs with ------------------------------------------- */

typedef struct orphan_sweep {
    sv_vmctl *c;
    json_t *items;   /* [{address, vm, action, detail}] */
    unsigned pending;
    void (*done)(json_t *items, void *userdata);
    void *userdata;
} orphan_sweep;

typedef struct orphan_job {
    orphan_sweep *s;
    vmrt *rt;        /* the VM's runtime when the VM exists */
    char vm[64];
} orphan_job;

static void orphan_sweep_put(orphan_sweep *s) {
    if (--s->pending > 0)
        return;
    if (s->done)
        s->done(s->items, s->userdata);
    json_decref(s->items);
    vm__ctl_unref(s->c);
    free(s);
}

static void orphan_given_back(int status, const qv_error *err, const vfio_plan *plan, void *userdata) {
    (void)plan;
    orphan_job *j = userdata;
    orphan_sweep *s = j->s;
    char dir[PATH_MAX];
    sv_pt_records_dir(cfg(s->c), dir, sizeof dir);
    size_t i;
    json_t *it;
    json_array_foreach(s->items, i, it) {
        const char *vm = json_string_value(json_object_get(it, "vm"));
        const char *action = json_string_value(json_object_get(it, "action"));
        if (!vm || !action || strcmp(vm, j->vm) != 0 || strcmp(action, "give back") != 0)
            continue;
        vfio_record rec;
        const char *bdf = json_string_value(json_object_get(it, "address"));
        if (vfio_record_load(dir, bdf, &rec) == 0) {
            json_object_set_new(it, "action", json_string("failed"));
            json_object_set_new(it, "detail", json_string(rec.reason[0] ? rec.reason : (status < 0 ? err->msg : "?")));
            log_error("cleanup: %s (held for VM %s): giving it back failed: %s", bdf, j->vm,
                      rec.reason[0] ? rec.reason : status < 0 ? err->msg : "?");
        } else {
            json_object_set_new(it, "action", json_string("given back"));
            log_info("cleanup: %s (held for VM %s, which is not running) given back to the host", bdf, j->vm);
        }
    }
    if (j->rt) {
        j->rt->pt_busy = false;
        vm__rt_unref(j->rt);
    }
    free(j);
    orphan_sweep_put(s);
}

static bool vm_runs(const sv_vm *vm) {
    return vm && (sv_vm_state_has_qemu(vm->state) || vm->state == SV_VM_CREATING);
}

void sv_vmctl_release_devices(sv_vmctl *c, bool dry_run, void (*done)(json_t *items, void *userdata),
                              void *userdata) {
    const sv_config *conf = cfg(c);
    char dir[PATH_MAX];
    sv_pt_records_dir(conf, dir, sizeof dir);
    orphan_sweep *s = calloc(1, sizeof *s);
    if (!s) {
        if (done)
            done(NULL, userdata);
        return;
    }
    s->c = c;
    c->refs++;
    s->items = json_array();
    s->pending = 1; /* ours, dropped at the end */
    s->done = done;
    s->userdata = userdata;
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n = 0;
    vfio_record_list(dir, &recs, &n);
    /* devices on vfio-pci that nobody recorded: not ours to touch */
    _cleanup_closedir_ DIR *d = NULL;
    int dfd = qv_sysroot_open("sys/bus/pci/drivers/" VFIO_DRIVER, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0 && !(d = fdopendir(dfd)))
        close(dfd);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char bdf[VFIO_BDF_MAX];
        if (vfio_bdf_normalize(de->d_name, bdf) < 0 || strcmp(bdf, de->d_name) != 0)
            continue;
        bool recorded = false;
        for (size_t i = 0; i < n; i++)
            recorded |= strcmp(recs[i].bdf, bdf) == 0;
        if (!recorded)
            json_array_append_new(s->items,
                                  json_pack("{s:s, s:n, s:s, s:s}", "address", bdf, "vm", "action", "left alone",
                                            "detail", "on vfio-pci, but qvisor has no record of binding it: not ours"));
    }
    /* recorded devices whose VM does not run (or no longer exists); a
     * stuck one is tried again (a person asked for a cleanup): every such
     * record is BOUND again before any give-back is queued, since one
     * give-back covers all of a VM's records and reads them when it runs */
    _cleanup_free_ bool *queued_for = calloc(n ? n : 1, sizeof *queued_for);
    _cleanup_free_ bool *todo = calloc(n ? n : 1, sizeof *todo);
    for (size_t i = 0; todo && i < n; i++) {
        sv_vm *vm = sv_registry_find(c->registry, recs[i].vm);
        vmrt *rt = vm ? vm->rt : NULL;
        if (vm_runs(vm) || (rt && rt->pt_busy))
            continue;
        if (vm && vm__has_gpus(vm) && recs[i].keep && recs[i].state == VFIO_REC_BOUND)
            continue; /* kept on vfio-pci by choice while its VM exists and wants GPUs (vm edit --no-gpus) */
        const char *why = !vm ? "its VM no longer exists" : "its VM is not running";
        json_array_append_new(s->items, json_pack("{s:s, s:s, s:s, s:s}", "address", recs[i].bdf, "vm", recs[i].vm,
                                                  "action", dry_run ? "would give back" : "give back", "detail",
                                                  recs[i].state == VFIO_REC_STUCK ? recs[i].reason : why));
        todo[i] = !dry_run;
        if (todo[i] && recs[i].state == VFIO_REC_STUCK) {
            recs[i].state = VFIO_REC_BOUND;
            vfio_record_save(dir, &recs[i]);
        }
    }
    for (size_t i = 0; queued_for && todo && i < n; i++) {
        if (!todo[i])
            continue;
        sv_vm *vm = sv_registry_find(c->registry, recs[i].vm);
        vmrt *rt = vm ? vm->rt : NULL;
        bool queued = false; /* one give-back per VM covers all its records */
        for (size_t k = 0; k < i; k++)
            queued |= queued_for[k] && strcmp(recs[k].vm, recs[i].vm) == 0;
        if (queued)
            continue;
        queued_for[i] = true;
        orphan_job *j = calloc(1, sizeof *j);
        if (!j)
            continue;
        j->s = s;
        snprintf(j->vm, sizeof j->vm, "%s", recs[i].vm);
        if (rt) {
            rt->pt_busy = true;
            rt->refs++;
            j->rt = rt;
        }
        qv_error err = {0};
        s->pending++;
        /* kept devices too when the VM is gone or its spec has no GPU left */
        if (sv_pt_give_back(c->loop, conf, recs[i].vm, !vm || !vm__has_gpus(vm), orphan_given_back, j, &err) < 0) {
            log_error("cleanup: cannot give back the devices of %s: %s", recs[i].vm, err.msg);
            orphan_given_back(-err.code, &err, NULL, j);
        }
    }
    orphan_sweep_put(s);
}

void sv_vmctl_release_orphans(sv_vmctl *c) {
    sv_vmctl_release_devices(c, false, NULL, NULL);
}
