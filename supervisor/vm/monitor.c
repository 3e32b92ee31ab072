/* What the engine reaches in a running QEMU: the QMP monitor (events,
 * `cont`, vCPU pinning), the guest agent, the serial console, and the agent
 * refresh behind `vm list`. */
#include "supervisor/vm/engine.h"

/* ---- the monitor -------------------------------------------------------- */


/* QEMU says the guest is paused, or runs again: a STOP or RESUME event, the
 * answer to our own `stop` or `cont`, or query-status after a re-adoption.
 * Whichever of these comes first moves a running or paused VM along the
 * table; the others find it there already, so it moves (and is persisted
 * and logged) once. */
/* The first PAUSE_LOG_BURST changes of a window are logged one by one, the
 * rest are counted and the count logged once the window is over: a guest
 * cannot fill the journal through its QEMU. */
static void log_pause_change(vmrt *rt, bool paused) {
    const char *name = rt->vm->name;
    uint64_t now = uv_now(rt->c->loop);
    if (now - rt->pause_window_ms >= PAUSE_LOG_WINDOW_MS) {
        if (rt->pause_unlogged)
            log_warning("VM %s: %u more pause/resume changes in %.0f s were not logged one by one", name,
                        rt->pause_unlogged, (double)(now - rt->pause_window_ms) / 1000.0);
        rt->pause_window_ms = now;
        rt->pause_logged = rt->pause_unlogged = 0;
    }
    if (rt->pause_logged < PAUSE_LOG_BURST) {
        rt->pause_logged++;
        log_info("VM %s: %s", name, paused ? "paused" : "resumed");
    } else {
        rt->pause_unlogged++;
    }
}

/* QEMU says the guest is paused or runs (QMP STOP, RESUME, or its answer
 * to our stop/cont): posted to the engine while the VM has a QEMU. */
void vm__note_paused(vmrt *rt, bool paused) {
    rt->paused = paused;
    if (sv_vm_state_has_qemu(rt->vm->state))
        vm__event(rt, paused ? SV_EV_PAUSED : SV_EV_RESUMED, NULL);
}

/* note: a change of the guest's own state.  Running and paused follow it
 * (saved at once when it answers our stop/cont, coalesced when QEMU did it
 * by itself); a guest paused during a graceful stop cannot take ACPI, so
 * the stop goes on with quit; a starting VM only notes it. */
void vm__act_note(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)a;
    sv_vm *vm = rt->vm;
    if (vm->state == SV_VM_STOPPING) {
        if (rt->paused && rt->stage == STAGE_GRACEFUL) {
            log_info("VM %s: paused during a graceful stop; no ACPI to a paused guest, forcing", vm->name);
            vm__stage_quit(rt);
        }
        return;
    }
    if (vm->state == from || vm->state == SV_VM_STARTING)
        return; /* nothing changed */
    /* our own stop/cont (a request) is written at once; what QEMU did
     * by itself is coalesced */
    if (rt->pause_ops)
        vm__persist(rt);
    else
        vm__persist_soon(rt);
    log_pause_change(rt, rt->paused);
}

/* QEMU's events that are relayed as "qemu" events with the VM's name
 * (docs/events.md); STOP and RESUME show as state changes instead. */
static const char *const relayed[] = {"SHUTDOWN", "POWERDOWN", "RESET",      "GUEST_PANICKED",
                                      "WATCHDOG", "RTC_CHANGE", "BLOCK_IO_ERROR", "GUEST_CRASHLOADED"};

/* QEMU says what it likes here (a compromised guest may steer it): the
 * data goes along only when small. */
#define RELAY_DATA_MAX 2048

static void relay(vmrt *rt, const char *name, json_t *data) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(relayed); i++) {
        if (strcmp(relayed[i], name) != 0)
            continue;
        json_t *f = json_pack("{s:s}", "event", name);
        char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
        if (f && text && strlen(text) <= RELAY_DATA_MAX)
            json_object_set(f, "data", data);
        else if (f && text)
            json_object_set_new(f, "data_dropped", json_string("larger than 2 KiB"));
        free(text);
        vm__emit(rt, "qemu", f);
        return;
    }
}

