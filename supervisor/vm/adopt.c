/* Re-adoption after a daemon restart: QEMU processes recognised by their
 * pidfile and command line, their monitors reconnected, their status asked. */
#include "supervisor/vm/engine.h"

/* ---- adoption after a daemon restart ---------------------------------- */

/* The pid in RUN_DIR/vm/NAME/qemu.pid, if that process is our QEMU for the
 * VM (command line; no start time is known for it). */
static pid_t pid_from_pidfile(vmrt *rt, uint64_t *ret_ticks) {
    char path[PATH_MAX];
    vm__run_path(rt, SV_VM_PIDFILE, path, sizeof path);
    _cleanup_free_ char *text = NULL;
    if (qv_read_file(path, 64, &text, NULL) < 0)
        return 0;
    uint64_t pid;
    text[strcspn(text, "\n")] = '\0';
    if (qv_parse_uint(text, 2, INT32_MAX, &pid) < 0)
        return 0;
    uint64_t ticks;
    if (sv_proc_start_time((pid_t)pid, &ticks) < 0 || !sv_proc_is_our_qemu((pid_t)pid, ticks, rt->vm->name, path))
        return 0;
    *ret_ticks = ticks;
    return (pid_t)pid;
}

/* query-status of a re-adopted QEMU.  state.json says running or paused
 * as of the last STOP/RESUME it saw; a daemon that died between QEMU's
 * answer and that write left it wrong, and QEMU sends no events for the
 * past.  A stop waiting for this goes on now: quit for a paused guest, and
 * quit too when QEMU cannot say (a monitor that cannot answer this cannot
 * deliver ACPI either). */
static void on_adopt_status(qmp_conn *q, int status, const qmp_run_status *st, const qmp_error *e,
                            void *userdata) {
    (void)q;
    vmrt *rt = userdata;
    bool stop_waits = rt->stop_waits_status;
    rt->status_pending = rt->stop_waits_status = false;
    if (status == QMP_ECANCELED || !rt->vm)
        return;
    sv_vm *vm = rt->vm;
    if (status == 0) {
        /* every run state but running and a guest's own suspend (S3) is a
         * vm_stop, announced by a STOP event when it happens live */
        bool paused = !st->running && strcmp(st->status ? st->status : "", "suspended") != 0;
        if ((vm->state == SV_VM_RUNNING && paused) || (vm->state == SV_VM_PAUSED && !paused))
            log_info("VM %s: QEMU reports the guest %s (%s), its saved state said %s", vm->name,
                     paused ? "paused" : "running", st->status ? st->status : "?", sv_vm_state_name(vm->state));
        vm__note_paused(rt, paused);
    } else {
        log_warning("VM %s: query-status after re-adoption failed: %s", vm->name,
                    e ? e->desc : strerror(-status));
    }
    if (stop_waits && vm->state == SV_VM_STOPPING && rt->stage == STAGE_NONE)
        vm__stop_first_step(rt, vm->run.stop_force || status < 0);
}

/* Asks a re-adopted QEMU whether its guest is paused (on_adopt_status). */
static void adopt_query_status(vmrt *rt) {
    if (rt->qmp && qmp_query_status(rt->qmp, QMP_CMD_TIMEOUT_MS, on_adopt_status, rt) == 0)
        rt->status_pending = true;
}

