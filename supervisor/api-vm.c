/* Control methods for images and VMs. */
#include "daemon-internal.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"
#include "supervisor/firmware.h"
#include "supervisor/image.h"
#include "supervisor/network.h"
#include "supervisor/passthrough.h"
#include "supervisor/resources.h"
#include "supervisor/sweep.h"
#include "supervisor/vm.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

/* The "name" param, validated; replies and returns NULL when bad. */
static const char *name_param(sv_ctl_req *req, json_t *params, const char *what) {
    const char *name = json_string_value(json_object_get(params, "name"));
    if (!name) {
        sv_ctl_reply_error(req, EINVAL, "missing \"name\" of the %s", what);
        return NULL;
    }
    if (!qv_name_valid(name)) {
        sv_ctl_reply_error(req, EINVAL, "'%s' is not a valid %s name", name, what);
        return NULL;
    }
    return name;
}

/* ---- images ---------------------------------------------------------------- */

/* While an import runs, the worker thread parses qemu-img's progress and
 * leaves the newest value under the job's lock; a uv_async (its sends
 * coalesce) wakes the loop thread to pass it on with sv_ctl_progress(), and
 * a timer passes it on again every tick so the client hears from us even
 * while qemu-img is between two percent steps. */
#define IMAGE_PROGRESS_TICK_MS 250

typedef struct image_job {
    uv_work_t work;
    sv_ctl_req *req; /* NULL once answered */
    sv_config *config;
    int src_fd;   /* import: the file the client opened, -1 otherwise */
    char *src;    /* import: what the client called it (for messages only) */
    char *format; /* import: the format the client named, or NULL */
    char *name;
    json_t *result;
    int status;
    qv_error err;
    /* progress reporting, set up only when the client asked for it */
    bool reporting;
    int open_handles;
    uv_async_t progress_async;
    uv_timer_t progress_timer;
    uv_mutex_t lock;
    double percent;              /* under lock: the newest value, -1 before the first */
    sv_qemu_img_progress parser; /* the worker's */
} image_job;

static void image_job_free(image_job *job) {
    if (job->reporting)
        uv_mutex_destroy(&job->lock);
    sv_config_free(job->config);
    qv_closep(&job->src_fd);
    free(job->src);
    free(job->format);
    free(job->name);
    free(job);
}

static void on_progress_handle_closed(uv_handle_t *h) {
    image_job *job = h->data;
    if (--job->open_handles == 0)
        image_job_free(job);
}

/* Frees the job, once its progress handles (if any) are closed. */
static void image_job_end(image_job *job) {
    job->req = NULL;
    if (!job->reporting) {
        image_job_free(job);
        return;
    }
    uv_close((uv_handle_t *)&job->progress_async, on_progress_handle_closed);
    uv_close((uv_handle_t *)&job->progress_timer, on_progress_handle_closed);
}

/* Loop thread: the newest value to the client (sv_ctl_progress rate-limits). */
static void progress_pass_on(image_job *job) {
    if (!job->req)
        return;
    uv_mutex_lock(&job->lock);
    double percent = job->percent;
    uv_mutex_unlock(&job->lock);
    if (percent >= 0)
        sv_ctl_progress(job->req, json_pack("{s:f}", "percent", percent));
}

static void on_progress_async(uv_async_t *h) {
    progress_pass_on(h->data);
}

static void on_progress_timer(uv_timer_t *h) {
    progress_pass_on(h->data);
}

/* Worker thread: qemu-img's stdout as it comes. */
static void on_qemu_img_output(const char *chunk, size_t len, void *userdata) {
    image_job *job = userdata;
    if (!sv_qemu_img_progress_feed(&job->parser, chunk, len))
        return;
    uv_mutex_lock(&job->lock);
    job->percent = job->parser.percent;
    uv_mutex_unlock(&job->lock);
    uv_async_send(&job->progress_async);
}