static void on_agent_ping(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata);
static void agent_ping(vmrt *rt);

static void on_qmp_event(qmp_conn *q, const char *name, json_t *data, const qmp_timestamp *ts, void *userdata) {
    (void)q;
    (void)ts;
    vmrt *rt = userdata;
    sv_vm *vm = rt->vm;
    log_debug("VM %s: QMP event %s", vm->name, name);
    relay(rt, name, data);
    if (strcmp(name, "SHUTDOWN") == 0) {
        rt->shutdown_seen = true;
        rt->shutdown_guest = json_is_true(json_object_get(data, "guest"));
        const char *reason = json_string_value(json_object_get(data, "reason"));
        snprintf(rt->shutdown_reason, sizeof rt->shutdown_reason, "%s", reason ? reason : "");
        /* QEMU's ShutdownCause names ("guest-shutdown"): anything else is
         * kept out of last_exit, which `vm show` prints */
        for (char *ch = rt->shutdown_reason; *ch; ch++)
            if (!((*ch >= 'a' && *ch <= 'z') || (*ch >= '0' && *ch <= '9') || *ch == '-'))
                *ch = '?';
        if (reason && strcmp(reason, "guest-panic") == 0)
            rt->panicked = true;
        log_debug("VM %s: SHUTDOWN (guest %d, reason %s)", vm->name, rt->shutdown_guest, reason ? reason : "?");
    } else if (strcmp(name, "GUEST_PANICKED") == 0) {
        rt->panicked = true;
        log_warning("VM %s: the guest kernel panicked", vm->name);
    } else if (strcmp(name, "STOP") == 0) {
        vm__note_paused(rt, true);
    } else if (strcmp(name, "RESUME") == 0) {
        vm__note_paused(rt, false);
    } else if (strcmp(name, "VSERPORT_CHANGE") == 0 &&
               strcmp(json_string_value(json_object_get(data, "id")) ?: "", SV_QGA_PORT_ID) == 0) {
        /* the guest opened or closed the agent's port: its agent started or
         * went away.  Up once it answers a ping. */
        rt->agent_port = json_is_true(json_object_get(data, "open"));
        if (!rt->agent_port)
            vm__set_agent(rt, "no answer");
        else
            agent_ping(rt);
    }
}


static void on_qmp_disconnect(qmp_conn *q, int status, void *userdata) {
    vmrt *rt = userdata;
    /* The exit itself is learnt from the pidfd; a monitor lost while QEMU
     * lives only means the stop must use signals. */
    if (rt->watch)
        log_debug("VM %s: monitor connection closed (%s)", rt->vm->name, strerror(-status));
    char why[256];
    snprintf(why, sizeof why, "its monitor failed: %s", qmp_failure(q)[0] ? qmp_failure(q) : strerror(-status));
    if (rt->qmp == q) {
        qmp_close(q);
        rt->qmp = NULL;
    }
    /* A start cannot succeed without its monitor: fail it now, not at the
     * start deadline.  QEMU's own words (the tail of qemu.log) are added
     * once it is gone. */
    if (rt->vm->state == SV_VM_STARTING && rt->watch && !rt->stop_reason) {
        vm__start_fail_kill(rt, why);
        rt->monitor_failed = true;
    }
}

/* The start fails with errno `code` (the exit code it maps to). */
void vm__start_fail_code(vmrt *rt, int code, const char *why) {
    log_warning("VM %s: start failed: %s; killing QEMU", rt->vm->name, why);
    free(rt->stop_reason);
    rt->stop_reason = strdup(why);
    rt->fail_code = code;
    if (rt->watch)
        sv_pidfd_signal(rt->watch->pidfd, SIGKILL); /* paused before cont: nothing to lose */
}

void vm__start_fail_kill(vmrt *rt, const char *why) {
    vm__start_fail_code(rt, EIO, why);
}

static void on_cont(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || rt->vm == NULL || rt->vm->state != SV_VM_STARTING)
        return;
    if (status < 0) {
        char why[256];
        snprintf(why, sizeof why, "cont failed: %s", e ? e->desc : strerror(-status));
        vm__start_fail_kill(rt, why);
        return;
    }
    vm__started(rt);
}

