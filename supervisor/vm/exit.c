/* QEMU is gone: the pidfd watch (the authority that a QEMU exited), the
 * cleanup that runs once per process, and the restart policy. */
#include "supervisor/vm/engine.h"

static void save_stopped(vmrt *rt, bool clean, const char *how, double secs);

/* ---- the pidfd watch: QEMU really exited ----------------------------- */

static void watch_close_cb(uv_handle_t *h) {
    watch *w = h->data;
    close(w->pidfd);
    vm__rt_unref(w->rt);
    free(w);
}

void vm__watch_close(vmrt *rt) {
    watch *w = rt->watch;
    if (!w)
        return;
    rt->watch = NULL;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, watch_close_cb);
}

static void on_pidfd(uv_poll_t *h, int status, int events) {
    (void)events;
    watch *w = h->data;
    vmrt *rt = w->rt;
    char how[96];
    siginfo_t si = {0};
    if (status < 0) {
        log_warning("VM %s: watching QEMU pid %d failed (%s); treating it as gone", rt->vm->name, (int)w->pid,
                    uv_strerror(status));
        snprintf(how, sizeof how, "was lost from sight");
    } else {
        int r = waitid((idtype_t)P_PIDFD, (id_t)w->pidfd, &si, WEXITED | WNOHANG);
        if (r == 0 && si.si_pid == 0)
            return; /* spurious wake-up: not exited yet */
        if (r == 0 && si.si_code == CLD_EXITED)
            snprintf(how, sizeof how, "exited with status %d", si.si_status);
        else if (r == 0)
            snprintf(how, sizeof how, "was killed by %s (%d)", vm__signal_name(si.si_status), si.si_status);
        else /* adopted after a daemon restart: not our child, no status */
            snprintf(how, sizeof how, "exited");
    }
    vm__handle_gone(rt, how);
}

int vm__watch_start(vmrt *rt, pid_t pid, int pidfd) {
    watch *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->pidfd = pidfd;
    w->pid = pid;
    w->rt = rt;
    int r = uv_poll_init(rt->c->loop, &w->poll, pidfd);
    if (r < 0) {
        free(w);
        return r;
    }
    w->poll.data = w;
    rt->refs++;
    rt->watch = w;
    uv_poll_start(&w->poll, UV_READABLE, on_pidfd);
    return 0;
}

/* ---- QEMU is gone ------------------------------------------------------- */

static void gone_finish(vmrt *rt, pid_t pid, const char *how_exited);

static void gone_released(vmrt *rt) {
    char how[256];
    snprintf(how, sizeof how, "%s", rt->gone_how ? rt->gone_how : "exited");
    free(rt->gone_how);
    rt->gone_how = NULL;
    gone_finish(rt, rt->gone_pid, how);
}

/* The one place a QEMU's end is handled: its watch, channels, timers and
 * run files go at once; its devices go back to the host; then the state. */
void vm__handle_gone(vmrt *rt, const char *how_exited) {
    sv_vm *vm = rt->vm;
    pid_t pid = rt->watch ? rt->watch->pid : vm->run.pid;
    vm__watch_close(rt);
    sv_serial_cap_stop(rt->serial_cap);
    rt->serial_cap = NULL;
    vm__console_end(rt, json_pack("{s:s, s:s}", "reason", "stopped", "how", how_exited));
    vm__detach_channels(rt);
    uv_timer_stop(&rt->timer);
    uv_timer_stop(&rt->acpi_timer);
    vm__remove_run_files(rt);
    sv_net_fds_close(&rt->net);
    sv_net_remove_taps(vm->spec); /* normally gone with QEMU's fds already */
    free(vm->ip);
    vm->ip = NULL;
    json_decref(vm->addresses);
    vm->addresses = NULL;
    vm__set_agent(rt, NULL);
    if (vm__has_gpus(vm)) {
        free(rt->gone_how);
        rt->gone_how = strdup(how_exited);
        rt->gone_pid = pid;
        vm__release_devices(rt, gone_released);
        return;
    }
    gone_finish(rt, pid, how_exited);
}

/* The answer to the stop requests of a QEMU that is gone, given once
 * "stopped" is durable. */
typedef struct stop_answer {
    bool clean;
    char how[64];
    double secs;
    waiter *waiters;
} stop_answer;

static void stop_done_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    stop_answer *a = userdata;
    if (!a)
        return;
    const char *name = rt->vm ? rt->vm->name : "?";
    if (status < 0) {
        /* a stop is never undone: it happened, and the answer says that
         * the disk does not know yet (the write is retried) */
        vm__fail_waiters(&a->waiters, err->code,
                         "VM '%s' stopped (%s: %s), but its state could not be saved: %s; the daemon keeps "
                         "trying", name, a->clean ? "clean" : "forced", a->how, err->msg);
    } else {
        json_t *res =
            json_pack("{s:s, s:s, s:f}", "result", a->clean ? "clean" : "forced", "how", a->how, "seconds", a->secs);
        vm__complete(&a->waiters, 0, res, NULL);
        json_decref(res);
    }
    free(a);
}

