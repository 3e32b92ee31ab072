/* Starting a VM: admission and placement, the preparation on a worker
 * (disk check, seed, firmware variables, NICs), GPUs to vfio-pci, the
 * start timeout, giving up (start_abandon), and `started`. */
#include "supervisor/vm/engine.h"

static void start_abandon_now(vmrt *rt, int code, const char *why);

/* ---- start ------------------------------------------------------------- */

static json_t *start_result(const vmrt *rt) {
    const sv_vm *vm = rt->vm;
    json_t *j = json_pack("{s:s, s:s, s:i}", "name", vm->name, "state", sv_vm_state_name(vm->state), "pid",
                          vm->run.pid);
    json_object_set_new(j, "ssh_port", vm->run.ssh_port ? json_integer(vm->run.ssh_port) : json_null());
    char ip[ND_IPV4_CIDR_STRLEN];
    json_object_set_new(j, "ip", sv_vm_static_ip(vm, ip) ? json_string(ip) : json_null());
    return j;
}

/* "running" is written (or could not be) for the QEMU whose pid
 * is `userdata`: the start is answered now.  Whatever came meanwhile (QEMU
 * gone, a stop) moved the VM on and answers for itself. */
static void running_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    sv_vm *vm = rt->vm;
    if (!vm || rt->c->shutting_down || vm->state != SV_VM_STARTING || !rt->watch ||
        rt->watch->pid != (pid_t)(intptr_t)userdata)
        return;
    if (status < 0) {
        /* on disk it is still "starting": a daemon restart would stop it, so
         * the start fails now rather than later (the guest ran a moment) */
        char why[sizeof err->msg + 32];
        snprintf(why, sizeof why, "cannot record that it runs: %s", err->msg);
        vm__start_fail_code(rt, err->code, why);
        return;
    }
    vm__event(rt, SV_EV_STARTED, NULL);
}

/* run: the VM is running (and that is on disk): the start is answered. */
void vm__act_run(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    (void)a;
    sv_vm *vm = rt->vm;
    uv_timer_stop(&rt->timer);
    log_info("VM %s: running (QEMU pid %d%s)", vm->name, vm->run.pid, rt->policy_start ? ", restarted by policy" : "");
    vm__emit(rt, "start", json_pack("{s:s, s:i, s:f, s:b}", "result", "running", "pid", vm->run.pid, "seconds",
                                    (double)(qv_now_ms() - rt->start_begin_ms) / 1000.0, "by_policy",
                                    rt->policy_start));
    json_t *res = start_result(rt);
    vm__complete(&rt->start_waiters, 0, res, NULL);
    vm__agent_attach(rt); /* after the answer: the agent is not part of it */
    json_decref(res);
}

/* QEMU answered `cont`: "running" is written, and the VM is running (and
 * the start answered) once it is in place.  Until then it stays starting
 * in memory: nothing is told that the disk does not know. */
void vm__started(vmrt *rt) {
    if (!rt->watch)
        return; /* gone already: its cleanup answers the start */
    vm__save_as(rt, SV_VM_RUNNING, running_saved, (void *)(intptr_t)rt->watch->pid);
}

void vm__on_start_timeout(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (rt->vm && rt->vm->state == SV_VM_STARTING)
        vm__start_fail_kill(rt, "QEMU did not answer on its monitor in time");
}

typedef struct prep_job {
    uv_work_t work;
    vmrt *rt;
    sv_vm_state from;    /* what the VM was before the start, and its run */
    sv_vm_run run_before;
    char *base;
    uint64_t base_size;
    int64_t base_mtime_ns;
    char *dir;
    char *run_dir;
    sv_vmspec *spec;   /* copies for the worker thread */
    sv_config *config;
    bool seed_changed;
    bool vars_restored; /* UEFI: the variable store was missing and is a fresh copy */
    sv_net_fds net;
    int status;
    qv_error err;
} prep_job;

static void prep_job_free(prep_job *job) {
    if (!job)
        return;
    free(job->base);
    free(job->dir);
    free(job->run_dir);
    sv_vmspec_free(job->spec);
    sv_config_free(job->config);
    sv_net_fds_close(&job->net);
    free(job);
}

