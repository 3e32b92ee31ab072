/* Running blocking vfio work on a thread of its own, with a deadline the
 * event loop enforces.  A sysfs write that hangs keeps its thread forever;
 * the loop stops waiting at the deadline, reports the step that hung, and
 * the thread, should it ever return, cleans up after itself. */
#pragma once

#include <stdint.h>
#include <uv.h>

#include "vfio/bind.h"

typedef struct vfio_job vfio_job;

/* The work, run on the job's thread.  ctx reports steps and abandonment. */
typedef int (*vfio_job_fn)(vfio_ctx *ctx, void *arg, qv_error *err);
/* On the loop: status 0, a negative errno from the work, or -ETIMEDOUT
 * (err names the step that did not finish; `arg` still belongs to the
 * thread then and must not be touched). */
typedef void (*vfio_job_done_fn)(int status, const qv_error *err, void *userdata);

/* Starts fn(arg) on a new detached thread.  arg_free(arg) runs once the
 * work returned and nobody needs it (on the loop, or on the thread after a
 * timeout).  Returns 0 or a negative errno (then nothing was started and
 * arg is untouched). */
int vfio_job_start(uv_loop_t *loop, uint64_t timeout_ms, vfio_job_fn fn, void *arg, void (*arg_free)(void *),
                   vfio_job_done_fn done, void *userdata);