/* Writes the state (stopped) and answers the stop requests once it is
 * durable: {"result": clean|forced, "how", "seconds"}, or the 75 that says
 * the stop happened but is not on disk. */
static void save_stopped(vmrt *rt, bool clean, const char *how, double secs) {
    stop_answer *a = calloc(1, sizeof *a);
    if (a) {
        a->clean = clean;
        snprintf(a->how, sizeof a->how, "%s", how);
        a->secs = secs;
        /* the requests waiting for this stop are in the answer's hands: one
         * that comes meanwhile is not this stop's */
        a->waiters = TAKE_PTR(rt->stop_waiters);
    } else {
        vm__fail_waiters(&rt->stop_waiters, ENOMEM, "VM '%s' stopped, but the daemon ran out of memory",
                         rt->vm->name);
    }
    vm__save_durable(rt, stop_done_saved, a); /* a stopped VM stays stopped after a power loss */
}

static void gone_finish(vmrt *rt, pid_t pid, const char *how_exited) {
    sv_vm *vm = rt->vm;
    int64_t ran = vm->run.started_at ? (int64_t)time(NULL) - vm->run.started_at : 0;

    char why[sizeof(((qv_error *)0)->msg)];
    bool restart = false;
    sv_vm_state before = vm->state;
    if (before == SV_VM_STARTING) {
        char tail[1024];
        vm__log_tail(rt, rt->log_offset, tail, sizeof tail);
        /* A monitor that closed because QEMU exited by itself is not the
         * cause: QEMU's exit and its words are. */
        bool own_exit = rt->monitor_failed && strncmp(how_exited, "exited", 6) == 0;
        if (rt->stop_reason && !own_exit)
            snprintf(why, sizeof why, "%s (QEMU %s)%s%s", rt->stop_reason, how_exited,
                     tail[0] ? "; QEMU said: " : "", tail);
        else
            snprintf(why, sizeof why, "QEMU %s%s%s", how_exited, tail[0] ? ": " : "", tail);
        free(rt->stop_reason); /* used up: it was this start's */
        rt->stop_reason = NULL;
        rt->monitor_failed = false;
        log_info("VM %s: QEMU pid %d %s during start; cleaned up", vm->name, (int)pid, how_exited);
        int code = rt->fail_code && !own_exit ? rt->fail_code : EIO;
        rt->fail_code = 0;
        vm__event(rt, SV_EV_START_FAILED, &(vm_event_arg){.code = code, .why = why});
        return;
    }
    if (before == SV_VM_STOPPING) {
        bool clean = rt->stage == STAGE_GRACEFUL || rt->stage == STAGE_NONE;
        const char *how = rt->stage == STAGE_NONE ? "the guest powered off" : rt->how ? rt->how : "?";
        double secs = (double)(qv_now_ms() - rt->stop_begin_ms) / 1000.0;
        if (rt->stop_reason)
            snprintf(why, sizeof why, "%s", rt->stop_reason);
        else
            snprintf(why, sizeof why, "stopped on request (%s: %s)", clean ? "clean" : "forced", how);
        log_info("VM %s: QEMU pid %d %s; %s after %.1f s; cleaned up", vm->name, (int)pid, how_exited,
                 clean ? "clean stop" : "forced stop", secs);
        vm__event(rt, SV_EV_EXITED, &(vm_event_arg){.why = why, .how = how, .clean = clean, .secs = secs});
        return;
    }
    /* running or paused: nobody asked for this */
    sv_vm_event ev;
    const sv_vmspec *s = vm->spec;
    if (rt->panicked) {
        ev = SV_EV_CRASHED;
        snprintf(why, sizeof why, "the guest kernel panicked (QEMU %s)", how_exited);
    } else if (rt->shutdown_seen && rt->shutdown_guest) {
        ev = SV_EV_EXITED;
        snprintf(why, sizeof why, "the guest powered off (%s)", rt->shutdown_reason);
    } else if (rt->shutdown_seen && strcmp(how_exited, "exited with status 0") == 0) {
        ev = SV_EV_EXITED;
        snprintf(why, sizeof why, "QEMU was told to quit by something other than qvisor (%s)",
                 rt->shutdown_reason[0] ? rt->shutdown_reason : "no reason given");
    } else {
        char tail[512];
        vm__log_tail(rt, rt->log_offset, tail, sizeof tail);
        ev = SV_EV_CRASHED;
        if (rt->our_child)
            snprintf(why, sizeof why, "QEMU %s%s%s", how_exited, tail[0] ? ": " : "", tail);
        else
            snprintf(why, sizeof why, "QEMU %s unexpectedly", how_exited);
    }
    restart = s->restart == SV_RESTART_ALWAYS || (s->restart == SV_RESTART_ON_FAILURE && ev == SV_EV_CRASHED);
    if (ran >= RESTART_RESET_S)
        vm->run.restarts = 0;
    vm__event(rt, ev, &(vm_event_arg){.why = why, .restart = restart});
}

