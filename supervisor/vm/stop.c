/* Stopping a VM: the graceful step (agent, else ACPI), QMP quit, SIGTERM,
 * SIGKILL, each with its timer; pause and resume. */
#include "supervisor/vm/engine.h"

static void stage_term(vmrt *rt);
static bool stop_mark(vmrt *rt);

/* ---- stop ------------------------------------------------------------ */

void sv_stop_timeouts(const sv_vmspec *spec, const sv_config *c, uint64_t override_ms, uint64_t *ret_graceful_ms,
                      uint64_t *ret_kill_ms) {
    uint64_t per16 = spec->memory / (16ull << 30);
    uint64_t base = spec->stop_timeout_ms ? spec->stop_timeout_ms : c->stop_timeout_ms;
    size_t gpus = spec->n_gpu_opts;
    /* guest GPU drivers take their time to let go of the card */
    *ret_graceful_ms = override_ms ? override_ms : base + per16 * 5000 + gpus * 10000;
    *ret_kill_ms = c->kill_timeout_ms + per16 * 1000;
}

static void on_stage_timer(uv_timer_t *t);

/* The stop's timeouts, from the spec, the node and the stop's own options. */
static uint64_t graceful_ms(const vmrt *rt) {
    uint64_t g, k;
    sv_stop_timeouts(rt->vm->spec, cfg(rt->c), rt->vm->run.stop_timeout_ms, &g, &k);
    return g;
}

static uint64_t kill_ms(const vmrt *rt) {
    uint64_t g, k;
    sv_stop_timeouts(rt->vm->spec, cfg(rt->c), rt->vm->run.stop_timeout_ms, &g, &k);
    return k;
}

static void arm(vmrt *rt, uint64_t ms) {
    uv_timer_start(&rt->timer, on_stage_timer, ms, 0);
}

static void on_acpi_ack(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    vmrt *rt = userdata;
    if (status < 0 && status != QMP_ECANCELED && rt->vm)
        log_warning("VM %s: system_powerdown failed: %s", rt->vm->name, e ? e->desc : strerror(-status));
}

static void press_power_button(vmrt *rt) {
    if (vm__guest_paused(rt)) {
        /* never ACPI to a paused guest: QEMU would queue it until resume */
        vm__stage_quit(rt);
        return;
    }
    if (!rt->qmp) {
        log_warning("VM %s: no monitor connection for ACPI; forcing", rt->vm->name);
        stage_term(rt);
        return;
    }
    rt->how = "ACPI power button";
    qmp_system_powerdown(rt->qmp, QMP_CMD_TIMEOUT_MS, on_acpi_ack, rt);
}

static void on_acpi_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (rt->vm && rt->stage == STAGE_GRACEFUL) {
        if (strcmp(rt->how, "ACPI power button") != 0)
            log_info("VM %s: the guest agent's shutdown did not take; pressing the ACPI power button too",
                     rt->vm->name);
        press_power_button(rt);
    }
}

static void acpi(vmrt *rt) {
    press_power_button(rt);
    if (rt->stage == STAGE_GRACEFUL)
        uv_timer_start(&rt->acpi_timer, on_acpi_timer, ACPI_REPEAT_MS, ACPI_REPEAT_MS);
}

static void on_agent_shutdown(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    (void)result;
    (void)e;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || !rt->vm || rt->stage != STAGE_GRACEFUL)
        return;
    if (status < 0) {
        log_info("VM %s: agent guest-shutdown failed (%s); using ACPI", rt->vm->name, strerror(-status));
        acpi(rt);
    }
}

static void on_agent_ping(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)result;
    (void)e;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || !rt->vm || rt->stage != STAGE_GRACEFUL)
        return;
    if (status == 0 && !vm__guest_paused(rt)) {
        vm__set_agent(rt, "ok");
        rt->how = "guest agent guest-shutdown";
        log_info("VM %s: asking the guest agent to shut down", rt->vm->name);
        if (qga_shutdown(g, "powerdown", AGENT_PING_MS, on_agent_shutdown, rt) == 0) {
            /* guest-shutdown has no reply: an agent that took the request
             * and did nothing (just starting, wedged) is backed up by ACPI */
            uv_timer_start(&rt->acpi_timer, on_acpi_timer, AGENT_FALLBACK_MS, ACPI_REPEAT_MS);
            return;
        }
    }
    if (status != 0)
        vm__set_agent(rt, "no answer");
    log_info("VM %s: pressing the ACPI power button%s", rt->vm->name,
             status != 0 ? " (the guest agent did not answer)" : "");
    acpi(rt);
}