/* `cont` once QEMU's pid is written (launch.c pid_saved calls again). */
void vm__send_cont(vmrt *rt) {
    if (!rt->pid_saved) {
        rt->cont_waits_save = true;
        return;
    }
    rt->cont_waits_save = false;
    rt->cont_sent = true;
    if (!rt->qmp || qmp_cont(rt->qmp, QMP_CMD_TIMEOUT_MS, on_cont, rt) < 0)
        vm__start_fail_kill(rt, "cannot send cont");
}

/* query-cpus-fast answered while -S holds the vCPUs: pin them and every
 * other thread of QEMU (the emulator threads) to the start's CPUs, then
 * resume.  A stop that arrived meanwhile has quit QEMU: nothing to do. */
static void on_vcpus(qmp_conn *q, int status, const qmp_vcpu *cpus, size_t n_cpus, const qmp_error *e,
                     void *userdata) {
    (void)q;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || rt->vm == NULL || rt->vm->state != SV_VM_STARTING || rt->cont_sent)
        return;
    if (rt->stop_reason)
        return; /* already failing (timeout): QEMU is being killed, keep the first reason */
    sv_vm *vm = rt->vm;
    char why[sizeof(((qv_error *)0)->msg) + 32];
    if (status < 0) {
        snprintf(why, sizeof why, "query-cpus-fast failed: %s", e ? e->desc : strerror(-status));
        vm__start_fail_kill(rt, why);
        return;
    }
    pid_t tids[1024];
    if (n_cpus == 0 || n_cpus > QV_ARRAY_SIZE(tids)) {
        snprintf(why, sizeof why, "query-cpus-fast listed %zu vCPUs", n_cpus);
        vm__start_fail_kill(rt, why);
        return;
    }
    for (size_t i = 0; i < n_cpus; i++)
        tids[i] = cpus[i].thread_id;
    qv_error err = {0};
    size_t emulator = 0;
    if (sv_pin_threads((pid_t)vm->run.pid, tids, n_cpus, rt->place.cpus, rt->place.n_cpus, &emulator, &err) < 0) {
        snprintf(why, sizeof why, "pinning failed: %s", err.msg);
        vm__start_fail_kill(rt, why);
        return;
    }
    char list[256];
    if (qv_format_cpulist(rt->place.cpus, rt->place.n_cpus, list, sizeof list) < 0)
        snprintf(list, sizeof list, "?");
    log_info("VM %s: %zu vCPU thread%s and %zu emulator thread%s pinned to CPUs %s", vm->name, n_cpus,
             n_cpus == 1 ? "" : "s", emulator, emulator == 1 ? "" : "s", list);
    vm__send_cont(rt);
}

static void on_qmp_ready(qmp_conn *q, void *userdata) {
    vmrt *rt = userdata;
    sv_vm *vm = rt->vm;
    int maj = 0, min = 0, mic = 0;
    qmp_version(q, &maj, &min, &mic);
    log_debug("VM %s: monitor ready (QEMU %d.%d.%d)", vm->name, maj, min, mic);
    if (vm->state == SV_VM_STARTING && !rt->cont_sent) {
        /* setup while -S holds the vCPUs: pinning; `cont` when it is done */
        if (rt->place.n_cpus) {
            if (qmp_query_cpus_fast(q, QMP_CMD_TIMEOUT_MS, on_vcpus, rt) < 0)
                vm__start_fail_kill(rt, "cannot send query-cpus-fast");
            return;
        }
        vm__send_cont(rt);
    }
}

int vm__qmp_attach(vmrt *rt) {
    char path[PATH_MAX];
    vm__run_path(rt, SV_VM_QMP_SOCK, path, sizeof path);
    qmp_options o = {
        .on_ready = on_qmp_ready,
        .on_event = on_qmp_event,
        .on_disconnect = on_qmp_disconnect,
        .userdata = rt,
        .handshake_timeout_ms = START_TIMEOUT_MS,
    };
    return qmp_connect(rt->c->loop, path, &o, &rt->qmp);
}