/* Worker thread: everything a start does on disk before QEMU runs. */
static void prep_work(uv_work_t *w) {
    prep_job *job = w->data;
    uint64_t size;
    int64_t mtime;
    int r = sv_image_stamp(job->base, &size, &mtime, &job->err);
    if (r < 0) {
        job->status = r;
        return;
    }
    if (job->base_size && (size != job->base_size || mtime != job->base_mtime_ns)) {
        job->status = qv_error_set(&job->err, ESTALE,
                                   "base image %s changed since this VM's disk was made on it (size or mtime "
                                   "differs); the disk would be corrupt: restore the image or recreate the VM",
                                   job->base);
        return;
    }
    /* The instance directory is reached through its fd from here on (a
     * directory swapped for a symlink is refused, and one swapped later is
     * not followed): /proc/PID/fd/N where a function takes a path. */
    _cleanup_close_ int dfd = qv_open_dir_nofollow(job->dir);
    char at[64];
    if (dfd < 0 || (r = qv_fd_path(dfd, at, sizeof at)) < 0) {
        r = dfd < 0 ? dfd : r;
        job->status = qv_error_set(&job->err, -r, "cannot open %s: %s", job->dir,
                                   r == -ENOTDIR || r == -ELOOP ? "not a directory (a symlink?)" : strerror(-r));
        return;
    }
    /* UEFI: the recorded code must still be there; a variable store deleted
     * by hand is made again from its template (the guest loses its boot
     * entries and settings, nothing else) */
    char vars[96];
    sv_layout_instance_file(at, SV_VM_VARS_FILE, vars, sizeof vars);
    r = sv_fw_start_check(job->spec, vars, &job->vars_restored, &job->err);
    if (r < 0) {
        job->status = r;
        return;
    }
    /* the seed follows the spec and the node's DNS: rewritten when they changed */
    r = sv_seed_prepare(job->spec, job->config, at, &job->seed_changed, &job->err);
    if (r < 0) {
        job->status = r;
        return;
    }
    r = qv_mkdir_p(job->run_dir, 0750);
    if (r < 0) {
        job->status = qv_error_set(&job->err, r, "cannot create %s: %s", job->run_dir, strerror(-r));
        return;
    }
    /* keep the previous boot's console next to this one; QEMU truncates
     * serial.log but keeps its mode: made here 0640, relative to the
     * directory and never through a symlink */
    if (renameat(dfd, SV_VM_SERIAL_LOG, dfd, SV_VM_SERIAL_LOG_OLD) < 0 && errno != ENOENT)
        log_debug("cannot rotate %s/serial.log: %s", job->dir, strerror(errno));
    _cleanup_close_ int old = openat(dfd, SV_VM_SERIAL_LOG_OLD, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (old >= 0 && fstat(old, &st) == 0 && S_ISREG(st.st_mode))
        fchmod(old, 0640); /* one an older qvisor made 0644 */
    r = qv_open_regular_at(dfd, SV_VM_SERIAL_LOG, O_WRONLY, 0640);
    if (r < 0) {
        job->status = qv_error_set(&job->err, r, "cannot create %s/serial.log: %s", job->dir, strerror(-r));
        return;
    }
    close(r);
    /* TAPs last: nothing after them can fail, and a failed start closes them */
    r = sv_net_setup(job->config, job->spec, &job->net, &job->err);
    if (r < 0)
        job->status = r;
}

bool vm__has_gpus(const sv_vm *vm) {
    return vm->spec->n_gpu_opts > 0;
}

static void on_released(int status, const qv_error *err, const vfio_plan *plan, void *userdata) {
    (void)plan;
    vmrt *rt = userdata;
    rt->pt_busy = false;
    rt->pt_ready = false;
    vfio_plan_clear(&rt->pt_plan);
    if (rt->vm && status < 0) {
        log_error("VM %s: giving its GPUs back failed: %s (see `qvisor gpu list`, `qvisor cleanup`)", rt->vm->name,
                  err->msg);
        vm__emit(rt, "gpu", json_pack("{s:s, s:s, s:s, s:b}", "action", "give-back", "result", "failed", "error",
                                      err->msg, "stuck", true));
    } else if (rt->vm) {
        log_info("VM %s: GPUs given back to the host", rt->vm->name);
        vm__emit(rt, "gpu", json_pack("{s:s, s:s}", "action", "give-back", "result", "ok"));
    }
    if (rt->vm && !rt->c->shutting_down)
        rt->after_release(rt);
    vm__rt_unref(rt);
}

/* Gives back whatever the VM holds on vfio-pci (kept devices stay), then
 * `then`, which runs at once when there is nothing to give back.  Only
 * once QEMU is gone: a device leaves vfio-pci after its user. */
void vm__release_devices(vmrt *rt, void (*then)(vmrt *rt)) {
    sv_vm *vm = rt->vm;
    if (!vm__has_gpus(vm) && !sv_pt_holds(cfg(rt->c), vm->name)) {
        then(rt);
        return;
    }
    qv_error err = {0};
    rt->after_release = then;
    rt->pt_busy = true;
    rt->refs++;
    if (sv_pt_give_back(rt->c->loop, cfg(rt->c), vm->name, false, on_released, rt, &err) < 0) {
        log_error("VM %s: cannot give its GPUs back: %s", vm->name, err.msg);
        rt->pt_busy = false;
        rt->refs--;
        then(rt);
    }
}


static void start_abandon_released(vmrt *rt) {
    char why[sizeof(((qv_error *)0)->msg)];
    snprintf(why, sizeof why, "%s", rt->abandon_why ? rt->abandon_why : "start failed");
    free(rt->abandon_why);
    rt->abandon_why = NULL;
    start_abandon_now(rt, rt->abandon_code, why);
}

/* A start whose QEMU never ran (or died during the start) ends here:
 * devices taken for it go back first. */
void vm__start_abandon(vmrt *rt, int code, const char *why) {
    if (vm__has_gpus(rt->vm)) {
        rt->abandon_code = code;
        free(rt->abandon_why);
        rt->abandon_why = strdup(why);
        vm__release_devices(rt, start_abandon_released);
        return;
    }
    start_abandon_now(rt, code, why);
}

/* The start ends without a QEMU: it failed, or a stop came first (then
 * that stop ends here: the table's finish, before QEMU existed). */
static void start_abandon_now(vmrt *rt, int code, const char *why) {
    rt->starting_prep = false;
    sv_net_fds_close(&rt->net); /* the TAPs vanish with their fds */
    vm_event_arg a = {.code = code, .why = why, .clean = true, .how = "start aborted before QEMU ran",
                      .before_qemu = true};
    if (vm__event(rt, rt->vm->state == SV_VM_STOPPING ? SV_EV_EXITED : SV_EV_START_FAILED, &a) < 0)
        vm__fail_waiters(&rt->start_waiters, code, "VM '%s' did not start: %s", rt->vm->name, why);
}

/* abandon: the start failed; it is answered with why, and the restart
 * policy (when it made this start) tries again later. */
void vm__act_abandon(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    int code = a->code;
    const char *why = a->why ? a->why : "start failed";
    rt->starting_prep = false;
    sv_net_fds_close(&rt->net);
    char msg[sizeof(((qv_error *)0)->msg)];
    snprintf(msg, sizeof msg, "start failed: %s", why);
    sv_vm_set_last_exit(vm, msg);
    vm->run = (sv_vm_run){.restarts = vm->run.restarts, .numa_node = -1};
    vm__persist(rt);
    log_warning("VM %s: %s", vm->name, msg);
    vm__emit(rt, "start", json_pack("{s:s, s:s, s:s, s:b}", "result", "failed", "error", why, "code",
                                    qv_errno_name(code), "by_policy", rt->policy_start));
    vm__fail_waiters(&rt->start_waiters, code, "VM '%s' did not start: %s", vm->name, why);
    if (rt->policy_start)
        vm__schedule_restart(rt);
}


static void prep_after(uv_work_t *w, int status) {
    prep_job *job = w->data;
    vmrt *rt = job->rt;
    const sv_vmctl *c = rt->c;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, ECANCELED, "cancelled");
    if (rt->vm && !c->shutting_down) {
        if (job->seed_changed)
            log_info("VM %s: cloud-init seed (re)written", rt->vm->name);
        if (job->vars_restored)
            log_warning("VM %s: its UEFI variable store %s/" SV_VM_VARS_FILE " was missing; made a fresh copy of %s "
                        "(boot entries and firmware settings start over)",
                        rt->vm->name, job->dir, job->spec->firmware_vars);
        if (job->status < 0) {
            vm__start_abandon(rt, job->err.code, job->err.msg);
        } else {
            sv_net_fds_close(&rt->net);
            rt->net = job->net; /* the runtime owns the fds now */
            sv_net_fds_init(&job->net);
            vm__maybe_launch(rt);
        }
    }
    prep_job_free(job);
    vm__rt_unref(rt);
}

