/* vm edit and vm resize (docs/lifecycle.md, "Edit and resize"): the
 * requests, the checks and the actions of the table's `edit` and `grow`.
 *
 * An edit replaces a stopped (or crashed) VM's spec: the new one is checked
 * against the node as create checks a spec (GPUs another VM holds, MACs and
 * nat addresses, admission with every defined VM but this one), made the
 * VM's spec in memory (what the next admission counts) and written to
 * spec.json on a worker (atomic and durable: a daemon killed at any point
 * leaves the old spec or the new one); a write that fails puts the old spec
 * back.  A resize grows the disk: QMP block_resize when the VM has a QEMU,
 * qemu-img resize on a worker when it has none (the growth claimed in its
 * storage pool meanwhile), then the new size goes into spec.json and
 * state.json.  While either is under
 * way the VM is held (rt->held): the door refuses a start, a remove, and
 * another edit or resize with EBUSY. */
#include "supervisor/vm/engine.h"

#include "spec/vmedit.h"

/* ---- spec.json, replaced on a worker ------------------------------------- */

typedef struct spec_job {
    uv_work_t work;
    vmrt *rt;
    char *dir;
    char *text;
    size_t len;
    sv_vmspec *spec;     /* grow: the new spec, swapped in once written; edit: the old one, put
                          * back if the write fails (the new one is in place from the start) */
    bool grow;           /* a resize: vm->disk_size becomes spec->disk */
    uint64_t from_size;  /* grow: the size before */
    uint64_t to_size;    /* grow: the size now */
    const char *how;     /* grow: "block_resize", "qemu-img resize" */
    sv_vm_done_fn done;
    void *userdata;
    int status;
    qv_error err;
} spec_job;

static void spec_job_free(spec_job *job) {
    free(job->dir);
    free(job->text);
    sv_vmspec_free(job->spec);
    free(job);
}

static void spec_work(uv_work_t *w) {
    spec_job *job = w->data;
    sv_crash_point(job->grow ? "resize-before-spec" : "edit-before-spec");
    job->status = sv_vm_spec_write(job->dir, job->text, job->len, &job->err);
    if (job->status == 0)
        sv_crash_point(job->grow ? "resize-after-spec" : "edit-after-spec");
}

static void fail(sv_vm_done_fn done, void *userdata, const qv_error *err) {
    if (done)
        done(-err->code, NULL, err, userdata);
}

/* A resize's answer: {"name", "disk_size", "previous_size", "how"}. */
static void answer_grow(const char *name, uint64_t from, uint64_t to, const char *how, sv_vm_done_fn done,
                        void *userdata) {
    if (!done)
        return;
    json_t *res = json_pack("{s:s, s:I, s:I, s:s}", "name", name, "disk_size", (json_int_t)to, "previous_size",
                            (json_int_t)from, "how", how);
    done(0, res, NULL, userdata);
    json_decref(res);
}

/* ... once state.json has the new size too. */
static void grow_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    spec_job *job = userdata;
    if (status < 0) {
        qv_error e = *err;
        qv_error_prefix(&e, "the disk was grown and its spec records it, but state.json could not be saved");
        fail(job->done, job->userdata, &e);
    } else {
        answer_grow(rt->vm ? rt->vm->name : "", job->from_size, job->to_size, job->how, job->done, job->userdata);
    }
    spec_job_free(job);
}

/* Nothing holds the VM any more. */
static void release(vmrt *rt) {
    rt->held = NULL;
    if (rt->vm)
        rt->vm->disk_pending = 0;
}

static void spec_after(uv_work_t *w, int status) {
    spec_job *job = w->data;
    vmrt *rt = job->rt;
    sv_vm *vm = rt->vm;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, -status, "the spec write was cancelled");
    release(rt);
    if (!vm) {
        qv_error e = {0};
        qv_error_set(&e, ECANCELED, "the daemon is stopping; spec.json holds the old spec or the new one");
        fail(job->done, job->userdata, &e);
        spec_job_free(job);
    } else if (job->status < 0) {
        log_warning("VM %s: %s", vm->name, job->err.msg);
        if (job->grow) {
            qv_error_prefix(&job->err, "the disk of VM '%s' was grown to %llu bytes, but its spec keeps the old size",
                            vm->name, (unsigned long long)job->spec->disk);
        } else { /* the old spec again, in memory as on disk */
            sv_vmspec_free(vm->spec);
            vm->spec = TAKE_PTR(job->spec);
        }
        fail(job->done, job->userdata, &job->err);
        spec_job_free(job);
    } else if (job->grow) {
        sv_vmspec_free(vm->spec);
        vm->spec = TAKE_PTR(job->spec);
        vm->disk_size = vm->spec->disk;
        job->to_size = vm->disk_size;
        log_info("VM %s: disk grown to %llu bytes (%s)", vm->name, (unsigned long long)vm->disk_size, job->how);
        vm__emit(rt, "resize", json_pack("{s:I, s:I, s:s}", "from", (json_int_t)job->from_size, "to",
                                         (json_int_t)vm->disk_size, "how", job->how));
        vm__save(rt, grow_saved, job);
    } else {
        log_info("VM %s: spec edited", vm->name);
        vm__emit(rt, "edit", json_object());
        if (job->done)
            job->done(0, NULL, NULL, job->userdata);
        spec_job_free(job); /* and the old spec with it */
    }
    vm__rt_unref(rt);
}

