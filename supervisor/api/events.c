/* Control methods on the event stream (docs/events.md): events.subscribe
 * (the stream itself) and vm.wait (a condition, answered by the events
 * that bring it about, never by polling). */
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

/* ---- events.subscribe ---------------------------------------------------- */

#define SUBSCRIBE_MAX_VMS 64

typedef struct subscribe_job {
    sv_daemon *d;
    uint64_t after;
    size_t n_vms;
    char vms[SUBSCRIBE_MAX_VMS][QV_NAME_MAX + 1];
} subscribe_job;

static void on_events_stream(int fd, const sv_ctl_peer *peer, void *userdata) {
    (void)peer;
    subscribe_job *job = userdata;
    if (fd >= 0 && job->d->events) {
        const char *names[SUBSCRIBE_MAX_VMS];
        for (size_t i = 0; i < job->n_vms; i++)
            names[i] = job->vms[i];
        qv_error err = {0};
        if (sv_events_subscribe(job->d->events, fd, true, job->after, names, job->n_vms, &err) < 0)
            log_warning("event subscriber dropped: %s", err.msg);
    } else if (fd >= 0) {
        close(fd);
    }
    free(job);
}

/* {"vms": [NAME…] (optional: all events), "after": SEQ (optional: the
 * events after SEQ still kept come first; absent: from now on)}.  The
 * reply {"next": SEQ, "oldest": SEQ, "ring": N} says where the stream
 * starts; the stream then carries one 'D' frame per event. */
void sv_api_events_subscribe(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    json_t *vms = json_object_get(params, "vms");
    json_t *after = json_object_get(params, "after");
    if ((vms && !json_is_array(vms)) || (after && (!json_is_integer(after) || json_integer_value(after) < 0))) {
        sv_ctl_reply_error(req, EINVAL, "\"vms\" must be an array of VM names and \"after\" a sequence number");
        return;
    }
    if (json_array_size(vms) > SUBSCRIBE_MAX_VMS) {
        sv_ctl_reply_error(req, EINVAL, "at most %d VMs per subscription", SUBSCRIBE_MAX_VMS);
        return;
    }
    if (sv_events_subscribers(d->events) >= SV_EVENTS_MAX_SUBSCRIBERS) {
        sv_ctl_reply_error(req, EBUSY, "%u event subscribers already; try again later", SV_EVENTS_MAX_SUBSCRIBERS);
        return;
    }
    subscribe_job *job = calloc(1, sizeof *job);
    if (!job) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    job->d = d;
    size_t i;
    json_t *v;
    json_array_foreach(vms, i, v) {
        const char *name = json_string_value(v);
        if (!name || !qv_name_valid(name)) {
            free(job);
            sv_ctl_reply_error(req, EINVAL, "\"vms\"[%zu] is not a VM name", i);
            return;
        }
        snprintf(job->vms[job->n_vms++], sizeof job->vms[0], "%s", name);
    }
    /* the stream starts exactly where the reply says, whatever is emitted
     * before the connection is handed over */
    uint64_t next = sv_events_next_seq(d->events);
    job->after = after ? (uint64_t)json_integer_value(after) : next - 1;
    uint64_t oldest = next > SV_EVENTS_RING ? next - SV_EVENTS_RING : 1;
    sv_ctl_reply_stream(req,
                        json_pack("{s:I, s:I, s:i}", "next", (json_int_t)next, "oldest", (json_int_t)oldest, "ring",
                                  (int)SV_EVENTS_RING),
                        on_events_stream, job);
}

/* ---- vm.wait ------------------------------------------------------------- */

typedef enum wait_for { WAIT_RUNNING, WAIT_STOPPED, WAIT_CRASHED, WAIT_AGENT } wait_for;
static const char *const wait_names[] = {"running", "stopped", "crashed", "agent"};

typedef struct sv_api_wait {
    sv_daemon *d;
    sv_ctl_req *req;
    char name[QV_NAME_MAX + 1];
    wait_for cond;
    uint64_t begin_ms;
    uv_timer_t timer;
    sv_events_listener *listener;
    struct sv_api_wait *next;
} sv_api_wait;

static bool satisfied(wait_for cond, sv_vm_state st, bool agent_up) {
    switch (cond) {
    case WAIT_RUNNING:
        return st == SV_VM_RUNNING;
    case WAIT_STOPPED: /* no QEMU any more: stopped, or crashed */
        return st == SV_VM_STOPPED || st == SV_VM_CRASHED;
    case WAIT_CRASHED:
        return st == SV_VM_CRASHED;
    case WAIT_AGENT:
        return st == SV_VM_RUNNING && agent_up;
    }
    return false;
}