/* Sets up progress reporting; on failure the job just runs without it. */
static void progress_setup(uv_loop_t *loop, image_job *job) {
    if (uv_mutex_init(&job->lock) < 0)
        return;
    if (uv_async_init(loop, &job->progress_async, on_progress_async) < 0) {
        uv_mutex_destroy(&job->lock);
        return;
    }
    uv_timer_init(loop, &job->progress_timer);
    job->progress_async.data = job;
    job->progress_timer.data = job;
    job->open_handles = 2;
    job->percent = -1;
    sv_qemu_img_progress_init(&job->parser);
    uv_timer_start(&job->progress_timer, on_progress_timer, IMAGE_PROGRESS_TICK_MS, IMAGE_PROGRESS_TICK_MS);
    job->reporting = true;
}

static void image_list_work(uv_work_t *w) {
    image_job *job = w->data;
    job->status = sv_image_list(job->config, &job->result, &job->err);
}

static void image_import_work(uv_work_t *w) {
    image_job *job = w->data;
    job->status = sv_image_import(job->config, job->src_fd, job->src, job->name, job->format,
                                  job->reporting ? on_qemu_img_output : NULL, job, &job->err);
    if (job->status == 0)
        job->status = sv_image_info(job->config, job->name, &job->result, &job->err);
}

static void image_after(uv_work_t *w, int status) {
    image_job *job = w->data;
    if (status < 0)
        sv_ctl_reply_error(job->req, ECANCELED, "cancelled");
    else if (job->status < 0)
        sv_ctl_reply_qv_error(job->req, &job->err);
    else
        sv_ctl_reply(job->req, job->result);
    image_job_end(job);
}

/* Runs image work off the loop (qemu-img can take a while), reporting
 * progress when asked to and the client wants it.  Takes src_fd (-1: none). */
