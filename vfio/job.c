/* vfio work on its own thread, with a loop-side deadline (vfio/job.h).
 *
 * Ownership: the job is shared by the loop (until its async handle is
 * closed) and the thread (until the work returns); whoever lets go last
 * frees it.  After a timeout the loop never hears from the thread again. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vfio/job.h"

struct vfio_job {
    pthread_mutex_t lock;
    int refs;               /* loop side + thread side */
    bool finished;          /* the work returned */
    bool abandoned;         /* the loop gave up waiting */
    char step[256];         /* what the thread is doing now */
    vfio_job_fn fn;
    void *arg;
    void (*arg_free)(void *);
    int status;
    qv_error err;
    /* loop side */
    uv_async_t async;
    uv_timer_t timer;
    int handles;            /* open handles; the loop's ref goes when both closed */
    vfio_job_done_fn done;
    void *userdata;
    uint64_t timeout_ms;
};

static void job_unref(vfio_job *j) {
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    if (left > 0)
        return;
    if (j->arg_free)
        j->arg_free(j->arg);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

static void on_step(void *userdata, const char *what) {
    vfio_job *j = userdata;
    pthread_mutex_lock(&j->lock);
    snprintf(j->step, sizeof j->step, "%s", what);
    pthread_mutex_unlock(&j->lock);
}

static bool is_abandoned(void *userdata) {
    vfio_job *j = userdata;
    pthread_mutex_lock(&j->lock);
    bool a = j->abandoned;
    pthread_mutex_unlock(&j->lock);
    return a;
}

static void *thread_main(void *p) {
    vfio_job *j = p;
    vfio_ctx ctx = {.step = on_step, .abandoned = is_abandoned, .userdata = j};
    qv_error err = {0};
    int status = j->fn(&ctx, j->arg, &err);
    pthread_mutex_lock(&j->lock);
    j->status = status;
    j->err = err;
    j->finished = true;
    if (!j->abandoned)
        uv_async_send(&j->async); /* the handle stays open until the loop heard this or gave up */
    pthread_mutex_unlock(&j->lock);
    job_unref(j);
    return NULL;
}

static void handle_closed(uv_handle_t *h) {
    vfio_job *j = h->data;
    if (--j->handles == 0)
        job_unref(j);
}

static void finish(vfio_job *j, int status, const qv_error *err) {
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->async, handle_closed);
    uv_close((uv_handle_t *)&j->timer, handle_closed);
    j->done(status, err, j->userdata);
}

static void on_async(uv_async_t *a) {
    vfio_job *j = a->data;
    pthread_mutex_lock(&j->lock);
    bool fin = j->finished && !j->abandoned;
    int status = j->status;
    qv_error err = j->err;
    pthread_mutex_unlock(&j->lock);
    if (fin)
        finish(j, status, &err);
}

static void on_timeout(uv_timer_t *t) {
    vfio_job *j = t->data;
    pthread_mutex_lock(&j->lock);
    if (j->finished) { /* raced with the async: take the real result */
        int status = j->status;
        qv_error err = j->err;
        pthread_mutex_unlock(&j->lock);
        finish(j, status, &err);
        return;
    }
    j->abandoned = true;
    char step[sizeof j->step];
    snprintf(step, sizeof step, "%s", j->step);
    pthread_mutex_unlock(&j->lock);
    qv_error err = {0};
    qv_error_set(&err, ETIMEDOUT, "%s did not finish within %.1f s; the device is stuck",
                 step[0] ? step : "the sysfs work", (double)j->timeout_ms / 1000.0);
    finish(j, -ETIMEDOUT, &err);
}

int vfio_job_start(uv_loop_t *loop, uint64_t timeout_ms, vfio_job_fn fn, void *arg, void (*arg_free)(void *),
                   vfio_job_done_fn done, void *userdata) {
    vfio_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    pthread_mutex_init(&j->lock, NULL);
    j->fn = fn;
    j->done = done;
    j->userdata = userdata;
    j->timeout_ms = timeout_ms;
    int r = uv_async_init(loop, &j->async, on_async);
    if (r < 0) {
        pthread_mutex_destroy(&j->lock);
        free(j);
        return r;
    }
    uv_timer_init(loop, &j->timer);
    j->async.data = j->timer.data = j;
    j->handles = 2;
    j->refs = 2;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* the thread must not take the daemon's signals (they are the loop's) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    j->arg = arg;
    j->arg_free = arg_free;
    pthread_t tid;
    r = pthread_create(&tid, &attr, thread_main, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        j->arg = NULL;
        j->arg_free = NULL;
        j->refs = 1; /* only the loop's: freed when the handles close, arg left to the caller */
        uv_close((uv_handle_t *)&j->async, handle_closed);
        uv_close((uv_handle_t *)&j->timer, handle_closed);
        return -r;
    }
    uv_timer_start(&j->timer, on_timeout, timeout_ms, 0);
    return 0;
}