/* Writes `spec` (taken) as the VM's spec.json on a worker; rt stays held
 * until then.  An edit's spec is the VM's at once (what admission sees
 * from now on: two edits of two VMs cannot both count the other's old
 * values), the old one put back if the write fails; a resize's once it is
 * written (its growth is claimed meanwhile: vm->disk_pending).  Answers
 * through done. */
static void spec_commit(vmrt *rt, sv_vmspec *spec, bool grow, uint64_t from_size, const char *how,
                        sv_vm_done_fn done, void *userdata) {
    spec_job *job = calloc(1, sizeof *job);
    qv_error e = {0};
    if (job) {
        *job = (spec_job){.rt = rt, .spec = spec, .grow = grow, .from_size = from_size, .how = how, .done = done,
                          .userdata = userdata};
        job->dir = strdup(rt->vm->dir);
        job->text = sv_vm_spec_text(spec, &job->len);
    }
    if (!job || !job->dir || !job->text) {
        if (job)
            spec_job_free(job);
        else
            sv_vmspec_free(spec);
        release(rt);
        qv_error_set(&e, ENOMEM, "out of memory");
        fail(done, userdata, &e);
        return;
    }
    if (!grow) { /* the new spec in place, the old one kept to put back */
        job->spec = rt->vm->spec;
        rt->vm->spec = spec;
    }
    job->work.data = job;
    rt->refs++;
    if (uv_queue_work(rt->c->loop, &job->work, spec_work, spec_after) < 0) {
        spec_work(&job->work); /* cannot happen with a work callback */
        spec_after(&job->work, 0);
    }
}

/* ---- edit ------------------------------------------------------------------ */

int sv_vm_edit(sv_vmctl *c, sv_vm *vm, sv_vmspec *spec, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return vm__request(c, vm, SV_EV_EDIT,
                       &(vm_event_arg){.spec = spec, .done = done, .userdata = userdata, .err = err});
}

/* edit's check, with the VM where it is: the new spec against the node, as
 * create checks one (api/vm.c), this VM's own GPUs, MACs, addresses and
 * reservation not counted against it. */
int vm__check_edit(vmrt *rt, const vm_event_arg *a) {
    sv_vmctl *c = rt->c;
    sv_vm *vm = rt->vm;
    sv_vmspec *spec = a->spec;
    if (!spec || !spec->name || strcmp(spec->name, vm->name) != 0)
        return qv_error_set(a->err, EINVAL, "vm edit: the new spec names another VM");
    if (rt->pt_busy)
        return qv_error_set(a->err, EBUSY, "VM '%s': its GPUs are being given back; try again in a moment",
                            vm->name);
    int r = vm__snapshot_idle(rt, false, false, a->err); /* a snapshot operation in flight (snapshot.c) */
    if (r < 0)
        return r;
    r = sv_pt_prepare_spec(c->registry, cfg(c), spec, a->err);
    if (r == 0)
        r = sv_net_prepare_spec_avoiding(c->registry, cfg(c), spec, vm->spec->nics, vm->spec->n_nics, a->err);
    if (r < 0)
        return r;
    int numa = spec->numa_want.mode == SV_NUMA_NODE ? (int)spec->numa_want.node : -1;
    r = sv_resources_admit(c->registry, cfg(c), NULL, spec, true, numa, a->err);
    if (r < 0 && a->err)
        vm__emit(rt, "admission", json_pack("{s:s, s:s, s:s, s:b}", "op", "edit", "error", a->err->msg, "code",
                                            qv_errno_name(a->err->code), "by_policy", false));
    return r;
}

void vm__act_edit(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    rt->held = "its spec is being edited";
    spec_commit(rt, a->spec, false, 0, NULL, a->done, a->userdata);
}

/* ---- resize ------------------------------------------------------------------ */

