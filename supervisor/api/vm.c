/* Control methods for VMs: create, list, show, start, stop, restart, pause,
 * resume, remove, console, log, ssh_key. */
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"
#include "host/firmware.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/nics.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/resources/resources.h"
#include "supervisor/vm/lifecycle.h"
#include "supervisor/vm/vm.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

/* ---- VMs ------------------------------------------------------------------- */

typedef struct create_ctx {
    sv_daemon *d;
    sv_ctl_req *req;
} create_ctx;

static void create_done(int status, sv_vm *vm, const qv_error *err, void *userdata) {
    create_ctx *x = userdata;
    sv_ctl_req *req = x->req;
    sv_daemon *d = x->d;
    free(x);
    if (status < 0) {
        log_info("create failed: %s", err->msg);
        sv_ctl_reply_qv_error(req, err);
        return;
    }
    /* a daemon stopping meanwhile has no engine: the next one loads the
     * VM from its directory */
    if (d->vmctl)
        sv_vm_created(d->vmctl, vm);
    log_info("created VM %s (%s, %llu CPUs)", sv_vm_name(vm), sv_vm_spec(vm)->image, (unsigned long long)sv_vm_spec(vm)->cpus);
    sv_ctl_reply(req, sv_vm_details(vm));
}

/* The client's boot files (kernel_fd, initrd_fd), -1 for none. */
typedef struct boot_fds {
    int kernel, initrd;
} boot_fds;

static void boot_fds_close(boot_fds *b) {
    qv_closep(&b->kernel);
    qv_closep(&b->initrd);
}

/* The rest of a create, once the spec is checked against the node: GPUs,
 * NICs, room, then the registry's work.  Takes spec and the boot files. */
int sv_api_vm_admit(sv_daemon *d, sv_vmspec *spec, const char *op, qv_error *err) {
    if (sv_pt_prepare_spec(d->registry, d->config, spec, err) < 0 ||
        sv_net_prepare_spec(d->registry, d->config, spec, err) < 0)
        return -err->code;
    /* room on the node, in its pool and in its storage pool: every defined VM counts */
    int numa = spec->numa_want.mode == SV_NUMA_NODE ? (int)spec->numa_want.node : -1;
    sv_storage_usage su;
    int fit = -1;
    if (sv_resources_admit(d->registry, d->config, NULL, spec, true, numa, err) < 0 ||
        sv_resources_storage(d->registry, d->config, sv_resources_storage_pool_of(d->config, spec), &su, err) < 0 ||
        (fit = sv_storage_fit(&su, spec->disk, err)) < 0) {
        sv_daemon_emit(d, "admission", spec->name, json_pack("{s:s, s:s, s:s}", "op", op, "error", err->msg,
                                                             "code", qv_errno_name(err->code)));
        return -err->code;
    }
    if (fit == SV_STORAGE_THIN)
        log_warning("VM %s: storage pool %s is thinly overcommitted: its disks could outgrow its free space", spec->name,
                    su.pool);
    return 0;
}

/* The rest of a create, once the spec is checked against the node: GPUs,
 * NICs, room, then the registry's work.  Takes spec and the boot files. */