static void stage_graceful(vmrt *rt) {
    rt->stage = STAGE_GRACEFUL;
    arm(rt, graceful_ms(rt));
    if (rt->qga && rt->vm->spec->agent && !vm__guest_paused(rt)) {
        rt->how = "guest agent";
        if (qga_ping(rt->qga, AGENT_PING_MS, on_agent_ping, rt) == 0)
            return;
    }
    log_info("VM %s: pressing the ACPI power button", rt->vm->name);
    acpi(rt);
}

static void on_quit(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    vmrt *rt = userdata;
    if (status < 0 && status != QMP_ECANCELED && status != QMP_EDISCONNECTED && rt->vm)
        log_info("VM %s: quit got no answer (%s)", rt->vm->name, e ? e->desc : strerror(-status));
}

void vm__stage_quit(vmrt *rt) {
    uv_timer_stop(&rt->acpi_timer);
    if (!rt->qmp) {
        stage_term(rt);
        return;
    }
    rt->stage = STAGE_QUIT;
    rt->how = "QMP quit";
    log_info("VM %s: sending quit to QEMU", rt->vm->name);
    if (qmp_quit(rt->qmp, QMP_CMD_TIMEOUT_MS, on_quit, rt) < 0) {
        stage_term(rt);
        return;
    }
    arm(rt, kill_ms(rt));
}

static void stage_term(vmrt *rt) {
    uv_timer_stop(&rt->acpi_timer);
    rt->stage = STAGE_TERM;
    rt->how = "SIGTERM";
    log_warning("VM %s: sending SIGTERM to QEMU pid %d", rt->vm->name, rt->vm->run.pid);
    if (rt->watch)
        sv_pidfd_signal(rt->watch->pidfd, SIGTERM);
    arm(rt, kill_ms(rt));
}

static void stage_kill(vmrt *rt) {
    rt->stage = STAGE_KILL;
    rt->how = "SIGKILL";
    log_warning("VM %s: QEMU pid %d ignored SIGTERM; sending SIGKILL", rt->vm->name, rt->vm->run.pid);
    if (rt->watch)
        sv_pidfd_signal(rt->watch->pidfd, SIGKILL);
    arm(rt, KILL_GRACE_MS);
}

static void on_stage_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (!rt->vm || rt->vm->state != SV_VM_STOPPING)
        return;
    switch (rt->stage) {
    case STAGE_GRACEFUL:
        log_info("VM %s: the guest did not shut down in time; forcing", rt->vm->name);
        vm__stage_quit(rt);
        break;
    case STAGE_QUIT:
        stage_term(rt);
        break;
    case STAGE_TERM:
        stage_kill(rt);
        break;
    case STAGE_KILL:
        log_error("VM %s: QEMU pid %d survives SIGKILL (stuck in the kernel?); still waiting", rt->vm->name,
                  rt->vm->run.pid);
        arm(rt, KILL_GRACE_MS * 2);
        break;
    case STAGE_NONE:
        break;
    }
}

/* quit for a forced stop, a paused guest or one that never ran; else the
 * graceful step. */
void vm__stop_first_step(vmrt *rt, bool force) {
    if (vm__guest_paused(rt) && !force) {
        /* QEMU would queue an ACPI request or a guest-shutdown until the
         * guest runs again: powered off on a later resume, or never */
        log_info("VM %s: the guest is paused: no ACPI or agent shutdown to a paused guest; quitting QEMU",
                 rt->vm->name);
        vm__stage_quit(rt);
    } else if (force || !rt->cont_sent) {
        vm__stage_quit(rt);
    } else {
        stage_graceful(rt);
    }
}

/* Starts (or joins) the stop of a VM that has, or will have, a QEMU. */
void vm__begin_stop_sequence(vmrt *rt, bool force) {
    rt->stop_begin_ms = qv_now_ms();
    if (!rt->watch) {
        if (!rt->starting_prep)
            log_error("VM %s: stopping but no QEMU is known", rt->vm->name);
        return; /* the start in flight sees the stop when it completes */
    }
    if (rt->status_pending && !force) {
        rt->stop_waits_status = true; /* on_adopt_status takes the first step */
        return;
    }
    vm__stop_first_step(rt, force);
}