/* ---- the guest agent ----------------------------------------------------- */

static void on_qga_disconnect(qga_conn *g, int status, void *userdata) {
    vmrt *rt = userdata;
    log_debug("VM %s: agent channel closed (%s)", rt->vm ? rt->vm->name : "?", strerror(-status));
    if (rt->qga == g) {
        qga_close(g);
        rt->qga = NULL;
    }
}

void vm__agent_attach(vmrt *rt) {
    if (!rt->vm->spec->agent || rt->qga)
        return;
    char path[PATH_MAX];
    vm__run_path(rt, SV_VM_QGA_SOCK, path, sizeof path);
    qga_options o = {.on_disconnect = on_qga_disconnect, .userdata = rt};
    int r = qga_connect(rt->c->loop, path, &o, &rt->qga);
    if (r < 0)
        log_warning("VM %s: cannot connect to the guest-agent channel %s: %s", rt->vm->name, path, strerror(-r));
    vm__set_agent(rt, "unknown");
    if (rt->agent_port == 1)
        agent_ping(rt); /* the guest opened the port before the start was done */
}

void vm__detach_channels(vmrt *rt) {
    if (rt->qmp) {
        qmp_close(rt->qmp);
        rt->qmp = NULL;
    }
    if (rt->qga) {
        qga_close(rt->qga);
        rt->qga = NULL;
    }
}

/* ---- serial console ------------------------------------------------------- */

/* Ends the attached console (end: stolen), or cancels a reservation whose
 * client connection has not come yet. */
void vm__console_end(vmrt *rt, json_t *end) {
    rt->console_held = false;
    if (rt->console)
        sv_relay_end(rt->console, end);
    else
        json_decref(end);
}

static void on_console_over(void *userdata) {
    vmrt *rt = userdata;
    rt->console = NULL;
    rt->console_held = false;
    if (rt->vm)
        log_info("VM %s: console detached (uid %u)", rt->vm->name, (unsigned)rt->console_uid);
    vm__rt_unref(rt);
}

int sv_vm_console_open(sv_vmctl *c, sv_vm *vm, uid_t uid, pid_t pid, int *ret_fd, qv_error *err) {
    vmrt *rt = vm->rt;
    if (!rt || !rt->watch || !sv_vm_state_has_qemu(vm->state))
        return qv_error_set(err, EHOSTDOWN, "VM '%s' is %s: it has no console (qvisor vm start %s)", vm->name,
                            sv_vm_state_name(vm->state), vm->name);
    if (rt->console_held) {
        char since[32];
        struct tm tm;
        strftime(since, sizeof since, "%H:%M:%S", localtime_r(&rt->console_since, &tm));
        return qv_error_set(err, EBUSY,
                            "the console of VM '%s' is in use by uid %u (pid %d) since %s; one client at a time "
                            "(it detaches with Ctrl-])",
                            vm->name, (unsigned)rt->console_uid, (int)rt->console_pid, since);
    }
    char path[PATH_MAX];
    if (sv_layout_run_path(cfg(c), vm->name, SV_VM_CONSOLE_SOCK, path, sizeof path) < 0)
        return qv_error_set(err, ENAMETOOLONG, "run directory path too long");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return qv_error_set(err, ENAMETOOLONG, "%s is too long for a socket path", path);
    strcpy(sa.sun_path, path);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return qv_error_set(err, errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        if (e == ENOENT)
            return qv_error_set(err, EOPNOTSUPP,
                                "VM '%s' has no console socket: its QEMU was started by a qvisor without "
                                "consoles (restart the VM to get one; serial.log: qvisor vm log %s)",
                                vm->name, vm->name);
        return qv_error_set(err, e == EAGAIN ? EBUSY : e, "cannot connect to %s: %s", path, strerror(e));
    }
    rt->console_held = true;
    rt->console_uid = uid;
    rt->console_pid = pid;
    rt->console_since = time(NULL);
    *ret_fd = TAKE_FD(fd);
    return 0;
}