static void create_continue(sv_daemon *d, sv_ctl_req *req, sv_vmspec *spec, boot_fds boot) {
    qv_error err = {0};
    if (sv_api_vm_admit(d, spec, "create", &err) < 0) {
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    create_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    *x = (create_ctx){.d = d, .req = req};
    if (sv_registry_create(d->registry, &d->loop, spec, boot.kernel, boot.initrd, create_done, x, &err) < 0) {
        free(x);
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_qv_error(req, &err);
    }
}

typedef struct create_wait {
    sv_daemon *d;
    sv_ctl_req *req;
    sv_vmspec *spec;
    boot_fds boot;
} create_wait;

/* A named cpu_model, against the CPU models this node's QEMU lists. */
static void create_with_caps(int status, const sv_qemu_caps *caps, bool kvm, const qv_error *e, void *userdata) {
    create_wait *w = userdata;
    qv_error err = {0};
    if (status < 0) {
        err = *e;
        qv_error_prefix(&err, "cannot check cpu_model '%s'", w->spec->cpu_model);
    } else if (sv_qemu_cpu_model_check(caps, kvm, w->spec->cpu_model, &err) == 0) {
        create_continue(w->d, w->req, w->spec, w->boot);
        free(w);
        return;
    }
    sv_vmspec_free(w->spec);
    boot_fds_close(&w->boot);
    sv_ctl_reply_qv_error(w->req, &err);
    free(w);
}

/* {"spec": SPEC, "kernel_fd": N, "initrd_fd": N}: the kernel and initrd
 * are the client's files, sent with the request; spec's kernel and initrd
 * only name them. */
void sv_api_vm_create(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    qv_error err = {0};
    sv_vmspec *spec = NULL;
    boot_fds boot = {-1, -1};
    json_t *specj = json_object_get(params, "spec");
    /* firmware first: a node without OVMF refuses before anything is reserved */
    if (sv_vmspec_from_json(specj ? specj : params, &spec, &err) < 0 || sv_vmspec_complete(spec, d->config, &err) < 0 ||
        sv_api_take_file(req, params, "kernel_fd", "kernel", spec->kernel ? spec->kernel : "(unnamed)", &boot.kernel,
                         &err) < 0 ||
        sv_api_take_file(req, params, "initrd_fd", "initrd", spec->initrd ? spec->initrd : "(unnamed)", &boot.initrd,
                         &err) < 0 ||
        sv_vmspec_check_boot(spec, boot.kernel, boot.initrd, &err) < 0 ||
        sv_fw_prepare_spec(d->config, spec, &err) < 0) {
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    if (!spec->cpu_model) {
        create_continue(d, req, spec, boot);
        return;
    }
    /* the QEMU probe (once per binary) runs on a worker; nothing is
     * allocated for the VM (NAT addresses, GPUs) before it answered */
    create_wait *w = calloc(1, sizeof *w);
    if (!w) {
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    *w = (create_wait){d, req, spec, boot};
    sv_vmctl_with_caps(d->vmctl, create_with_caps, w);
}

/* Agent answers are awaited at most this long by list and show. */
#define AGENT_QUERY_MS 1000

typedef struct view_job {
    sv_daemon *d;
    sv_ctl_req *req;
    char name[64]; /* show: the VM; "" for list */
} view_job;

static void view_reply(void *userdata) {
    view_job *job = userdata;
    sv_daemon *d = job->d;
    if (!job->name[0]) {
        json_t *list = json_array();
        for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = sv_registry_next(vm))
            json_array_append_new(list, sv_vm_summary(vm));
        sv_ctl_reply(job->req, json_pack("{s:o}", "vms", list));
    } else {
        sv_vm *vm = sv_registry_find(d->registry, job->name);
        if (!vm) {
            sv_ctl_reply_error(job->req, ENOENT, "no VM named '%s'", job->name);
        } else {
            json_t *j = sv_vm_details(vm);
            json_object_update_new(j, sv_vm_runtime_json(d->vmctl, vm));
            sv_ctl_reply(job->req, j);
        }
    }
    free(job);
}

static void view(sv_daemon *d, sv_ctl_req *req, const char *name) {
    view_job *job = calloc(1, sizeof *job);
    if (!job) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    job->d = d;
    job->req = req;
    snprintf(job->name, sizeof job->name, "%s", name ? name : "");
    sv_vmctl_refresh_agents(d->vmctl, AGENT_QUERY_MS, view_reply, job);
}

void sv_api_vm_list(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    view(d, req, NULL);
}

void sv_api_vm_show(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)params;
    view(d, req, sv_vm_name(vm));
}

static void op_done(int status, json_t *result, const qv_error *err, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0)
        sv_ctl_reply_qv_error(req, err);
    else
        sv_ctl_reply(req, json_incref(result));
}