static void on_taken(int status, const qv_error *err, const vfio_plan *plan, void *userdata) {
    vmrt *rt = userdata;
    rt->pt_busy = false;
    if (rt->vm && !rt->c->shutting_down) {
        if (status < 0) {
            vm__emit(rt, "gpu", json_pack("{s:s, s:s, s:s}", "action", "bind", "result", "failed", "error", err->msg));
            vm__start_abandon(rt, err->code, err->msg);
        } else {
            json_t *devs = json_array();
            for (size_t i = 0; i < plan->n; i++)
                json_array_append_new(devs, json_string(plan->devs[i].bdf));
            vm__emit(rt, "gpu", json_pack("{s:s, s:s, s:o}", "action", "bind", "result", "ok", "devices", devs));
            rt->pt_ready = true;
            vfio_plan_clear(&rt->pt_plan);
            rt->pt_plan.devs = malloc((plan->n ? plan->n : 1) * sizeof *plan->devs);
            if (rt->pt_plan.devs) {
                memcpy(rt->pt_plan.devs, plan->devs, plan->n * sizeof *plan->devs);
                rt->pt_plan.n = plan->n;
            }
            log_info("VM %s: %zu PCI function%s on vfio-pci", rt->vm->name, plan->n, plan->n == 1 ? "" : "s");
            sv_crash_point("start-after-bind");
            if (!rt->pt_plan.devs)
                vm__start_abandon(rt, ENOMEM, "out of memory");
            else
                vm__maybe_launch(rt);
        }
    }
    vm__rt_unref(rt);
}