static void adopt(sv_vmctl *c, sv_vm *vm) {
    vmrt *rt = vm__get_rt(c, vm);
    if (!rt)
        return;
    char pidfile[PATH_MAX];
    vm__run_path(rt, SV_VM_PIDFILE, pidfile, sizeof pidfile);
    pid_t pid = vm->run.pid;
    bool ours = pid > 0 && sv_proc_is_our_qemu(pid, vm->run.start_ticks, vm->name, pidfile);
    if (!ours && pid <= 0 && vm->state == SV_VM_STARTING) {
        /* the daemon died between saving "starting" and saving the pid */
        uint64_t ticks = 0;
        pid = pid_from_pidfile(rt, &ticks);
        if (pid > 0) {
            ours = true;
            vm->run.pid = pid;
            vm->run.start_ticks = ticks;
        }
    }
    int pidfd = ours ? sv_pidfd_open(pid) : -ESRCH;
    if (pidfd < 0) {
        if (pid > 0 && !ours && sv_proc_alive(pid))
            log_warning("VM %s: pid %d is now another process (command line or start time differ); not touched",
                        vm->name, (int)pid);
        rt->our_child = false;
        rt->log_offset = 0;
        if (vm->state == SV_VM_STARTING || vm->state == SV_VM_STOPPING) {
            /* a start that never got a QEMU failed; a stop whose QEMU is
             * gone ended: the table's abandon and finish, with nobody to
             * answer */
            vm__remove_run_files(rt);
            if (vm->state == SV_VM_STARTING)
                vm__event(rt, SV_EV_START_FAILED,
                          &(vm_event_arg){.code = EINTR, .why = "interrupted by a daemon restart before QEMU ran"});
            else
                vm__event(rt, SV_EV_EXITED,
                          &(vm_event_arg){.why = "stopped while the daemon was not running",
                                          .how = "QEMU gone while the daemon was not running", .clean = true});
            return;
        }
        /* running or paused before: it ended while nobody watched */
        rt->watch = NULL;
        log_warning("VM %s: QEMU pid %d is gone; it ended while the daemon was not running", vm->name, (int)pid);
        vm__handle_gone(rt, "exited while the daemon was not running");
        return;
    }
    if (vm__watch_start(rt, pid, pidfd) < 0) {
        close(pidfd);
        log_error("VM %s: cannot watch QEMU pid %d; leaving it alone", vm->name, (int)pid);
        return;
    }
    rt->our_child = false;
    rt->cont_sent = true;
    rt->agent_port = -1; /* QEMU does not tell again what it told the last daemon */
    vm__serial_cap_start(rt);
    if (vm__qmp_attach(rt) < 0)
        log_warning("VM %s: cannot reconnect to the monitor; a stop will use signals", vm->name);
    else if (vm->state != SV_VM_STARTING)
        adopt_query_status(rt);
    switch (vm->state) {
    case SV_VM_STARTING:
        log_info("VM %s: QEMU pid %d was half-started by the previous daemon; stopping it", vm->name, (int)pid);
        rt->cont_sent = false;
        rt->stop_reason = strdup("start interrupted by a daemon restart; QEMU was stopped");
        vm__event(rt, SV_EV_STOP, &(vm_event_arg){.force = true}); /* abort: quit once "stopping" is saved */
        break;
    case SV_VM_STOPPING:
        log_info("VM %s: finishing the stop the previous daemon began (QEMU pid %d)", vm->name, (int)pid);
        vm__begin_stop_sequence(rt, vm->run.stop_force);
        break;
    default:
        log_info("VM %s: re-adopted QEMU pid %d (%s)", vm->name, (int)pid, sv_vm_state_name(vm->state));
        rt->paused = vm->state == SV_VM_PAUSED;
        vm__agent_attach(rt);
        vm__snapshot_adopted(rt); /* a guest a live snapshot left frozen is thawed */
        vm__guest_copy_recover(rt); /* a copy into the guest the last daemon left is undone */
        break;
    }
}

void sv_vmctl_adopt_all(sv_vmctl *c) {
    for (sv_vm *vm = sv_registry_first(c->registry); vm; vm = vm->next)
        if (sv_vm_state_has_qemu(vm->state))
            adopt(c, vm);
        else
            sv_net_remove_taps(vm->spec); /* a TAP a crash left behind */
    /* automatic restarts of VMs that died while the daemon was down
     * were scheduled by vm__handle_gone; devices taken for VMs that do not
     * run (a crash between bind and QEMU, or a VM removed) go back */
    sv_vmctl_release_orphans(c);
}