static void queue_image_job(sv_daemon *d, sv_ctl_req *req, uv_work_cb work, int src_fd, const char *src,
                            const char *format, const char *name, bool progress) {
    image_job *job = calloc(1, sizeof *job);
    if (job)
        job->src_fd = src_fd;
    if (!job || !(job->config = sv_config_dup(d->config)) || (src && !(job->src = strdup(src))) ||
        (format && !(job->format = strdup(format))) || (name && !(job->name = strdup(name)))) {
        if (job)
            image_job_free(job);
        else if (src_fd >= 0)
            close(src_fd);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    job->req = req;
    job->work.data = job;
    if (progress && sv_ctl_req_wants_progress(req))
        progress_setup(&d->loop, job);
    int r = uv_queue_work(&d->loop, &job->work, work, image_after);
    if (r < 0) {
        sv_ctl_reply_error(req, -r, "cannot queue work: %s", uv_strerror(r));
        image_job_end(job);
    }
}

void sv_api_image_list(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    queue_image_job(d, req, image_list_work, -1, NULL, NULL, NULL, false);
}

int sv_api_take_file(sv_ctl_req *req, json_t *params, const char *key, const char *what, const char *label,
                     int *ret_fd, qv_error *err) {
    _cleanup_close_ int fd = -1;
    int r = sv_ctl_req_take_fd(req, params, key, &fd, err);
    if (r <= 0)
        return r;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return qv_error_set(err, errno, "%s %s: %s", what, label, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return qv_error_set(err, EINVAL, "%s %s is not a regular file (%s)", what, label,
                            S_ISDIR(st.st_mode)                        ? "a directory"
                            : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                            : S_ISFIFO(st.st_mode)                     ? "a FIFO"
                                                                        : "not a file");
    *ret_fd = TAKE_FD(fd);
    return 1;
}

/* {"source_fd": N (the file, opened by the client), "source": its name
 * (shown, never opened), "name", "format" (optional)} */
void sv_api_image_import(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    const char *name = name_param(req, params, "image");
    if (!name)
        return;
    json_t *srcj = json_object_get(params, "source");
    json_t *fmtj = json_object_get(params, "format");
    if (json_is_null(fmtj))
        fmtj = NULL;
    if ((srcj && !json_is_string(srcj)) || (fmtj && !json_is_string(fmtj))) {
        sv_ctl_reply_error(req, EINVAL, "\"source\" and \"format\" must be strings");
        return;
    }
    const char *src = srcj ? json_string_value(srcj) : "the source";
    qv_error err = {0};
    int fd = -1;
    int r = sv_api_take_file(req, params, "source_fd", "source", src, &fd, &err);
    if (r == 0) /* the daemon opens no file a client names */
        r = qv_error_set(&err, EINVAL, "\"source_fd\" missing: the client opens the file and sends it with the "
                                       "request (\"source\" is only its name)");
    if (r < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    log_info("importing image %s from %s (pid %d's file)", name, src, (int)sv_ctl_req_peer(req)->pid);
    queue_image_job(d, req, image_import_work, fd, src, json_string_value(fmtj), name, true);
}

void sv_api_image_remove(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    const char *name = name_param(req, params, "image");
    if (!name)
        return;
    _cleanup_free_ char *users = sv_registry_users_of_image(d->registry, name);
    if (users) {
        sv_ctl_reply_error(req, EBUSY, "image '%s' is the base of VM disks (%s); remove those VMs first", name, users);
        return;
    }
    qv_error err = {0};
    if (sv_image_remove(d->config, name, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    log_info("removed image %s", name);
    sv_ctl_reply(req, NULL);
}

/* ---- VMs ------------------------------------------------------------------- */

static void create_done(int status, sv_vm *vm, const qv_error *err, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0) {
        log_info("create failed: %s", err->msg);
        sv_ctl_reply_qv_error(req, err);
        return;
    }
    log_info("created VM %s (%s, %llu CPUs)", vm->name, vm->spec->image, (unsigned long long)vm->spec->cpus);
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
static void create_continue(sv_daemon *d, sv_ctl_req *req, sv_vmspec *spec, boot_fds boot) {
    qv_error err = {0};
    if (sv_pt_prepare_spec(d->registry, d->config, spec, &err) < 0 ||
        sv_net_prepare_spec(d->registry, d->config, spec, &err) < 0) {
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    /* room on the node, in its pool and in its storage pool: every defined VM counts */
    int numa = -1;
    uint64_t node;
    if (spec->numa && qv_parse_uint(spec->numa, 0, 1023, &node) == 0)
        numa = (int)node;
    sv_storage_usage su;
    int fit = -1;
    if (sv_resources_admit(d->registry, d->config, NULL, spec, true, numa, &err) < 0 ||
        sv_resources_storage(d->registry, d->config, sv_resources_storage_pool_of(d->config, spec), &su, &err) < 0 ||
        (fit = sv_storage_fit(&su, spec->disk, &err)) < 0) {
        sv_vmspec_free(spec);
        boot_fds_close(&boot);
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    if (fit == SV_STORAGE_THIN)
        log_warning("VM %s: storage pool %s is thinly overcommitted: its disks could outgrow its free space", spec->name,
                    su.pool);
    if (sv_registry_create(d->registry, &d->loop, spec, boot.kernel, boot.initrd, create_done, req, &err) < 0) {
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

/* The VM named by params, or NULL after replying. */
static sv_vm *vm_param(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    const char *name = name_param(req, params, "VM");
    if (!name)
        return NULL;
    sv_vm *vm = sv_registry_find(d->registry, name);
    if (!vm)
        sv_ctl_reply_error(req, ENOENT, "no VM named '%s'", name);
    return vm;
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
        for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = vm->next)
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

void sv_api_vm_show(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_vm *vm = vm_param(d, req, params);
    if (vm)
        view(d, req, vm->name);
}

static void op_done(int status, json_t *result, const qv_error *err, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0)
        sv_ctl_reply_qv_error(req, err);
    else
        sv_ctl_reply(req, json_incref(result));
}

void sv_api_vm_start(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_vm *vm = vm_param(d, req, params);
    if (!vm)
        return;
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

void sv_api_vm_stop(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_stop_options o;
    sv_vm *vm = vm_param(d, req, params);
    if (!vm || stop_options(req, params, &o) < 0)
        return;
    qv_error err = {0};
    int r = sv_vm_stop(d->vmctl, vm, &o, op_done, req, &err);
    if (r < 0)
        sv_ctl_reply_qv_error(req, &err);
    else if (r == 1)
        sv_ctl_reply(req, json_pack("{s:s, s:s}", "result", "already-stopped", "state", sv_vm_state_name(vm->state)));
}

void sv_api_vm_restart(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_stop_options o;
    sv_vm *vm = vm_param(d, req, params);
    if (!vm || stop_options(req, params, &o) < 0)
        return;
    qv_error err = {0};
    if (sv_vm_restart(d->vmctl, vm, &o, op_done, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
}

/* vm.pause / vm.resume: the reply comes once QEMU answered, with the new
 * state; nothing to do is a success too ("already-paused", "not-paused"). */
static void pause_resume(sv_daemon *d, sv_ctl_req *req, json_t *params, bool pause) {
    sv_vm *vm = vm_param(d, req, params);
    if (!vm)
        return;
    qv_error err = {0};
    int r = (pause ? sv_vm_pause : sv_vm_resume)(d->vmctl, vm, op_done, req, &err);
    if (r < 0)
        sv_ctl_reply_qv_error(req, &err);
    else if (r == 1)
        sv_ctl_reply(req, json_pack("{s:s, s:s, s:s}", "name", vm->name, "state", sv_vm_state_name(vm->state),
                                    "result", pause ? "already-paused" : "not-paused"));
}

void sv_api_vm_pause(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    pause_resume(d, req, params, true);
}

void sv_api_vm_resume(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    pause_resume(d, req, params, false);
}

typedef struct remove_job {
    sv_daemon *d;
    sv_ctl_req *req;
    char name[64];
} remove_job;

static void remove_now(sv_daemon *d, sv_ctl_req *req, const char *vm_name) {
    char name[64]; /* vm_name may point into the VM, which goes away */
    snprintf(name, sizeof name, "%s", vm_name);
    qv_error err = {0};
    sv_vm *vm = sv_registry_find(d->registry, name);
    if (!vm) {
        sv_ctl_reply_error(req, ENOENT, "no VM named '%s'", name);
        return;
    }
    if (vm->state != SV_VM_STOPPED && vm->state != SV_VM_CRASHED) {
        sv_ctl_reply_error(req, EBUSY, "VM '%s' is %s; stop it first (or use --force)", name,
                           sv_vm_state_name(vm->state));
        return;
    }
    sv_vm_forget(d->vmctl, vm);
    if (sv_registry_remove(d->registry, name, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    log_info("removed VM %s and its disk", name);
    sv_logstream_end(&d->logstreams, name, "removed", "the VM was removed");
    sv_vmctl_release_orphans(d->vmctl); /* devices it kept on vfio-pci */
    sv_ctl_reply(req, NULL);
}

static void remove_after_stop(int status, json_t *result, const qv_error *err, void *userdata) {
    (void)result;
    remove_job *job = userdata;
    if (status < 0)
        sv_ctl_reply_qv_error(job->req, err);
    else
        remove_now(job->d, job->req, job->name);
    free(job);
}

void sv_api_vm_remove(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_vm *vm = vm_param(d, req, params);
    if (!vm)
        return;
    bool force = json_is_true(json_object_get(params, "force"));
    bool active = vm->state != SV_VM_STOPPED && vm->state != SV_VM_CRASHED;
    if (!active || !force) {
        remove_now(d, req, vm->name);
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
    snprintf(job->name, sizeof job->name, "%s", vm->name);
    sv_stop_options o = {.force = true};
    qv_error err = {0};
    int r = sv_vm_stop(d->vmctl, vm, &o, remove_after_stop, job, &err);
    if (r == 1) {
        free(job);
        remove_now(d, req, vm->name);
    } else if (r < 0) {
        free(job);
        sv_ctl_reply_qv_error(req, &err);
    }
}

/* ---- GPUs ------------------------------------------------------------------- */

void sv_api_gpu_list(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    json_t *res = NULL;
    qv_error err = {0};
    if (sv_pt_gpu_list_json(d->registry, d->config, &res, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    sv_ctl_reply(req, res);
}

/* ---- cleanup ----------------------------------------------------------------- */

typedef struct sweep_job {
    uv_work_t work;
    sv_daemon *d;
    sv_ctl_req *req;
    sv_config *config;
    sv_sweep_vm *vms;
    size_t n_vms;
    bool dry_run;
    json_t *result;
    int status;
    qv_error err;
} sweep_job;

static void sweep_work(uv_work_t *w) {
    sweep_job *job = w->data;
    job->status = sv_sweep_run(job->config, job->vms, job->n_vms, job->dry_run, &job->result, &job->err);
}

static void sweep_job_free(sweep_job *job) {
    sv_config_free(job->config);
    free(job->vms);
    free(job);
}

/* Devices go after the files and processes: an orphan QEMU that held one
 * is gone by now. */
static void devices_swept(json_t *items, void *userdata) {
    sweep_job *job = userdata;
    json_t *actions = json_object_get(job->result, "actions");
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        json_t *vm = json_object_get(it, "vm");
        json_array_append_new(actions, json_pack("{s:s, s:O, s:O, s:O, s:O}", "what", "vfio device", "path",
                                                 json_object_get(it, "address"), "vm", vm, "action",
                                                 json_object_get(it, "action"), "detail",
                                                 json_object_get(it, "detail")));
    }
    sv_ctl_reply(job->req, job->result);
    sweep_job_free(job);
}

static void sweep_after(uv_work_t *w, int status) {
    sweep_job *job = w->data;
    if (status < 0) {
        sv_ctl_reply_error(job->req, ECANCELED, "cancelled");
    } else if (job->status < 0) {
        sv_ctl_reply_qv_error(job->req, &job->err);
    } else {
        sv_vmctl_release_devices(job->d->vmctl, job->dry_run, devices_swept, job);
        return;
    }
    sweep_job_free(job);
}

void sv_api_cleanup(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    json_t *dry = json_object_get(params, "dry_run");
    if (dry && !json_is_boolean(dry)) {
        sv_ctl_reply_error(req, EINVAL, "\"dry_run\" must be a boolean");
        return;
    }
    size_t n = 0;
    for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = vm->next)
        n++;
    sweep_job *job = calloc(1, sizeof *job);
    if (!job || !(job->config = sv_config_dup(d->config)) || !(job->vms = calloc(n ? n : 1, sizeof *job->vms))) {
        if (job)
            sv_config_free(job->config);
        free(job);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    /* what the daemon supervises, as of now: the worker must not touch the registry */
    for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = vm->next) {
        sv_sweep_vm *v = &job->vms[job->n_vms++];
        snprintf(v->name, sizeof v->name, "%s", vm->name);
        v->pid = sv_vm_state_has_qemu(vm->state) ? vm->run.pid : 0;
        v->busy = vm->state == SV_VM_CREATING || vm->state == SV_VM_REMOVING || vm->state == SV_VM_STARTING ||
                  vm->state == SV_VM_STOPPING;
    }
    job->req = req;
    job->d = d;
    job->dry_run = json_is_true(dry);
    job->work.data = job;
    int r = uv_queue_work(&d->loop, &job->work, sweep_work, sweep_after);
    if (r < 0) {
        sv_config_free(job->config);
        free(job->vms);
        free(job);
        sv_ctl_reply_error(req, -r, "cannot queue the cleanup: %s", uv_strerror(r));
    }
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

void sv_api_vm_console(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_vm *vm = vm_param(d, req, params);
    if (!vm)
        return;
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
    snprintf(job->name, sizeof job->name, "%s", vm->name);
    sv_ctl_reply_stream(req, json_pack("{s:s, s:s}", "name", vm->name, "state", sv_vm_state_name(vm->state)),
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

void sv_api_vm_log(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    sv_vm *vm = vm_param(d, req, params);
    if (!vm)
        return;
    json_t *jl = json_object_get(params, "lines");
    json_t *jf = json_object_get(params, "follow");
    if ((jl && !json_is_null(jl) && (!json_is_integer(jl) || json_integer_value(jl) < 0)) ||
        (jf && !json_is_boolean(jf))) {
        sv_ctl_reply_error(req, EINVAL, "\"lines\" must be a number >= 0 (or null: all), \"follow\" a boolean");
        return;
    }
    stream_job *job = calloc(1, sizeof *job);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/serial.log", vm->dir);
    if (!job || !(job->path = strdup(path))) {
        free(job);
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    job->d = d;
    snprintf(job->name, sizeof job->name, "%s", vm->name);
    job->lines = json_is_integer(jl) ? (int64_t)json_integer_value(jl) : -1;
    job->follow = json_is_true(jf);
    sv_ctl_reply_stream(req, json_pack("{s:s, s:s}", "name", vm->name, "path", path), on_log_stream, job);
}