void sv_vm_console_attach(sv_vmctl *c, const char *name, int client_fd, int qemu_fd) {
    sv_vm *vm = c->shutting_down ? NULL : sv_registry_find(c->registry, name);
    vmrt *rt = vm ? vm->rt : NULL;
    if (client_fd < 0) { /* the client went away before the handover */
        close(qemu_fd);
        if (rt && !rt->console)
            rt->console_held = false;
        return;
    }
    sv_relay_limits lim = SV_RELAY_LIMITS_DEFAULT;
    sv_relay *relay;
    if (!rt || !rt->console_held || rt->console) {
        /* it stopped between the answer and now: say so, and that is all */
        if (sv_relay_new(c->loop, client_fd, qemu_fd, &lim, NULL, NULL, &relay) == 0)
            sv_relay_end(relay, json_pack("{s:s}", "reason", "stopped"));
        return;
    }
    rt->refs++;
    if (sv_relay_new(c->loop, client_fd, qemu_fd, &lim, on_console_over, rt, &relay) < 0) {
        rt->console_held = false;
        vm__rt_unref(rt);
        return;
    }
    rt->console = relay;
    log_info("VM %s: console attached by uid %u (pid %d)", name, (unsigned)rt->console_uid, (int)rt->console_pid);
}

/* ---- agent refresh for `vm list` ------------------------------------ */

typedef struct refresh {
    unsigned pending;
    void (*done)(void *);
    void *userdata;
} refresh;

typedef struct refresh_item {
    refresh *r;
    vmrt *rt;
} refresh_item;

static void refresh_put(refresh *r) {
    if (--r->pending == 0) {
        r->done(r->userdata);
        free(r);
    }
}

/* What the agent said about the guest's interfaces: its addresses kept,
 * and reported when the first one changed. */
static void apply_interfaces(vmrt *rt, int status, const qga_interface *ifs, size_t n) {
    if (!rt->vm || status == QMP_ECANCELED)
        return;
    sv_vm *vm = rt->vm;
    char *was = vm->ip ? strdup(vm->ip) : NULL;
    rt->agent_checked_ms = qv_now_ms();
    vm__set_agent(rt, status == 0 ? "ok" : status == QMP_EBADREPLY ? "bad reply" : "no answer");
    if (status == 0) {
        json_t *addrs = json_array();
        const char *first4 = NULL, *first6 = NULL;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < ifs[i].n_addrs; k++) {
                const qga_ip_address *a = &ifs[i].addrs[k];
                if (strcmp(ifs[i].name, "lo") == 0)
                    continue;
                json_array_append_new(addrs, json_pack("{s:s, s:s, s:i}", "interface", ifs[i].name, "address",
                                                       a->address, "prefix", (int)a->prefix));
                if (a->family == AF_INET && !first4)
                    first4 = a->address;
                if (a->family == AF_INET6 && !first6 && strncmp(a->address, "fe80", 4) != 0)
                    first6 = a->address;
            }
        json_decref(vm->addresses);
        vm->addresses = addrs;
        free(vm->ip);
        vm->ip = first4 ? strdup(first4) : first6 ? strdup(first6) : NULL;
    } else {
        if (status == QMP_EBADREPLY) { /* refused (qga.h says why): nothing of it is kept */
            json_decref(vm->addresses);
            vm->addresses = NULL;
            free(vm->ip);
            vm->ip = NULL;
        }
    }
    if (strcmp(was ? was : "", vm->ip ? vm->ip : "") != 0)
        vm__emit(rt, "ip", json_pack("{s:o, s:O}", "ip", vm->ip ? json_string(vm->ip) : json_null(), "addresses",
                                     vm->addresses ? vm->addresses : json_null()));
    free(was);
}

void vm__set_agent(vmrt *rt, const char *status) {
    sv_vm *vm = rt->vm;
    bool was_up = vm->agent && strcmp(vm->agent, "ok") == 0, up = status && strcmp(status, "ok") == 0;
    vm->agent = status;
    if (up != was_up)
        vm__emit(rt, "agent", json_pack("{s:b, s:s}", "up", up, "status", status ? status : "gone"));
}