/* "stopping" is written (or could not be: a stop goes on
 * regardless, it is the safe direction): QEMU is told now.  Before, a
 * daemon that died would have found "running" and a QEMU gone, and called
 * it a crash (and maybe restarted it).  userdata: the stop it was for. */
static void stop_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    (void)status;
    (void)err;
    if (!rt->vm || rt->c->shutting_down || !rt->stop_waits_save || rt->stop_seq != (uintptr_t)userdata)
        return;
    rt->stop_waits_save = false;
    if (rt->vm->state != SV_VM_STOPPING)
        return; /* QEMU went meanwhile: its cleanup answered */
    vm__begin_stop_sequence(rt, rt->stop_save_force);
    sv_crash_point("stop-after-request");
}

/* A stop's check: a QEMU that is gone while its GPUs are being given back
 * has nothing left to stop, and its cleanup is not done yet. */
int vm__check_stop(vmrt *rt, const vm_event_arg *a) {
    if (rt->pt_busy && !rt->watch && !rt->starting_prep)
        return qv_error_set(a->err, EBUSY, "VM '%s': its QEMU is gone and its GPUs are being given back; try "
                            "again in a moment", rt->vm->name);
    return vm__snapshot_idle(rt, true, a->force, a->err);
}

/* join: a stop while one is in progress waits for it; --force skips what
 * is left of the graceful step. */
void vm__act_join(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    vm__add_waiter(&rt->stop_waiters, a->done, a->userdata);
    if (a->force && rt->stop_waits_save && !rt->stop_save_force) {
        log_info("VM %s: stop forced", vm->name);
        vm->run.stop_force = rt->stop_save_force = true;
        vm__persist(rt);
    } else if (a->force && (rt->stage == STAGE_GRACEFUL || rt->stop_waits_status)) {
        log_info("VM %s: stop forced while the guest shuts down", vm->name);
        vm->run.stop_force = true;
        rt->stop_waits_status = false;
        vm__persist(rt);
        if (rt->stop_marked)
            stop_mark(rt);
        vm__stage_quit(rt);
    }
}

/* The stop is recorded in the run directory (SV_VM_STOP_MARK): a daemon
 * that dies before "stopping" reaches state.json still knows QEMU was told
 * to go.  Only for a QEMU that runs (a start in flight is undone by the
 * next daemon anyway). */
static bool stop_mark(vmrt *rt) {
    char dir[PATH_MAX];
    vm__run_path(rt, NULL, dir, sizeof dir);
    int r = dir[0] ? sv_vm_stop_mark_write(dir, rt->vm) : -ENAMETOOLONG;
    if (r < 0)
        log_warning("VM %s: cannot record the stop in %s: %s; QEMU is told once state.json says stopping",
                    rt->vm->name, dir, strerror(-r));
    return r == 0;
}

/* shutdown: "stopping" is saved, and the stop sequence begins: at once
 * when the stop mark is written, else once the save is done (stop_saved). */
void vm__act_shutdown(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    sv_vm *vm = rt->vm;
    vm__add_waiter(&rt->stop_waiters, a->done, a->userdata);
    uv_timer_stop(&rt->timer);
    vm->run.stop_force = a->force;
    vm->run.stop_timeout_ms = a->timeout_ms;
    log_info("VM %s: stopping%s", vm->name, a->force ? " (forced)" : "");
    /* a guest that is only starting would lose an ACPI request: quit it */
    rt->stop_save_force = a->force || from == SV_VM_STARTING;
    rt->stop_marked = (from == SV_VM_RUNNING || from == SV_VM_PAUSED) && rt->watch && vm->run.pid > 0 &&
                      stop_mark(rt);
    rt->stop_waits_save = !rt->stop_marked;
    if (rt->stop_marked)
        vm__begin_stop_sequence(rt, rt->stop_save_force);
    vm__save(rt, stop_saved, (void *)++rt->stop_seq);
    if (rt->stop_marked)
        sv_crash_point("stop-after-request");
}