int sv_vm_resize(sv_vmctl *c, sv_vm *vm, uint64_t size, bool relative, sv_vm_done_fn done, void *userdata,
                 qv_error *err) {
    return vm__request(c, vm, SV_EV_RESIZE,
                       &(vm_event_arg){.size = size, .relative = relative, .done = done, .userdata = userdata,
                                       .err = err});
}

static uint64_t disk_now(const sv_vm *vm) {
    return vm->disk_size ? vm->disk_size : vm->spec->disk;
}

/* grow's check: never smaller, at most the largest disk, the extra bytes
 * fit the storage pool as a create's disk must (docs/resources.md), and a
 * QEMU that has one has its monitor connected. */
int vm__check_grow(vmrt *rt, const vm_event_arg *a) {
    sv_vmctl *c = rt->c;
    sv_vm *vm = rt->vm;
    uint64_t now = disk_now(vm), to;
    int r = vm__snapshot_idle(rt, false, false, a->err); /* qemu-img or QMP on the same disk (snapshot.c) */
    if (r < 0)
        return r;
    r = sv_disk_resize_target(now, a->size, a->relative, &to, a->err);
    if (r < 0)
        return r;
    if (r == 0) {
        sv_storage_usage su;
        int fit = sv_resources_storage(c->registry, cfg(c), sv_resources_storage_pool_of(cfg(c), vm->spec), &su,
                                       a->err);
        if (fit >= 0)
            fit = sv_storage_fit(&su, to - now, a->err);
        if (fit < 0) {
            if (a->err)
                vm__emit(rt, "admission", json_pack("{s:s, s:s, s:s, s:b}", "op", "resize", "error", a->err->msg,
                                                    "code", qv_errno_name(a->err->code), "by_policy", false));
            return fit;
        }
        if (fit == SV_STORAGE_THIN)
            log_warning("VM %s: storage pool %s is thinly overcommitted: its disks could outgrow its free space",
                        vm->name, su.pool);
        if (sv_vm_state_has_qemu(vm->state) && !rt->qmp)
            return qv_error_set(a->err, EIO, "VM '%s': no connection to QEMU's monitor; cannot resize its disk",
                                vm->name);
    }
    rt->grow_to = to;
    return 0;
}

typedef struct grow_job {
    uv_work_t work;
    vmrt *rt;
    uint64_t from, to;
    char *dir;
    uint64_t disk_dev, disk_ino;
    sv_config *config;
    sv_vm_done_fn done;
    void *userdata;
    int status;
    qv_error err;
} grow_job;

static void grow_job_free(grow_job *job) {
    free(job->dir);
    sv_config_free(job->config);
    free(job);
}

/* The disk has its new size: the spec and state.json follow. */
static void grown(vmrt *rt, uint64_t from, uint64_t to, const char *how, sv_vm_done_fn done, void *userdata) {
    sv_vmspec *spec = sv_vmspec_dup(rt->vm->spec);
    if (!spec) {
        release(rt);
        qv_error e = {0};
        qv_error_set(&e, ENOMEM, "out of memory: the disk of VM '%s' was grown, its spec keeps the old size",
                     rt->vm->name);
        fail(done, userdata, &e);
        return;
    }
    spec->disk = to;
    spec_commit(rt, spec, true, from, how, done, userdata);
}

/* Worker: qemu-img resize of the file create made, reached through the
 * instance directory (no link in its place) and its disk.qcow2 (the link
 * into a storage pool is followed, and the file must be the one create
 * made: st_dev and st_ino in state.json).  qemu-img writes it through
 * /proc/PID/fd/N, never by a name someone could swap meanwhile. */
static void grow_work(uv_work_t *w) {
    grow_job *job = w->data;
    qv_error *err = &job->err;
    _cleanup_close_ int dfd = qv_open_dir_nofollow(job->dir);
    if (dfd < 0) {
        job->status = qv_error_set(err, -dfd, "cannot open %s: %s", job->dir, strerror(-dfd));
        return;
    }
    _cleanup_close_ int fd = openat(dfd, SV_VM_DISK_FILE, O_RDWR | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        job->status = qv_error_set(err, errno, "cannot open the disk %s/%s: %s", job->dir, SV_VM_DISK_FILE,
                                   strerror(errno));
        return;
    }
    if (!S_ISREG(st.st_mode) ||
        (job->disk_ino && ((uint64_t)st.st_dev != job->disk_dev || (uint64_t)st.st_ino != job->disk_ino))) {
        job->status = qv_error_set(err, EIO, "%s/%s is not the disk create made; not resized", job->dir,
                                   SV_VM_DISK_FILE);
        return;
    }
    char path[64], size[32];
    int r = qv_fd_path(fd, path, sizeof path);
    if (r < 0) {
        job->status = qv_error_set(err, -r, "cannot name the disk's fd");
        return;
    }
    snprintf(size, sizeof size, "%llu", (unsigned long long)job->to);
    const char *args[] = {"resize", "-q", "-f", "qcow2", path, size, NULL};
    qv_run_result res;
    job->status = sv_qemu_img(job->config, args, NULL, NULL, &res, err);
    if (job->status == 0) {
        qv_run_result_free(&res);
        sv_crash_point("resize-after-qemu-img");
    }
}

