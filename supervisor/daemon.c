/* Daemon: config, single-instance lock, control socket, signals. */
#include "supervisor/daemon.h"
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "spec/config.h"
#include "ctl/server.h"
#include "fileio.h"
#include "supervisor/notify.h"
#include "qv-build.h"
#include "sysroot.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* Control connections kept, above daemon.max_clients, for root and the
 * daemon's own user: other users' connections cannot lock them out. */
#define CTL_RESERVED_CLIENTS 4

/* Loads the config the daemon was started with.  A missing default file means
 * built-in defaults; a missing file named with --config is an error. */
static int load_config(const sv_daemon_options *opts, sv_config **ret, qv_error *err) {
    int r = sv_config_load_or_default(opts->config_path, opts->config_explicit, ret, NULL, err);
    if (r < 0)
        err->code = QV_ECONFIG; /* an unreadable config is a config problem (exit 78) */
    return r < 0 ? -QV_ECONFIG : 0;
}

static void apply_log_level(const sv_daemon *d) {
    if (d->opts->log_level_override >= 0)
        qv_log_set_level((qv_log_level)d->opts->log_level_override);
    else
        qv_log_set_level(sv_config_log_level(d->config));
}

/* Re-reads the config; an invalid one is refused and the old one kept. */
static int reload_config(sv_daemon *d, qv_error *err) {
    sv_notify("RELOADING=1");
    sv_config *fresh = NULL;
    int r = load_config(d->opts, &fresh, err);
    if (r < 0) {
        log_error("config reload refused, keeping the running config: %s", err->msg);
        sv_notify("READY=1\nSTATUS=config reload refused; running with the previous config");
        sv_daemon_emit(d, "config", NULL, json_pack("{s:s, s:s}", "result", "refused", "error", err->msg));
        return r;
    }
    _cleanup_free_ char *restart = NULL;
    if (sv_config_keep_restart_keys(fresh, d->config, &restart) < 0) {
        sv_config_free(fresh);
        log_error("config reload refused: out of memory");
        sv_notify("READY=1\nSTATUS=config reload refused; running with the previous config");
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    if (restart)
        log_warning("config reload: %s changed; the daemon keeps the running values until it restarts",
                    restart);
    sv_daemon_emit(d, "config", NULL, json_pack("{s:s, s:s?, s:s?}", "result", "reloaded", "source", fresh->source,
                                                "kept_until_restart", restart));
    sv_config_free(d->config);
    d->config = fresh;
    apply_log_level(d);
    log_info("config reloaded from %s", d->config->source ? d->config->source : "built-in defaults");
    sv_notify("READY=1\nSTATUS=running");
    return 0;
}

/* ---- control methods --------------------------------------------------- */

static void m_ping(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    sv_ctl_reply(req, json_pack("{s:s, s:i, s:I, s:I, s:s, s:s}", "version", QV_VERSION, "pid", (int)getpid(),
                                "started_at", (json_int_t)d->started_wall, "uptime_ms",
                                (json_int_t)(qv_now_ms() - d->started_ms), "config",
                                d->config->source ? d->config->source : "(built-in defaults)", "socket",
                                d->config->socket_path));
}

static void m_config_get(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    sv_ctl_reply(req, sv_config_to_json(d->config));
}

static void m_config_reload(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    qv_error err = {0};
    if (reload_config(d, &err) < 0) {
        sv_ctl_reply_error(req, QV_ECONFIG, "config reload refused, the daemon keeps its running config: %s",
                           err.msg);
        return;
    }
    sv_ctl_reply(req, json_pack("{s:s}", "config", d->config->source ? d->config->source : ""));
}

/* Who may call a method (docs/protocol.md, "Who may do what"). */
typedef enum method_access {
    ANYONE,     /* whoever may connect: what vm list and vm show tell anyway */
    OWNER,      /* PRIVILEGED, or the owner of the VM the request names */
    PRIVILEGED, /* root, the daemon's own uid, the socket group (peer->may_write) */
} method_access;

/* Each method has fn, or vm_fn when it acts on the VM params.name names. */
static const struct method {
    const char *name;
    method_access access;
    method_fn fn;
    vm_method_fn vm_fn;
} methods[] = {
    {"ping", ANYONE, m_ping, NULL},
    {"config.get", ANYONE, m_config_get, NULL},
    {"config.reload", PRIVILEGED, m_config_reload, NULL},
    {"image.list", ANYONE, sv_api_image_list, NULL},
    {"image.import", PRIVILEGED, sv_api_image_import, NULL},
    {"image.remove", PRIVILEGED, sv_api_image_remove, NULL},
    {"image.create", PRIVILEGED, sv_api_image_create, NULL},
    /* an owner is given at create, by those who may give it; a job's VM is
     * removed by the job's epilog, not by its user */
    {"vm.create", PRIVILEGED, sv_api_vm_create, NULL},
    {"vm.list", ANYONE, sv_api_vm_list, NULL},
    {"vm.show", ANYONE, NULL, sv_api_vm_show},
    {"vm.remove", PRIVILEGED, NULL, sv_api_vm_remove},
    /* a clone is a new VM: created by those who create VMs, never by an
     * owner of the source (docs/protocol.md) */
    {"vm.clone", PRIVILEGED, NULL, sv_api_vm_clone},
    {"vm.start", OWNER, NULL, sv_api_vm_start},
    {"vm.stop", OWNER, NULL, sv_api_vm_stop},
    {"vm.restart", OWNER, NULL, sv_api_vm_restart},
    {"vm.pause", OWNER, NULL, sv_api_vm_pause},
    {"vm.resume", OWNER, NULL, sv_api_vm_resume},
    /* not changes, but a console is a root shell on many guests and the
     * serial log can hold what it printed: not for everyone */
    {"vm.console", OWNER, NULL, sv_api_vm_console},
    {"vm.log", OWNER, NULL, sv_api_vm_log},
    /* the key of the VM's --ssh pair: vm ssh for a user who cannot read
     * the instance directory, only for a VM of theirs */
    {"vm.ssh_key", OWNER, NULL, sv_api_vm_ssh_key},
    /* the guest agent runs commands as root in the guest: as the console */
    {"vm.exec", OWNER, NULL, sv_api_vm_exec},
    {"vm.exec_status", OWNER, NULL, sv_api_vm_exec_status},
    {"vm.file_open", OWNER, NULL, sv_api_vm_file_open},
    {"vm.file_read", OWNER, NULL, sv_api_vm_file_read},
    {"vm.file_write", OWNER, NULL, sv_api_vm_file_write},
    {"vm.file_close", OWNER, NULL, sv_api_vm_file_close},
    {"vm.copy_in", OWNER, NULL, sv_api_vm_copy_in},
    {"vm.copy_out", OWNER, NULL, sv_api_vm_copy_out},
    /* disk snapshots (docs/snapshots.md): changes to the VM's own disk, as
     * a start or a stop is; the list is a read */
    {"vm.snapshot.create", OWNER, NULL, sv_api_vm_snapshot_create},
    {"vm.snapshot.remove", OWNER, NULL, sv_api_vm_snapshot_remove},
    {"vm.snapshot.revert", OWNER, NULL, sv_api_vm_snapshot_revert},
    {"vm.snapshot.list", ANYONE, NULL, sv_api_vm_snapshot_list},
    /* what a VM may take of the node (CPUs, memory, GPUs, NICs, its disk)
     * is decided where its VM is created, not by its owner: an owner's job
     * (a Slurm job) must not grow past what it was given */
    {"vm.edit", PRIVILEGED, NULL, sv_api_vm_edit},
    {"vm.resize", PRIVILEGED, NULL, sv_api_vm_resize},
    {"gpu.list", ANYONE, sv_api_gpu_list, NULL},
    {"net.list", ANYONE, sv_api_net_list, NULL},
    {"node.status", ANYONE, sv_api_node_status, NULL},
    {"node.metrics", ANYONE, sv_api_node_metrics, NULL},
    /* what vm.list and vm.show tell anyone who may connect, as it happens */
    {"events.subscribe", ANYONE, sv_api_events_subscribe, NULL},
    {"vm.wait", ANYONE, NULL, sv_api_vm_wait},
    {"net.teardown", PRIVILEGED, sv_api_net_teardown, NULL},
    {"node.cleanup", PRIVILEGED, sv_api_cleanup, NULL},
};

static const struct method *find_method(const char *name) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(methods); i++)
        if (strcmp(methods[i].name, name) == 0)
            return &methods[i];
    return NULL;
}