void sv_api_vm_start(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)params;
    qv_error err = {0};
    if (sv_vm_start(d->vmctl, vm, op_done, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
}

/* {"force": bool, "timeout_ms": N} */
static int stop_options(sv_ctl_req *req, json_t *params, sv_stop_options *o) {
    json_t *f = json_object_get(params, "force");
    json_t *t = json_object_get(params, "timeout_ms");
    if ((f && !json_is_boolean(f)) || (t && (!json_is_integer(t) || json_integer_value(t) <= 0))) {
        sv_ctl_reply_error(req, EINVAL, "\"force\" must be a boolean and \"timeout_ms\" a positive integer");
        return -EINVAL;
    }
    o->force = json_is_true(f);
    o->timeout_ms = t ? (uint64_t)json_integer_value(t) : 0;
    return 0;
}

void sv_api_vm_stop(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    sv_stop_options o;
    if (stop_options(req, params, &o) < 0)
        return;
    qv_error err = {0};
    int r = sv_vm_stop(d->vmctl, vm, &o, op_done, req, &err);
    if (r < 0)
        sv_ctl_reply_qv_error(req, &err);
    else if (r == 1)
        sv_ctl_reply(req, json_pack("{s:s, s:s}", "result", "already-stopped", "state", sv_vm_state_name(sv_vm_state_of(vm))));
}

void sv_api_vm_restart(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    sv_stop_options o;
    if (stop_options(req, params, &o) < 0)
        return;
    qv_error err = {0};
    if (sv_vm_restart(d->vmctl, vm, &o, op_done, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
}

/* vm.pause / vm.resume: the reply comes once QEMU answered, with the new
 * state; nothing to do is a success too ("already-paused", "not-paused"). */
static void pause_resume(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, bool pause) {
    qv_error err = {0};
    int r = (pause ? sv_vm_pause : sv_vm_resume)(d->vmctl, vm, op_done, req, &err);
    if (r < 0)
        sv_ctl_reply_qv_error(req, &err);
    else if (r == 1)
        sv_ctl_reply(req, json_pack("{s:s, s:s, s:s}", "name", sv_vm_name(vm), "state", sv_vm_state_name(sv_vm_state_of(vm)),
                                    "result", pause ? "already-paused" : "not-paused"));
}

void sv_api_vm_pause(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)params;
    pause_resume(d, req, vm, true);
}

void sv_api_vm_resume(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)params;
    pause_resume(d, req, vm, false);
}

typedef struct remove_job {
    sv_daemon *d;
    sv_ctl_req *req;
    char name[64];
} remove_job;

static void removed(int status, json_t *result, const qv_error *err, void *userdata) {
    (void)result;
    remove_job *x = userdata;
    if (status < 0) {
        sv_ctl_reply_qv_error(x->req, err);
    } else {
        sv_logstream_end(&x->d->logstreams, x->name, "removed", "the VM was removed");
        sv_vmctl_release_orphans(x->d->vmctl); /* devices it kept on vfio-pci */
        sv_ctl_reply(x->req, NULL);
    }
    free(x);
}

static void remove_now(sv_daemon *d, sv_ctl_req *req, sv_vm *vm) {
    remove_job *x = calloc(1, sizeof *x);
    if (!x) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    *x = (remove_job){.d = d, .req = req};
    snprintf(x->name, sizeof x->name, "%s", sv_vm_name(vm));
    qv_error err = {0};
    if (sv_vm_remove(d->vmctl, vm, removed, x, &err) < 0) {
        free(x);
        sv_ctl_reply_qv_error(req, &err);
    }
}

/* The stop took its time: the VM is looked up again (removed meanwhile?). */
static void remove_after_stop(int status, json_t *result, const qv_error *err, void *userdata) {
    (void)result;
    remove_job *job = userdata;
    sv_vm *vm = status < 0 ? NULL : sv_registry_find(job->d->registry, job->name);
    if (status < 0)
        sv_ctl_reply_qv_error(job->req, err);
    else if (!vm)
        sv_ctl_reply_error(job->req, ENOENT, "no VM named '%s'", job->name);
    else
        remove_now(job->d, job->req, vm);
    free(job);
}

void sv_api_vm_remove(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    bool force = json_is_true(json_object_get(params, "force"));
    sv_vm_state to;
    bool removable = sv_vm_next_state(sv_vm_state_of(vm), SV_EV_REMOVE, &to) == 0;
    if (removable || !force) {
        remove_now(d, req, vm);
        return;
    }
    /* --force: stop it the hard way first (the disk goes anyway) */
    remove_job *job = calloc(1, sizeof *job);
    if (!job) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    job->d = d;
    job->req = req;
    snprintf(job->name, sizeof job->name, "%s", sv_vm_name(vm));
    sv_stop_options o = {.force = true};
    qv_error err = {0};
    int r = sv_vm_stop(d->vmctl, vm, &o, remove_after_stop, job, &err);
    if (r == 1) {
        free(job);
        remove_now(d, req, vm);
    } else if (r < 0) {
        free(job);
        sv_ctl_reply_qv_error(req, &err);
    }
}

/* {"name"}: the private key of the VM's --ssh pair ({"name", "key"}), for
 * `vm ssh` of a client that cannot read the instance directory: its owner
 * (the dispatch let no one else through). */
void sv_api_vm_ssh_key(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)d;
    (void)params;
    _cleanup_free_ char *key = NULL;
    qv_error err = {0};
    if (sv_vm_ssh_key_read(vm, &key, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    json_t *res = json_pack("{s:s, s:s}", "name", sv_vm_name(vm), "key", key);
    if (!res) {
        sv_ctl_reply_error(req, EIO, "the SSH key of VM '%s' is not text", sv_vm_name(vm));
        return;
    }
    const sv_ctl_peer *peer = sv_ctl_req_peer(req);
    log_info("gave the SSH key of VM %s to uid %u (pid %d)", sv_vm_name(vm), (unsigned)peer->uid, (int)peer->pid);
    sv_ctl_reply(req, res);
}

/* ---- serial console and log (docs/console.md) ------------------------------ */

typedef struct stream_job {
    sv_daemon *d;
    char name[64];
    int qemu_fd;
    char *path;
    int64_t lines;
    bool follow;
} stream_job;

static void on_console_stream(int fd, const sv_ctl_peer *peer, void *userdata) {
    (void)peer;
    stream_job *job = userdata;
    if (job->d->vmctl) {
        sv_vm_console_attach(job->d->vmctl, job->name, fd, job->qemu_fd);
    } else { /* the daemon is stopping */
        close(job->qemu_fd);
        if (fd >= 0)
            close(fd);
    }
    free(job);
}

void sv_api_vm_console(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)params;
    const sv_ctl_peer *peer = sv_ctl_req_peer(req);
    stream_job *job = calloc(1, sizeof *job);
    if (!job) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    qv_error err = {0};
    if (sv_vm_console_open(d->vmctl, vm, peer->uid, peer->pid, &job->qemu_fd, &err) < 0) {
        free(job);
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    job->d = d;
    snprintf(job->name, sizeof job->name, "%s", sv_vm_name(vm));
    sv_ctl_reply_stream(req, json_pack("{s:s, s:s}", "name", sv_vm_name(vm), "state", sv_vm_state_name(sv_vm_state_of(vm))),
                        on_console_stream, job);
}

static void on_log_stream(int fd, const sv_ctl_peer *peer, void *userdata) {
    (void)peer;
    stream_job *job = userdata;
    qv_error err = {0};
    if (fd >= 0 && !job->d->stopping &&
        sv_logstream_new(&job->d->loop, fd, job->name, job->path, job->lines, job->follow, &job->d->logstreams,
                         &err) < 0)
        log_warning("vm log %s: %s", job->name, err.msg);
    else if (fd >= 0 && job->d->stopping)
        close(fd);
    free(job->path);
    free(job);
}

void sv_api_vm_log(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    json_t *jl = json_object_get(params, "lines");
    json_t *jf = json_object_get(params, "follow");
    if ((jl && !json_is_null(jl) && (!json_is_integer(jl) || json_integer_value(jl) < 0)) ||
        (jf && !json_is_boolean(jf))) {
        sv_ctl_reply_error(req, EINVAL, "\"lines\" must be a number >= 0 (or null: all), \"follow\" a boolean");
        return;
    }
    stream_job *job = calloc(1, sizeof *job);
    char path[PATH_MAX];
    sv_vm_path(vm, SV_VM_SERIAL_LOG, path, sizeof path);
    if (!job || !(job->path = strdup(path))) {
        free(job);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    job->d = d;
    snprintf(job->name, sizeof job->name, "%s", sv_vm_name(vm));
    job->lines = json_is_integer(jl) ? (int64_t)json_integer_value(jl) : -1;
    job->follow = json_is_true(jf);
    sv_ctl_reply_stream(req, json_pack("{s:s, s:s}", "name", sv_vm_name(vm), "path", path), on_log_stream, job);
}
