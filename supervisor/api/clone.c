/* Control methods that copy a stopped VM's disk: vm.clone (a new VM on the
 * same base image) and image.create with from_vm (a new base image).  Both
 * hold the source through the engine (sv_vm_copy_begin) while qemu-img
 * runs on a worker, report its progress, and are interrupted when their
 * client goes away (docs/lifecycle.md, "Clone and image from a VM"). */
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"
#include "host/firmware.h"
#include "spec/vmclone.h"
#include "supervisor/api/progress.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* qemu-img's progress goes to the client (api/progress.c); each tick also
 * watches the client: once it is gone, the cancel eventfd interrupts
 * qemu-img and the half-made copy is rolled back. */
typedef struct copy_job {
    uv_work_t work;
    sv_daemon *d;
    sv_ctl_req *req;        /* NULL once answered */
    char src[QV_NAME_MAX + 1]; /* the source VM */
    char *image;            /* image.create: the new image's name */
    sv_config *config;      /* image.create: a reference for the worker */
    int disk_fd;
    int cancel_fd;
    bool cancelled;
    int status;
    qv_error err;
    json_t *result;
    sv_api_progress progress;
} copy_job;

static void copy_job_free(copy_job *job) {
    qv_closep(&job->disk_fd);
    qv_closep(&job->cancel_fd);
    sv_config_free(job->config);
    free(job->image);
    json_decref(job->result);
    free(job);
}

static void progress_closed(sv_api_progress *p) {
    copy_job_free(SV_API_PROGRESS_OWNER(p, copy_job, progress));
}

/* Ends the job: the source is no longer held, the handles close, then it
 * is freed.  The request is answered already. */
static void copy_job_end(copy_job *job) {
    sv_vm *vm = job->d->vmctl ? sv_registry_find(job->d->registry, job->src) : NULL;
    if (vm)
        sv_vm_copy_end(job->d->vmctl, vm);
    job->req = NULL;
    sv_api_progress_end(&job->progress);
}

/* Each tick, before the progress is passed on: a client gone (or a daemon
 * stopping) interrupts the copy, which then ends and answers. */
static void watch_client(sv_api_progress *p) {
    copy_job *job = SV_API_PROGRESS_OWNER(p, copy_job, progress);
    if (job->cancelled || !(job->d->stopping || sv_ctl_req_client_gone(job->req)))
        return;
    uint64_t one = 1;
    job->cancelled = true;
    log_info("%s of VM %s: %s; interrupting it", job->image ? "image create" : "clone", job->src,
             job->d->stopping ? "the daemon is stopping" : "the client went away");
    if (write(job->cancel_fd, &one, sizeof one) < 0)
        log_warning("cannot interrupt the copy: %s", strerror(errno));
}

/* A job for req on source vm: the source held, its disk open, the
 * progress handles running.  NULL after replying with the reason. */