static void wait_closed(uv_handle_t *h) {
    free(h->data);
}

/* Answers and lets the wait go (its memory once the timer is closed). */
static void wait_end(sv_api_wait *w, json_t *result, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void wait_end(sv_api_wait *w, json_t *result, int code, const char *fmt, ...) {
    for (sv_api_wait **p = &w->d->waits; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    if (w->d->events)
        sv_events_unlisten(w->d->events, w->listener);
    w->listener = NULL;
    if (code) {
        qv_error err = {.code = code};
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err.msg, sizeof err.msg, fmt, ap);
        va_end(ap);
        sv_ctl_reply_qv_error(w->req, &err);
    } else {
        sv_ctl_reply(w->req, result);
    }
    uv_close((uv_handle_t *)&w->timer, wait_closed);
}

static void wait_done(sv_api_wait *w, sv_vm_state st) {
    wait_end(w,
             json_pack("{s:s, s:s, s:s, s:f}", "name", w->name, "state", sv_vm_state_name(st), "condition",
                       wait_names[w->cond], "waited_s", (double)(qv_now_ms() - w->begin_ms) / 1000.0),
             0, "%s", "");
}

static void on_wait_event(const json_t *ev, void *userdata) {
    sv_api_wait *w = userdata;
    const char *vm = json_string_value(json_object_get(ev, "vm"));
    if (!vm || strcmp(vm, w->name) != 0)
        return;
    sv_vm *v = sv_registry_find(w->d->registry, w->name);
    const char *to = json_string_value(json_object_get(ev, "to"));
    if (!v || (to && strcmp(to, "removing") == 0)) {
        wait_end(w, NULL, ENOENT, "VM '%s' was removed while waiting for it to be %s", w->name, wait_names[w->cond]);
        return;
    }
    if (satisfied(w->cond, sv_vm_state_of(v), sv_vm_agent_up(v)))
        wait_done(w, sv_vm_state_of(v));
}

static void on_wait_timeout(uv_timer_t *t) {
    sv_api_wait *w = t->data;
    sv_vm *v = sv_registry_find(w->d->registry, w->name);
    const char *st = v ? sv_vm_state_name(sv_vm_state_of(v)) : "gone";
    wait_end(w, NULL, ETIMEDOUT, "VM '%s' is not %s after %.1f s (it is %s)", w->name,
             w->cond == WAIT_AGENT ? "answering on its guest agent" : wait_names[w->cond],
             (double)(qv_now_ms() - w->begin_ms) / 1000.0, st);
}

/* {"name", "for": running|stopped|crashed|agent, "timeout_ms" (optional)}:
 * answered at once when the VM is so, else by the event that makes it so;
 * ETIMEDOUT (exit 75) when the time is up first. */
void sv_api_vm_wait(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    const char *f = json_string_value(json_object_get(params, "for"));
    json_t *t = json_object_get(params, "timeout_ms");
    int cond = -1;
    for (size_t i = 0; f && i < QV_ARRAY_SIZE(wait_names); i++)
        if (strcmp(f, wait_names[i]) == 0)
            cond = (int)i;
    if (cond < 0 || (t && (!json_is_integer(t) || json_integer_value(t) <= 0))) {
        sv_ctl_reply_error(req, EINVAL, "\"for\" must be running, stopped, crashed or agent, and \"timeout_ms\" a "
                                        "positive integer");
        return;
    }
    sv_api_wait *w = calloc(1, sizeof *w);
    if (!w) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    *w = (sv_api_wait){.d = d, .req = req, .cond = (wait_for)cond, .begin_ms = qv_now_ms()};
    snprintf(w->name, sizeof w->name, "%s", sv_vm_name(vm));
    uv_timer_init(&d->loop, &w->timer);
    w->timer.data = w;
    w->next = d->waits;
    d->waits = w;
    if (satisfied(w->cond, sv_vm_state_of(vm), sv_vm_agent_up(vm))) {
        wait_done(w, sv_vm_state_of(vm));
        return;
    }
    if (!(w->listener = sv_events_listen(d->events, on_wait_event, w))) {
        wait_end(w, NULL, ENOMEM, "out of memory");
        return;
    }
    if (t)
        uv_timer_start(&w->timer, on_wait_timeout, (uint64_t)json_integer_value(t), 0);
}

void sv_api_waits_cancel(sv_daemon *d) {
    while (d->waits)
        wait_end(d->waits, NULL, ECANCELED, "the daemon is stopping");
}