/* abort: a stop during a start fails the start, and quits QEMU at once. */
void vm__act_abort(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    vm__act_shutdown(rt, from, a);
    vm__fail_waiters(&rt->start_waiters, ECANCELED, "start of VM '%s' aborted by a stop request", rt->vm->name);
}

/* ---- pause and resume ------------------------------------------------ */

typedef struct pause_op {
    vmrt *rt;
    bool pause;
    sv_vm_done_fn done;
    void *userdata;
} pause_op;

static json_t *pause_result(const sv_vm *vm, const char *result) {
    return json_pack("{s:s, s:s, s:s}", "name", vm->name, "state", sv_vm_state_name(vm->state), "result", result);
}

/* The state a pause or resume answers with is written (a write that failed
 * is retried, as for any change that is not a start or stop). */
static void pause_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    (void)status;
    (void)err;
    pause_op *op = userdata;
    if (!rt->vm) {
        qv_error e = {0};
        qv_error_set(&e, ECANCELED, "the VM is gone");
        op->done(-e.code, NULL, &e, op->userdata);
    } else {
        json_t *res = pause_result(rt->vm, op->pause ? "paused" : "resumed");
        op->done(0, res, NULL, op->userdata);
        json_decref(res);
    }
    free(op);
}

/* QEMU answered our `stop` or `cont`.  Commands and events come in order on
 * the monitor, so at this point the guest is as this command left it (a
 * later command's answer comes later): the state follows now unless the
 * STOP/RESUME event did it first.  A QEMU that went away meanwhile cancels
 * the command (the pidfd handles the rest). */
static void on_pause_reply(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    pause_op *op = userdata;
    vmrt *rt = op->rt;
    const char *cmd = op->pause ? "stop" : "cont";
    rt->pause_ops--;
    if (!rt->vm) {
        qv_error err = {0};
        qv_error_set(&err, ECANCELED, "the VM is gone");
        op->done(-err.code, NULL, &err, op->userdata);
    } else if (status < 0) {
        qv_error err = {0};
        if (status == QMP_ECANCELED || status == QMP_EDISCONNECTED)
            qv_error_set(&err, ECANCELED, "VM '%s': QEMU's monitor went away before it answered %s", rt->vm->name,
                         cmd);
        else
            qv_error_set(&err, EIO, "VM '%s': QEMU did not %s the guest: %s", rt->vm->name,
                         op->pause ? "pause" : "resume", e ? e->desc : strerror(-status));
        log_warning("%s", err.msg);
        op->done(-err.code, NULL, &err, op->userdata);
    } else {
        vm__note_paused(rt, op->pause);
        vm__saved_then(rt, pause_saved, op); /* what a request answers is on disk */
        return;
    }
    free(op);
}

/* send's check: QEMU's monitor is there to be asked. */
int vm__check_send(vmrt *rt, const vm_event_arg *a) {
    if (!rt->qmp)
        return qv_error_set(a->err, EIO, "VM '%s': no connection to QEMU's monitor; cannot %s it", rt->vm->name,
                            a->pause ? "pause" : "resume");
    return 0;
}

/* send: `stop` or `cont` goes to QEMU; the VM moves when QEMU answers
 * (on_pause_reply), and the request is answered then.  A command that
 * cannot be sent is answered at once. */
void vm__act_send(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    qv_error err = {0};
    pause_op *op = calloc(1, sizeof *op);
    if (!op) {
        qv_error_set(&err, ENOMEM, "out of memory");
        a->done(-err.code, NULL, &err, a->userdata);
        return;
    }
    *op = (pause_op){.rt = rt, .pause = a->pause, .done = a->done, .userdata = a->userdata};
    int r = a->pause ? qmp_stop(rt->qmp, QMP_CMD_TIMEOUT_MS, on_pause_reply, op)
                     : qmp_cont(rt->qmp, QMP_CMD_TIMEOUT_MS, on_pause_reply, op);
    if (r < 0) {
        free(op);
        qv_error_set(&err, EIO, "VM '%s': cannot send %s to QEMU's monitor: %s", vm->name, a->pause ? "stop" : "cont",
                     strerror(-r));
        a->done(-err.code, NULL, &err, a->userdata);
        return;
    }
    rt->pause_ops++;
    rt->pause_target = a->pause;
    log_info("VM %s: %s requested", vm->name, a->pause ? "pause" : "resume");
}