int sv_authorize(const sv_ctl_peer *peer, const char *method, const sv_vm *vm, const char *socket_group,
                 qv_error *err) {
    const struct method *m = find_method(method);
    if (!m)
        return qv_error_set(err, ENOSYS, "unknown method '%s'", method);
    if (m->access == ANYONE || peer->may_write)
        return 0;
    const sv_vmspec *spec = m->access == OWNER && vm ? sv_vm_spec(vm) : NULL;
    if (spec && spec->owner != SV_UNSET) {
        if (spec->owner == (uint64_t)peer->uid)
            return 0;
        char job[48] = "";
        if (spec->slurm_job != SV_UNSET)
            snprintf(job, sizeof job, " (job %llu)", (unsigned long long)spec->slurm_job);
        return qv_error_set(err, EPERM, "VM '%s' belongs to uid %llu%s; you are uid %u", sv_vm_name(vm),
                            (unsigned long long)spec->owner, job, (unsigned)peer->uid);
    }
    return qv_error_set(err, EPERM, "%s needs root or membership in the group '%s'", method,
                        socket_group[0] ? socket_group : "(none configured)");
}

/* The VM a request names (params.name), NULL for none: looked up once, so
 * that the authorisation and the handler see the same VM. */
static sv_vm *named_vm(sv_daemon *d, json_t *params) {
    const char *name = json_string_value(json_object_get(params, "name"));
    return name && qv_name_valid(name) ? sv_registry_find(d->registry, name) : NULL;
}

