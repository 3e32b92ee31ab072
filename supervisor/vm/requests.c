/* The door's front: every request a client (or the restart policy) makes
 * of a VM, turned into an event for vm__event() (engine.c), which judges
 * it against the table, runs the cell's check and action.  Nothing here
 * changes a VM itself. */
#include "supervisor/vm/engine.h"

int vm__request(sv_vmctl *c, sv_vm *vm, sv_vm_event ev, const vm_event_arg *arg) {
    if (c->shutting_down)
        return qv_error_set(arg->err, ECANCELED, "the daemon is stopping");
    vmrt *rt = vm__get_rt(c, vm);
    if (!rt)
        return qv_error_set(arg->err, ENOMEM, "out of memory");
    return vm__event(rt, ev, arg);
}

int vm__begin_start(sv_vmctl *c, sv_vm *vm, bool policy, sv_vm_done_fn done, void *userdata, qv_error *err) {
    int r = vm__request(c, vm, SV_EV_START,
                        &(vm_event_arg){.policy = policy, .done = done, .userdata = userdata, .err = err});
    if (r == 1) /* the table has no such cell: a start is never "already satisfied" */
        return qv_error_set(err, EALREADY, "VM '%s' is already %s", vm->name, sv_vm_state_name(vm->state));
    return r < 0 ? r : 0;
}

int sv_vm_start(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return vm__begin_start(c, vm, false, done, userdata, err);
}

int sv_vm_stop(sv_vmctl *c, sv_vm *vm, const sv_stop_options *o, sv_vm_done_fn done, void *userdata,
               qv_error *err) {
    return vm__request(c, vm, SV_EV_STOP,
                       &(vm_event_arg){.force = o->force, .timeout_ms = o->timeout_ms, .done = done,
                                       .userdata = userdata, .err = err});
}

/* vm pause / vm resume: judged against the state the commands already
 * sent lead to (vm__event), so that `pause` followed at once by `resume`
 * resumes. */
static int pause_resume(sv_vmctl *c, sv_vm *vm, bool pause, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return vm__request(c, vm, pause ? SV_EV_PAUSE : SV_EV_RESUME,
                       &(vm_event_arg){.pause = pause, .done = done, .userdata = userdata, .err = err});
}

int sv_vm_pause(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return pause_resume(c, vm, true, done, userdata, err);
}

int sv_vm_resume(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return pause_resume(c, vm, false, done, userdata, err);
}

/* ---- restart (stop + start) ------------------------------------------ */

typedef struct restart_job {
    sv_vmctl *c;
    sv_vm *vm;
    json_t *stop_result;
    sv_vm_done_fn done;
    void *userdata;
} restart_job;

static void restart_started(int status, json_t *result, const qv_error *err, void *userdata) {
    restart_job *job = userdata;
    if (status < 0) {
        job->done(status, NULL, err, job->userdata);
    } else {
        json_t *res = json_pack("{s:O, s:O}", "stop", job->stop_result, "start", result);
        job->done(0, res, NULL, job->userdata);
        json_decref(res);
    }
    json_decref(job->stop_result);
    free(job);
}

static void restart_stopped(int status, json_t *result, const qv_error *err, void *userdata) {
    restart_job *job = userdata;
    if (status < 0) {
        job->done(status, NULL, err, job->userdata);
        free(job);
        return;
    }
    job->stop_result = result ? json_incref(result) : json_pack("{s:s}", "result", "already-stopped");
    qv_error e = {0};
    if (vm__begin_start(job->c, job->vm, false, restart_started, job, &e) < 0) {
        job->done(-e.code, NULL, &e, job->userdata);
        json_decref(job->stop_result);
        free(job);
    }
}

int sv_vm_restart(sv_vmctl *c, sv_vm *vm, const sv_stop_options *o, sv_vm_done_fn done, void *userdata,
                  qv_error *err) {
    restart_job *job = calloc(1, sizeof *job);
    if (!job)
        return qv_error_set(err, ENOMEM, "out of memory");
    job->c = c;
    job->vm = vm;
    job->done = done;
    job->userdata = userdata;
    int r = sv_vm_stop(c, vm, o, restart_stopped, job, err);
    if (r < 0) {
        free(job);
        return r;
    }
    if (r == 1) {
        /* not running: a plain start (the reply still names the stop step) */
        job->stop_result = json_pack("{s:s}", "result", "already-stopped");
        r = vm__begin_start(c, vm, false, restart_started, job, err);
        if (r < 0) {
            json_decref(job->stop_result);
            free(job);
            return r;
        }
    }
    return 0;
}

int sv_vm_remove(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return vm__request(c, vm, SV_EV_REMOVE, &(vm_event_arg){.done = done, .userdata = userdata, .err = err});
}

void sv_vm_created(sv_vmctl *c, sv_vm *vm) {
    vmrt *rt = vm__get_rt(c, vm);
    if (rt)
        vm__event(rt, SV_EV_CREATED, NULL);
    else
        log_error("VM %s: out of memory: it stays 'creating' until the daemon restarts", vm->name);
}