static void on_up_interfaces(qga_conn *g, int status, const qga_interface *ifs, size_t n, const qmp_error *e,
                             void *userdata) {
    (void)g;
    (void)e;
    vmrt *rt = userdata;
    rt->agent_busy = false;
    apply_interfaces(rt, status, ifs, n);
}

/* The agent's port opened and it answered (or not): up, and its
 * addresses asked at once (the IP a user waits for). */
static void on_agent_ping(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)result;
    (void)e;
    vmrt *rt = userdata;
    rt->agent_busy = false;
    if (!rt->vm || status == QMP_ECANCELED)
        return;
    vm__set_agent(rt, status == 0 ? "ok" : "no answer");
    if (status == 0 && qga_network_get_interfaces(g, QMP_CMD_TIMEOUT_MS, on_up_interfaces, rt) == 0)
        rt->agent_busy = true;
    if (status == 0)
        vm__guest_copy_recover(rt); /* copies into the guest that did not end: their files go */
}

static void on_interfaces(qga_conn *g, int status, const qga_interface *ifs, size_t n, const qmp_error *e,
                          void *userdata) {
    (void)g;
    (void)e;
    refresh_item *it = userdata;
    vmrt *rt = it->rt;
    apply_interfaces(rt, status, ifs, n);
    rt->agent_busy = false;
    refresh_put(it->r);
    free(it);
}

/* An agent whose port the guest has opened is asked whether it is up. */
static void agent_ping(vmrt *rt) {
    if (rt->qga && !rt->agent_busy && qga_ping(rt->qga, AGENT_PING_MS, on_agent_ping, rt) == 0)
        rt->agent_busy = true;
}

void sv_vmctl_refresh_agents(sv_vmctl *c, uint64_t timeout_ms, void (*done)(void *), void *userdata) {
    refresh *r = calloc(1, sizeof *r);
    if (!r) {
        done(userdata);
        return;
    }
    r->pending = 1; /* ours, dropped at the end */
    r->done = done;
    r->userdata = userdata;
    uint64_t now = qv_now_ms();
    for (vmrt *rt = c->rts; rt; rt = rt->next) {
        /* a port the guest has not opened has no agent behind it: asking
         * would only wait out the timeout */
        if (!rt->vm || !rt->qga || rt->agent_busy || rt->vm->state != SV_VM_RUNNING || rt->agent_port == 0)
            continue;
        if (rt->agent_checked_ms && now - rt->agent_checked_ms < AGENT_FRESH_MS)
            continue;
        refresh_item *it = calloc(1, sizeof *it);
        if (!it)
            break;
        it->r = r;
        it->rt = rt;
        if (qga_network_get_interfaces(rt->qga, timeout_ms, on_interfaces, it) < 0) {
            free(it);
            continue;
        }
        rt->agent_busy = true;
        r->pending++;
    }
    refresh_put(r);
}

json_t *sv_vm_runtime_json(sv_vmctl *c, const sv_vm *vm) {
    char p[PATH_MAX];
    json_t *j = json_object();
    const vmrt *rt = vm->rt;
    bool up = rt && rt->watch;
    if (sv_layout_run_path(cfg(c), vm->name, SV_VM_QMP_SOCK, p, sizeof p) == 0)
        json_object_set_new(j, "qmp_socket", json_string(p));
    if (vm->spec->agent && sv_layout_run_path(cfg(c), vm->name, SV_VM_QGA_SOCK, p, sizeof p) == 0)
        json_object_set_new(j, "agent_socket", json_string(p));
    if (sv_layout_run_path(cfg(c), vm->name, SV_VM_PIDFILE, p, sizeof p) == 0)
        json_object_set_new(j, "pidfile", json_string(p));
    json_object_set_new(j, "monitor", json_string(!up ? "-" : rt->qmp && qmp_is_ready(rt->qmp) ? "connected"
                                                                                             : "not connected"));
    if (up && rt->stage != STAGE_NONE)
        json_object_set_new(j, "stop_step", json_string(rt->how ? rt->how : "?"));
    if (c->caps_state == CAPS_DONE && c->caps_status == 0)
        json_object_set_new(j, "qemu_version", json_string(c->caps.version));
    return j;
}