/* Moves the VM's GPUs (and what must go with them) to vfio-pci, then
 * comes back to vm__maybe_launch. */
static void take_devices(vmrt *rt) {
    qv_error err = {0};
    rt->pt_busy = true;
    rt->refs++;
    if (sv_pt_take(rt->c->loop, cfg(rt->c), rt->vm->spec, on_taken, rt, &err) < 0) {
        rt->pt_busy = false;
        rt->refs--;
        vm__start_abandon(rt, err.code, err.msg);
    }
}

void vm__maybe_launch(vmrt *rt) {
    sv_vmctl *c = rt->c;
    if (rt->vm->state != SV_VM_STARTING) {
        vm__start_abandon(rt, ECANCELED, "a stop request came first");
        return;
    }
    if (!vm__caps_current(c)) {
        if (c->caps_state == CAPS_PROBING) {
            rt->waiting_caps = true;
            return;
        }
        vm__start_abandon(rt, ENOMEM, "cannot probe QEMU");
        return;
    }
    if (c->caps_status < 0) {
        vm__start_abandon(rt, c->caps_err.code, c->caps_err.msg);
        return;
    }
    if (vm__has_gpus(rt->vm) && !rt->pt_ready) {
        take_devices(rt);
        return;
    }
    vm__launch(rt);
}

/* Admission and placement of a start (docs/resources.md): the VMs that have
 * a QEMU count; the NUMA node (auto, N) and the CPUs (pin, else the node's)
 * are decided and checked here, before QEMU exists.  *ret is set only on
 * success. */
static int start_placement(sv_vmctl *c, sv_vm *vm, sv_start_placement *ret, qv_error *err) {
    const sv_vmspec *s = vm->spec;
    sv_start_placement place = {.numa_node = -1};
    sv_capacity cap = {0};
    int r = sv_resources_capacity_for(s, &cap, err); /* once: for placement and admission */
    if (r < 0)
        return r;
    sv_admission_policy policy;
    _cleanup_free_ sv_vm_usage *usage = NULL;
    size_t n = 0;
    r = sv_admission_policy_init(&policy, cfg(c), s->pool, err);
    if (r == 0 && (r = sv_resources_usage(c->registry, false, &usage, &n)) < 0)
        r = qv_error_set(err, -r, "out of memory");
    if (r == 0)
        r = sv_start_place(&cap, &policy, usage, n, s, &place, err);
    if (r == 0 && (r = sv_resources_admit(c->registry, cfg(c), &cap, s, false, place.numa_node, err)) < 0)
        sv_start_placement_clear(&place);
    sv_capacity_clear(&cap);
    if (r < 0)
        return r;
    *ret = place;
    return 0;
}

/* The start could not be written (or queued): the VM is put back as
 * it was, on disk too (retried until it is), and the start refused, as if
 * sv_vm_start had said so at once. */