static void on_request(sv_ctl_req *req, const char *method, json_t *params, void *userdata) {
    sv_daemon *d = userdata;
    const sv_ctl_peer *peer = sv_ctl_req_peer(req);
    const struct method *m = find_method(method);
    if (!m) {
        sv_ctl_reply_error(req, ENOSYS, "unknown method '%s' (is the daemon older than this qvisor?)", method);
        return;
    }
    sv_vm *vm = m->vm_fn ? named_vm(d, params) : NULL;
    qv_error err = {0};
    if (sv_authorize(peer, method, vm, d->config->socket_group, &err) < 0) {
        log_info("refused %s from uid %u (pid %d): %s", method, (unsigned)peer->uid, (int)peer->pid, err.msg);
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    log_debug("request %s from uid %u", method, (unsigned)peer->uid);
    if (m->fn) {
        m->fn(d, req, params);
        return;
    }
    if (vm) {
        m->vm_fn(d, req, vm, params);
        return;
    }
    const char *name = sv_api_name_param(req, params, "VM"); /* replies when bad */
    if (name)
        sv_ctl_reply_error(req, ENOENT, "no VM named '%s'", name);
}

/* ---- metrics -------------------------------------------------------------- */

sv_scrape_ctx sv_daemon_scrape_ctx(const sv_daemon *d) {
    return (sv_scrape_ctx){.registry = d->registry, .vmctl = d->vmctl, .config = d->config,
                           .started_wall = d->started_wall};
}

static void *metrics_start(void *userdata, sv_metrics_text_fn done, void *done_data) {
    sv_scrape_ctx ctx = sv_daemon_scrape_ctx(userdata);
    return sv_scrape_start(&ctx, done, done_data);
}

static void metrics_cancel(void *scrape) {
    sv_scrape_cancel(scrape);
}

/* The HTTP endpoint when metrics.listen names one (docs/metrics.md). */
static int start_metrics(sv_daemon *d, gid_t group, qv_error *err) {
    if (!d->config->metrics_listen[0])
        return 0;
    sv_metrics_source src = {.start = metrics_start, .cancel = metrics_cancel, .userdata = d};
    int r = sv_metrics_server_new(&d->loop, d->config->metrics_listen, group, &src, &d->metrics, err);
    if (r == 0)
        log_info("metrics on %s%s", d->config->metrics_listen, d->config->metrics_listen[0] == '/' ? "" : "/metrics");
    return r;
}

/* ---- lifecycle ----------------------------------------------------------- */

void sv_daemon_emit(sv_daemon *d, const char *type, const char *vm, json_t *fields) {
    if (d->events && !d->stopping)
        sv_events_emit(d->events, type, vm, fields);
    else
        json_decref(fields);
}

static void engine_emit(const char *type, const char *vm, json_t *fields, void *userdata) {
    sv_daemon_emit(userdata, type, vm, fields);
}

static void daemon_stop(sv_daemon *d, const char *why) {
    if (d->stopping)
        return;
    d->stopping = true;
    log_info("stopping (%s); VMs keep running", why);
    sv_notify("STOPPING=1");
    sv_metrics_server_close(d->metrics); /* its scrapes first: they read the engine */
    d->metrics = NULL;
    sv_vmctl_shutdown(d->vmctl);
    d->vmctl = NULL;
    sv_logstream_end(&d->logstreams, NULL, "daemon", "the qvisor daemon is stopping");
    sv_api_waits_cancel(d);
    sv_events_free(d->events);
    d->events = NULL;
    sv_ctl_server_close(d->ctl);
    d->ctl = NULL;
    for (size_t i = 0; i < d->n_signals; i++)
        uv_close((uv_handle_t *)&d->signals[i], NULL);
    d->n_signals = 0;
}

static void on_signal(uv_signal_t *h, int signum) {
    sv_daemon *d = h->data;
    if (signum == SIGHUP) {
        qv_error err = {0};
        log_info("SIGHUP: reloading the config");
        reload_config(d, &err);
        return;
    }
    daemon_stop(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* Takes run_dir/qvisor.lock so two daemons never manage the same node. */
static int take_lock(sv_daemon *d, qv_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/qvisor.lock", d->config->run_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return qv_error_set(err, errno, "cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK)
            return qv_error_set(err, EEXIST, "another qvisor daemon (pid %s) is running with run directory %s",
                                pid[0] ? pid : "?", d->config->run_dir);
        return qv_error_set(err, e, "cannot lock %s: %s", path, strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        log_warning("cannot record the daemon pid in %s", path);
    d->lock_fd = fd;
    return 0;
}

static int make_dirs(const sv_config *c, qv_error *err) {
    struct {
        const char *path;
        mode_t mode;
    } dirs[] = {
        {c->run_dir, 0755}, {c->state_dir, 0750}, {c->images_dir, 0750}, {c->instances_dir, 0750},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(dirs); i++) {
        int r = qv_mkdir_p(dirs[i].path, dirs[i].mode);
        if (r < 0)
            return qv_error_set(err, r, "cannot create directory %s: %s", dirs[i].path, strerror(-r));
    }
    return 0;
}

static int resolve_group(const char *name, gid_t *ret, qv_error *err) {
    *ret = (gid_t)-1;
    if (!name[0])
        return 0;
    struct group *g = getgrnam(name);
    if (!g)
        return qv_error_set(err, QV_ECONFIG, "daemon.socket_group: no group named '%s' on this node", name);
    *ret = g->gr_gid;
    return 0;
}

static int start_signals(sv_daemon *d) {
    static const int signums[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < QV_ARRAY_SIZE(signums); i++) {
        uv_signal_t *h = &d->signals[d->n_signals];
        int r = uv_signal_init(&d->loop, h);
        if (r < 0)
            return r;
        h->data = d;
        d->n_signals++;
        r = uv_signal_start(h, on_signal, signums[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

int sv_daemon_run(const sv_daemon_options *opts, qv_error *err) {
    sv_daemon d = {.opts = opts, .lock_fd = -1};
    int r = load_config(opts, &d.config, err);
    if (r < 0)
        return r;
    apply_log_level(&d);
    signal(SIGPIPE, SIG_IGN);

    r = qv_sysroot_set(d.config->sysfs_root);
    if (r < 0) {
        qv_error_set(err, QV_ECONFIG, "paths.sysfs_root %s: %s", d.config->sysfs_root, strerror(-r));
        goto out;
    }
    gid_t group;
    r = resolve_group(d.config->socket_group, &group, err);
    if (r < 0)
        goto out;
    r = make_dirs(d.config, err);
    if (r < 0)
        goto out;
    /* a second line of defence: whatever is created without an explicit
     * mode (QEMU's own files, a helper's output) is not readable by others.
     * After make_dirs: the run directory stays traversable for the socket's
     * group. */
    umask(027);
    r = take_lock(&d, err);
    if (r < 0)
        goto out;
    int cleaned = 0;
    r = sv_registry_load(&d.config, &d.registry, &cleaned, err);
    if (r < 0)
        goto out;

    r = uv_loop_init(&d.loop);
    if (r < 0) {
        qv_error_set(err, -r, "uv_loop_init: %s", uv_strerror(r));
        goto out;
    }
    sv_ctl_options copts = {
        .path = d.config->socket_path,
        /* everyone: reads are anyone's, and sv_authorize() decides the rest */
        .mode = d.config->socket_access == SV_SOCKET_EVERYONE ? 0666 : 0660,
        .group = group,
        .max_request = d.config->max_request_size,
        .max_clients = d.config->max_clients,
        .reserved_clients = CTL_RESERVED_CLIENTS,
        .line_timeout_ms = (unsigned)d.config->ctl_line_timeout_ms,
        .idle_timeout_ms = (unsigned)d.config->ctl_idle_timeout_ms,
        .handler = on_request,
        .userdata = &d,
    };
    r = sv_ctl_server_new(&d.loop, &copts, &d.ctl, err);
    if (r == -EADDRINUSE)
        err->code = EEXIST;
    if (r >= 0 && (r = sv_events_new(&d.loop, &d.events)) < 0)
        qv_error_set(err, -r, "out of memory");
    if (r >= 0)
        r = sv_vmctl_new(&d.loop, d.registry, &d.config, &d.vmctl, err);
    if (r >= 0)
        sv_vmctl_set_emit(d.vmctl, engine_emit, &d);
    if (r >= 0)
        r = start_metrics(&d, group, err);
    if (r >= 0)
        r = start_signals(&d);
    if (r < 0) {
        if (!err->code)
            qv_error_set(err, -r, "cannot start: %s", uv_strerror(r));
        daemon_stop(&d, "start failed");
        uv_run(&d.loop, UV_RUN_DEFAULT);
        uv_loop_close(&d.loop);
        r = -err->code;
        goto out;
    }
    sv_vmctl_adopt_all(d.vmctl);
    d.started_ms = qv_now_ms();
    d.started_wall = time(NULL);
    log_info("qvisor %s ready on %s (config: %s)", QV_VERSION, d.config->socket_path,
             d.config->source ? d.config->source : "built-in defaults");
    sv_notify("READY=1\nSTATUS=running");

    uv_run(&d.loop, UV_RUN_DEFAULT);
    r = uv_loop_close(&d.loop);
    if (r < 0)
        log_warning("event loop closed with handles still open: %s", uv_strerror(r));
    r = 0;
out:
    sv_registry_free(d.registry);
    if (d.lock_fd >= 0)
        close(d.lock_fd);
    sv_config_free(d.config);
    return r;
}