/* finish: QEMU is gone during a stop (or the stop came before QEMU
 * existed): stopped is saved, and the stop answered once it is durable. */
void vm__act_finish(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    if (a->before_qemu) {
        vm->run = (sv_vm_run){.restarts = vm->run.restarts, .numa_node = -1};
        vm__emit(rt, "stop", json_pack("{s:s, s:s, s:f}", "result", "clean", "how", a->how, "seconds", 0.0));
        save_stopped(rt, true, a->how, 0.0);
        vm__fail_waiters(&rt->start_waiters, ECANCELED, "start of VM '%s' aborted by a stop request", vm->name);
        return;
    }
    sv_vm_set_last_exit(vm, a->why);
    vm->run = (sv_vm_run){.numa_node = -1};
    vm__emit(rt, "stop", json_pack("{s:s, s:s, s:f}", "result", a->clean ? "clean" : "forced", "how", a->how,
                                   "seconds", a->secs));
    save_stopped(rt, a->clean, a->how, a->secs);
    free(rt->stop_reason);
    rt->stop_reason = NULL;
    rt->stage = STAGE_NONE;
}

/* exit: QEMU is gone while nobody asked: why is the last exit, and the
 * restart policy applies. */
void vm__act_exit(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    sv_vm *vm = rt->vm;
    uint64_t restarts = vm->run.restarts;
    sv_vm_set_last_exit(vm, a->why);
    vm->run = (sv_vm_run){.restarts = restarts, .numa_node = -1};
    vm__persist(rt);
    if (vm->state == SV_VM_CRASHED)
        log_warning("VM %s: crashed: %s; cleaned up", vm->name, a->why);
    else
        log_info("VM %s: stopped: %s; cleaned up", vm->name, a->why);
    if (a->restart)
        vm__schedule_restart(rt);
}

/* ---- restart policy -------------------------------------------------- */

static void policy_start_done(int status, json_t *result, const qv_error *err, void *userdata) {
    (void)status;
    (void)result;
    (void)err;
    (void)userdata; /* logged by the engine itself */
}

static void on_restart_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (!rt->vm || rt->c->shutting_down)
        return;
    sv_vm *vm = rt->vm;
    if (vm->state != SV_VM_CRASHED && vm->state != SV_VM_STOPPED)
        return; /* someone started it meanwhile */
    qv_error err = {0};
    if (vm__begin_start(rt->c, vm, true, policy_start_done, NULL, &err) < 0) {
        /* refused before it began (capacity, a CPU gone, …): say so, and try
         * again later within the restart limit, as after a failed start */
        log_error("VM %s: automatic restart failed: %s", vm->name, err.msg);
        char why[sizeof err.msg + 32];
        snprintf(why, sizeof why, "automatic restart refused: %s", err.msg);
        sv_vm_set_last_exit(vm, why);
        vm__persist(rt);
        vm__schedule_restart(rt);
    }
}

/* The restart policy's delay before the Nth restart in a row: 1 s,
 * doubling, at most a minute. */
uint64_t sv_restart_backoff_ms(uint64_t restarts) {
    return restarts >= 6 ? 60000 : 1000ull << restarts;
}

void vm__schedule_restart(vmrt *rt) {
    sv_vm *vm = rt->vm;
    if (vm->run.restarts >= vm->spec->restart_limit) {
        log_error("VM %s: restart policy %s gives up after %llu restarts in a row", vm->name,
                  sv_restart_to_string(vm->spec->restart), (unsigned long long)vm->run.restarts);
        char why[sizeof(((qv_error *)0)->msg)];
        snprintf(why, sizeof why, "%s; restart limit (%llu) reached", vm->last_exit ? vm->last_exit : "stopped",
                 (unsigned long long)vm->spec->restart_limit);
        sv_vm_set_last_exit(vm, why);
        vm__persist(rt);
        vm__emit(rt, "restart", json_pack("{s:b, s:I}", "gave_up", true, "limit", (json_int_t)vm->spec->restart_limit));
        return;
    }
    uint64_t delay = sv_restart_backoff_ms(vm->run.restarts);
    vm->run.restarts++;
    vm->restarts_total++;
    vm__persist(rt);
    vm__emit(rt, "restart", json_pack("{s:b, s:I, s:I, s:f}", "gave_up", false, "attempt",
                                      (json_int_t)vm->run.restarts, "limit", (json_int_t)vm->spec->restart_limit,
                                      "delay_s", (double)delay / 1000.0));
    log_info("VM %s: restart policy %s: starting again in %.0f s (restart %llu of at most %llu)", vm->name,
             sv_restart_to_string(vm->spec->restart), (double)delay / 1000.0, (unsigned long long)vm->run.restarts,
             (unsigned long long)vm->spec->restart_limit);
    uv_timer_start(&rt->timer, on_restart_timer, delay, 0);
}