static void start_refused(vmrt *rt, prep_job *job, int code, const char *why) {
    sv_vm *vm = rt->vm;
    vm__undo_state(rt, job->from, why);
    vm->run = job->run_before;
    vm__persist(rt);
    rt->starting_prep = false;
    prep_job_free(job);
    log_warning("VM %s: not started: %s", vm->name, why);
    vm__emit(rt, "start", json_pack("{s:s, s:s, s:s, s:b}", "result", "refused", "error", why, "code",
                                    qv_errno_name(code), "by_policy", rt->policy_start));
    vm__fail_waiters(&rt->start_waiters, code, "VM '%s' not started: %s", vm->name, why);
    if (rt->policy_start) {
        /* as when the restart policy's start is refused at once */
        char last[sizeof(((qv_error *)0)->msg)];
        snprintf(last, sizeof last, "automatic restart refused: %s", why);
        sv_vm_set_last_exit(vm, last);
        vm__persist(rt);
        vm__schedule_restart(rt);
    }
}

/* "starting" is written: the preparation runs.  A stop that came
 * meanwhile ends the start here (vm__start_abandon answers both). */
static void start_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    prep_job *job = userdata;
    sv_vm *vm = rt->vm;
    if (!vm || rt->c->shutting_down) {
        prep_job_free(job);
        return;
    }
    if (vm->state != SV_VM_STARTING) {
        prep_job_free(job);
        vm__start_abandon(rt, ECANCELED, "a stop request came first");
        return;
    }
    if (status < 0) {
        start_refused(rt, job, err->code, err->msg);
        return;
    }
    int r = uv_queue_work(rt->c->loop, &job->work, prep_work, prep_after);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot queue the start: %s", uv_strerror(r));
        start_refused(rt, job, -r, why);
        return;
    }
    rt->refs++;
}

/* prepare's check, with the VM still where it was: the GPUs of its last
 * run are back, the preparation's copies are made, and the node's
 * resources admit it (the VMs that have a QEMU count, this one not yet).
 * What it made waits in rt->prep_next and rt->place for the action. */
int vm__check_prepare(vmrt *rt, const vm_event_arg *a) {
    sv_vmctl *c = rt->c;
    sv_vm *vm = rt->vm;
    qv_error *err = a->err;
    if (rt->pt_busy)
        return qv_error_set(err, EBUSY, "VM '%s': its GPUs are being given back; try again in a moment", vm->name);
    int busy = vm__snapshot_idle(rt, false, false, err);
    if (busy < 0)
        return busy;
    prep_job *job = calloc(1, sizeof *job);
    char run_dir[PATH_MAX], base[PATH_MAX];
    if (!job)
        return qv_error_set(err, ENOMEM, "out of memory");
    int r = sv_image_path(cfg(c), vm->spec->image, base, sizeof base, err);
    if (r < 0) {
        free(job);
        return r;
    }
    vm__run_path(rt, NULL, run_dir, sizeof run_dir);
    job->rt = rt;
    job->work.data = job;
    sv_net_fds_init(&job->net);
    job->base = strdup(base);
    job->dir = strdup(vm->dir);
    job->run_dir = strdup(run_dir);
    job->base_size = vm->base_size;
    job->base_mtime_ns = vm->base_mtime_ns;
    job->spec = sv_vmspec_dup(vm->spec);
    job->config = sv_config_ref(cfg(c));
    if (!job->base || !job->dir || !job->run_dir || !job->spec || !job->config) {
        prep_job_free(job);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    sv_start_placement place;
    r = start_placement(c, vm, &place, err);
    if (r < 0) {
        prep_job_free(job);
        vm__emit(rt, "admission", json_pack("{s:s, s:s, s:s, s:b}", "op", "start", "error", err->msg, "code",
                                            qv_errno_name(err->code), "by_policy", a->policy));
        return r;
    }
    sv_start_placement_clear(&rt->place);
    rt->place = place;
    job->from = vm->state;
    job->run_before = vm->run;
    prep_job_free(rt->prep_next);
    rt->prep_next = job;
    return 0;
}

/* prepare: "starting" is on disk before anything happens, or nothing
 * happens: a daemon that dies later must find the start it has to undo.
 * The preparation is queued once it is written (start_saved). */
void vm__act_prepare(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    prep_job *job = TAKE_PTR(rt->prep_next);
    vm->run = (sv_vm_run){.restarts = a->policy ? vm->run.restarts : 0, .numa_node = -1};
    rt->start_begin_ms = qv_now_ms();
    vm__save(rt, start_saved, job);
    uv_timer_stop(&rt->timer); /* a pending automatic restart is superseded */
    rt->policy_start = a->policy;
    rt->starting_prep = true;
    free(rt->stop_reason);
    rt->stop_reason = NULL;
    rt->monitor_failed = false;
    rt->fail_code = 0;
    rt->stage = STAGE_NONE;
    vm__add_waiter(&rt->start_waiters, a->done, a->userdata);
    log_info("VM %s: starting", vm->name);
}