static void grow_after(uv_work_t *w, int status) {
    grow_job *job = w->data;
    vmrt *rt = job->rt;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, -status, "the resize was cancelled");
    if (!rt->vm) {
        qv_error e = {0};
        qv_error_set(&e, ECANCELED, "the daemon is stopping");
        fail(job->done, job->userdata, &e);
    } else if (job->status < 0) {
        release(rt);
        qv_error_prefix(&job->err, "the disk of VM '%s' was not resized", rt->vm->name);
        log_warning("%s", job->err.msg);
        fail(job->done, job->userdata, &job->err);
    } else {
        grown(rt, job->from, job->to, "qemu-img resize", job->done, job->userdata);
    }
    grow_job_free(job);
    vm__rt_unref(rt);
}

typedef struct qmp_grow {
    vmrt *rt;
    uint64_t from, to;
    sv_vm_done_fn done;
    void *userdata;
} qmp_grow;

static void on_block_resize(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    qmp_grow *g = userdata;
    vmrt *rt = g->rt;
    qv_error err = {0};
    if (!rt->vm) {
        qv_error_set(&err, ECANCELED, "the VM is gone");
        fail(g->done, g->userdata, &err);
    } else if (status < 0) {
        release(rt);
        qv_error_set(&err, EIO, "VM '%s': QEMU did not resize the disk: %s", rt->vm->name,
                     e ? e->desc : strerror(-status));
        log_warning("%s", err.msg);
        fail(g->done, g->userdata, &err);
    } else {
        grown(rt, g->from, g->to, "block_resize", g->done, g->userdata);
    }
    free(g);
    vm__rt_unref(rt);
}

/* grow: with a QEMU, block_resize on the disk's node (qemuargv.c's
 * "disk0"): the guest's virtio-blk sees the new capacity at once; without
 * one, qemu-img resize on a worker. */
void vm__act_grow(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    uint64_t now = disk_now(vm), to = rt->grow_to;
    qv_error err = {0};
    if (to == now) {
        if (a->done) {
                    answer_grow(vm->name, now, now, "unchanged", a->done, a->userdata);
        }
        return;
    }
    rt->held = "its disk is being resized";
    vm->disk_pending = to;
    if (sv_vm_state_has_qemu(vm->state)) {
        qmp_grow *g = calloc(1, sizeof *g);
        json_t *args = json_pack("{s:s, s:I}", "node-name", "disk0", "size", (json_int_t)to);
        int r = g && args ? 0 : -ENOMEM;
        if (r == 0) {
            *g = (qmp_grow){.rt = rt, .from = now, .to = to, .done = a->done, .userdata = a->userdata};
            r = qmp_send(rt->qmp, "block_resize", args, QMP_CMD_TIMEOUT_MS, on_block_resize, g);
        }
        json_decref(args);
        if (r < 0) {
            free(g);
            release(rt);
            qv_error_set(&err, EIO, "VM '%s': cannot send block_resize to QEMU's monitor: %s", vm->name,
                         strerror(-r));
            fail(a->done, a->userdata, &err);
            return;
        }
        rt->refs++;
        log_info("VM %s: growing its disk to %llu bytes (block_resize)", vm->name, (unsigned long long)to);
        return;
    }
    grow_job *job = calloc(1, sizeof *job);
    if (job) {
        *job = (grow_job){.rt = rt, .from = now, .to = to, .disk_dev = vm->disk_dev, .disk_ino = vm->disk_ino,
                          .done = a->done, .userdata = a->userdata};
        job->dir = strdup(vm->dir);
        job->config = sv_config_ref(cfg(rt->c));
    }
    if (!job || !job->dir || !job->config) {
        if (job)
            grow_job_free(job);
        release(rt);
        qv_error_set(&err, ENOMEM, "out of memory");
        fail(a->done, a->userdata, &err);
        return;
    }
    job->work.data = job;
    rt->refs++;
    log_info("VM %s: growing its disk to %llu bytes (qemu-img resize)", vm->name, (unsigned long long)to);
    if (uv_queue_work(rt->c->loop, &job->work, grow_work, grow_after) < 0) {
        grow_work(&job->work); /* cannot happen with a work callback */
        grow_after(&job->work, 0);
    }
}