static copy_job *copy_job_new(sv_daemon *d, sv_ctl_req *req, sv_vm *vm) {
    qv_error err = {0};
    copy_job *job = calloc(1, sizeof *job);
    if (!job) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return NULL;
    }
    job->d = d;
    job->req = req;
    job->disk_fd = -1;
    snprintf(job->src, sizeof job->src, "%s", sv_vm_name(vm));
    job->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (job->cancel_fd < 0) {
        sv_ctl_reply_error(req, errno, "cannot make an eventfd: %s", strerror(errno));
        free(job);
        return NULL;
    }
    int r = sv_api_progress_start(&job->progress, &d->loop, req, watch_client, progress_closed);
    if (r < 0) {
        sv_ctl_reply_error(req, -r, "cannot set up the progress reports: %s", uv_strerror(r));
        copy_job_free(job);
        return NULL;
    }
    if (sv_vm_copy_begin(d->vmctl, vm, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        job->req = NULL;
        sv_api_progress_end(&job->progress);
        return NULL;
    }
    if (sv_vm_disk_open(vm, &job->disk_fd, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        copy_job_end(job);
        return NULL;
    }
    return job;
}

static void reply(copy_job *job) {
    if (job->status < 0 && job->cancelled)
        log_info("%s of VM %s interrupted and rolled back", job->image ? "image create" : "clone", job->src);
    if (job->status < 0)
        sv_ctl_reply_qv_error(job->req, &job->err);
    else
        sv_ctl_reply(job->req, json_incref(job->result));
    copy_job_end(job);
}

/* ---- vm.clone ------------------------------------------------------------- */

static void clone_done(int status, sv_vm *vm, const qv_error *err, void *userdata) {
    copy_job *job = userdata;
    if (status < 0) {
        job->status = status;
        job->err = *err;
        log_info("clone of VM %s failed: %s", job->src, err->msg);
    } else {
        /* a daemon stopping meanwhile has no engine: the next one loads
         * the clone from its directory */
        if (job->d->vmctl)
            sv_vm_created(job->d->vmctl, vm);
        log_info("cloned VM %s from %s", sv_vm_name(vm), job->src);
        job->result = sv_vm_details(vm);
    }
    reply(job);
}

/* {"name": SOURCE, "new": NAME, "options": {create's keys a clone takes}} */
void sv_api_vm_clone(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    const char *name = json_string_value(json_object_get(params, "new"));
    json_t *options = json_object_get(params, "options");
    if (!name || !qv_name_valid(name)) {
        sv_ctl_reply_error(req, EINVAL, "\"new\" must be a valid VM name (lowercase letters, digits and '-', at most %d)",
                           QV_NAME_MAX);
        return;
    }
    if (options && !json_is_object(options)) {
        sv_ctl_reply_error(req, EINVAL, "\"options\" must be an object");
        return;
    }
    if (sv_registry_find(d->registry, name)) {
        sv_ctl_reply_error(req, EEXIST, "a VM named '%s' exists already", name);
        return;
    }
    qv_error err = {0};
    _cleanup_(json_decrefp) json_t *srcj = sv_vmspec_to_json(sv_vm_spec(vm));
    _cleanup_(json_decrefp) json_t *specj = NULL;
    _cleanup_(sv_vmspec_freep) sv_vmspec *spec = NULL;
    if (!srcj || sv_vmclone_spec(srcj, name, options, &specj, &err) < 0 || sv_vmspec_from_json(specj, &spec, &err) < 0 ||
        sv_vmspec_complete(spec, d->config, &err) < 0 || sv_fw_prepare_spec(d->config, spec, &err) < 0 ||
        sv_api_vm_admit(d, spec, "clone", &err) < 0) {
        if (!srcj)
            qv_error_set(&err, ENOMEM, "out of memory");
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    copy_job *job = copy_job_new(d, req, vm);
    if (!job)
        return;
    log_info("cloning VM %s from %s", name, sv_vm_name(vm));
    sv_clone_io io = {.disk_fd = job->disk_fd, .cancel_fd = job->cancel_fd, .progress = sv_api_progress_feed,
                      .userdata = &job->progress};
    if (sv_registry_clone(d->registry, &d->loop, vm, spec, &io, clone_done, job, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        copy_job_end(job);
        return;
    }
    spec = NULL; /* the registry's */
}

/* ---- image.create --------------------------------------------------------- */

static void image_create_work(uv_work_t *w) {
    copy_job *job = w->data;
    char label[QV_NAME_MAX + 16];
    snprintf(label, sizeof label, "VM %s's disk", job->src);
    job->status = sv_image_from_disk(job->config, job->disk_fd, label, job->image, job->cancel_fd,
                                     sv_api_progress_feed, &job->progress, &job->err);
    if (job->status == 0)
        job->status = sv_image_info(job->config, job->image, &job->result, &job->err);
}

static void image_create_after(uv_work_t *w, int status) {
    copy_job *job = w->data;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, ECANCELED, "cancelled");
    if (job->status == 0)
        log_info("image %s made from VM %s's disk", job->image, job->src);
    reply(job);
}

/* {"name": IMAGE, "from_vm": VM} */
void sv_api_image_create(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    const char *name = sv_api_name_param(req, params, "image");
    if (!name)
        return;
    const char *from = json_string_value(json_object_get(params, "from_vm"));
    if (!from) {
        sv_ctl_reply_error(req, EINVAL, "missing \"from_vm\": the VM whose disk becomes the image");
        return;
    }
    sv_vm *vm = sv_registry_find(d->registry, from);
    if (!vm) {
        sv_ctl_reply_error(req, ENOENT, "no VM named '%s'", from);
        return;
    }
    char path[PATH_MAX];
    qv_error err = {0};
    if (sv_image_path(d->config, name, path, sizeof path, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    if (access(path, F_OK) == 0) {
        sv_ctl_reply_error(req, EEXIST, "an image named '%s' exists already (remove it first)", name);
        return;
    }
    copy_job *job = copy_job_new(d, req, vm);
    if (!job)
        return;
    if (!(job->image = strdup(name)) || !(job->config = sv_config_ref(d->config))) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        copy_job_end(job);
        return;
    }
    log_info("making image %s from VM %s's disk", name, from);
    job->work.data = job;
    int r = uv_queue_work(&d->loop, &job->work, image_create_work, image_create_after);
    if (r < 0) {
        sv_ctl_reply_error(req, -r, "cannot queue work: %s", uv_strerror(r));
        copy_job_end(job);
    }
}
