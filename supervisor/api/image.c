/* Control methods for base images: list, import, remove. */
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"
#include "supervisor/api/progress.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/registry.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- images ---------------------------------------------------------------- */

/* While an import runs, its progress goes to the client (api/progress.c). */
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
    bool reporting; /* progress set up: only when the client asked for it */
    sv_api_progress progress;
} image_job;

static void image_job_free(image_job *job) {
    sv_config_free(job->config);
    qv_closep(&job->src_fd);
    free(job->src);
    free(job->format);
    free(job->name);
    free(job);
}

static void progress_closed(sv_api_progress *p) {
    image_job_free(SV_API_PROGRESS_OWNER(p, image_job, progress));
}

/* Frees the job, once its progress handles (if any) are closed. */
static void image_job_end(image_job *job) {
    job->req = NULL;
    if (job->reporting)
        sv_api_progress_end(&job->progress);
    else
        image_job_free(job);
}

static void image_list_work(uv_work_t *w) {
    image_job *job = w->data;
    job->status = sv_image_list(job->config, &job->result, &job->err);
}

static void image_import_work(uv_work_t *w) {
    image_job *job = w->data;
    job->status = sv_image_import(job->config, job->src_fd, job->src, job->name, job->format,
                                  job->reporting ? sv_api_progress_feed : NULL, &job->progress, &job->err);
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
    if (!job || !(job->config = sv_config_ref(d->config)) || (src && !(job->src = strdup(src))) ||
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
    /* on failure the job just runs without progress */
    if (progress && sv_ctl_req_wants_progress(req))
        job->reporting = sv_api_progress_start(&job->progress, &d->loop, req, NULL, progress_closed) == 0;
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

/* {"source_fd": N (the file, opened by the client), "source": its name
 * (shown, never opened), "name", "format" (optional)} */
void sv_api_image_import(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    const char *name = sv_api_name_param(req, params, "image");
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
    const char *name = sv_api_name_param(req, params, "image");
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

