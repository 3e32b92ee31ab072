/* The event stream (see events.h). */
#include "ctl/events.h"
#include "ctl/fsink.h"

#include "frame.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct entry {
    char *text; /* the event's JSON text, compact */
    size_t len;
    char vm[QV_NAME_MAX + 1]; /* "" for an event of no VM */
} entry;

typedef struct sub {
    sv_events *e;
    struct sub *next;
    sv_fsink *sink;
    uint64_t next_seq; /* the next event it has not been sent */
    char (*vms)[QV_NAME_MAX + 1];
    size_t n_vms;
    bool ended;
} sub;

struct sv_events_listener {
    sv_events_fn fn;
    void *userdata;
    bool dead;
    sv_events_listener *next;
};

struct sv_events {
    uv_loop_t *loop;
    entry ring[SV_EVENTS_RING];
    uint64_t next_seq; /* the next event's; the first is 1 */
    uint64_t kept;     /* how many of the last ones the ring holds */
    sub *subs;
    size_t n_subs;
    sv_events_listener *listeners;
    unsigned calling; /* listeners being called (nested emits are not allowed, but be safe) */
    bool freeing;
};

int sv_events_new(uv_loop_t *loop, sv_events **ret) {
    sv_events *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->loop = loop;
    e->next_seq = 1;
    *ret = e;
    return 0;
}

uint64_t sv_events_next_seq(const sv_events *e) {
    return e->next_seq;
}

size_t sv_events_subscribers(const sv_events *e) {
    return e->n_subs;
}

/* ---- subscribers ----------------------------------------------------------- */

static void sub_end(sub *s, json_t *end) {
    if (s->ended) {
        json_decref(end);
        return;
    }
    s->ended = true;
    sv_fsink_end(s->sink, end);
}

static bool wants(const sub *s, const entry *en) {
    if (!s->n_vms)
        return true;
    for (size_t i = 0; i < s->n_vms; i++)
        if (strcmp(s->vms[i], en->vm) == 0)
            return true;
    return false;
}

/* Sends what the subscriber has not seen while its connection takes it. */
static void pump(sub *s) {
    sv_events *e = s->e;
    if (!e)
        return; /* the stream is ending with the daemon */
    while (!s->ended && s->next_seq < e->next_seq && sv_fsink_queued(s->sink) < SV_EVENTS_QUEUED) {
        uint64_t oldest = e->next_seq - e->kept;
        int r = 0;
        if (s->next_seq < oldest) {
            r = sv_fsink_send_json(s->sink, QV_FRAME_NOTICE,
                                   json_pack("{s:I, s:I}", "lost", (json_int_t)(oldest - s->next_seq), "next",
                                             (json_int_t)oldest));
            s->next_seq = oldest;
        } else {
            const entry *en = &e->ring[s->next_seq % SV_EVENTS_RING];
            s->next_seq++;
            if (wants(s, en))
                r = sv_fsink_send(s->sink, QV_FRAME_DATA, en->text, en->len);
        }
        if (r < 0) {
            sub_end(s, NULL);
            return;
        }
    }
}

static void on_drain(sv_fsink *sink, void *userdata) {
    (void)sink;
    pump(userdata);
}

static void on_input_end(sv_fsink *sink, int status, void *userdata) {
    (void)sink;
    (void)status;
    sub_end(userdata, NULL); /* the subscriber left */
}

static void on_input(sv_fsink *sink, const char *data, size_t len, void *userdata) {
    (void)sink;
    (void)data;
    (void)len;
    (void)userdata; /* a subscriber has nothing to say: ignored */
}

static void on_closed(void *userdata) {
    sub *s = userdata;
    sv_events *e = s->e; /* NULL: the hub went first (sv_events_free) */
    for (sub **p = e ? &e->subs : NULL; p && *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            e->n_subs--;
            break;
        }
    free(s->vms);
    free(s);
}

int sv_events_subscribe(sv_events *e, int fd, bool resume, uint64_t after, const char *const *vms, size_t n_vms,
                        qv_error *err) {
    if (e->n_subs >= SV_EVENTS_MAX_SUBSCRIBERS) {
        close(fd);
        return qv_error_set(err, EBUSY, "%u event subscribers already; try again later", SV_EVENTS_MAX_SUBSCRIBERS);
    }
    sub *s = calloc(1, sizeof *s);
    if (s && n_vms && !(s->vms = calloc(n_vms, sizeof *s->vms))) {
        free(s);
        s = NULL;
    }
    if (!s) {
        close(fd);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n_vms; i++)
        snprintf(s->vms[i], sizeof s->vms[i], "%s", vms[i]);
    s->n_vms = n_vms;
    s->e = e;
    s->next_seq = !resume || after >= e->next_seq ? e->next_seq : after + 1;
    static const sv_fsink_cbs cbs = {
        .on_input = on_input, .on_input_end = on_input_end, .on_drain = on_drain, .on_closed = on_closed};
    int r = sv_fsink_new(e->loop, fd, &cbs, s, &s->sink);
    if (r < 0) {
        free(s->vms);
        free(s);
        return qv_error_set(err, -r, "cannot use the client connection: %s", uv_strerror(r));
    }
    s->next = e->subs;
    e->subs = s;
    e->n_subs++;
    pump(s);
    return 0;
}

/* ---- listeners ----------------------------------------------------------- */

sv_events_listener *sv_events_listen(sv_events *e, sv_events_fn fn, void *userdata) {
    sv_events_listener *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->fn = fn;
    l->userdata = userdata;
    l->next = e->listeners;
    e->listeners = l;
    return l;
}

static void sweep_listeners(sv_events *e) {
    for (sv_events_listener **p = &e->listeners; *p;) {
        sv_events_listener *l = *p;
        if (l->dead) {
            *p = l->next;
            free(l);
        } else {
            p = &l->next;
        }
    }
}

void sv_events_unlisten(sv_events *e, sv_events_listener *l) {
    if (!l)
        return;
    l->dead = true;
    if (!e->calling)
        sweep_listeners(e);
}

/* ---- emitting ------------------------------------------------------------ */

static void now_text(char *buf, size_t len) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
}

uint64_t sv_events_emit(sv_events *e, const char *type, const char *vm, json_t *fields) {
    char when[40];
    now_text(when, sizeof when);
    uint64_t seq = e->next_seq;
    json_t *ev = json_pack("{s:I, s:s, s:s}", "seq", (json_int_t)seq, "time", when, "type", type);
    if (ev && vm)
        json_object_set_new(ev, "vm", json_string(vm));
    if (ev && fields)
        json_object_update_missing(ev, fields);
    json_decref(fields);
    char *text = ev ? json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (!text) {
        log_error("out of memory: event %s%s%s lost", type, vm ? " of VM " : "", vm ? vm : "");
        json_decref(ev);
        return 0;
    }
    entry *en = &e->ring[seq % SV_EVENTS_RING];
    free(en->text);
    en->text = text;
    en->len = strlen(text);
    snprintf(en->vm, sizeof en->vm, "%s", vm ? vm : "");
    e->next_seq++;
    if (e->kept < SV_EVENTS_RING)
        e->kept++;
    e->calling++;
    for (sv_events_listener *l = e->listeners; l; l = l->next)
        if (!l->dead)
            l->fn(ev, l->userdata);
    e->calling--;
    sweep_listeners(e);
    json_decref(ev);
    for (sub *s = e->subs; s; s = s->next)
        pump(s);
    return seq;
}

void sv_events_free(sv_events *e) {
    if (!e)
        return;
    /* the subscribers' sinks close on the loop and free themselves; they
     * must not find e afterwards */
    for (sub *s = e->subs; s; s = s->next)
        sub_end(s, json_pack("{s:s, s:s}", "reason", "daemon", "message", "the qvisor daemon is stopping"));
    while (e->subs) {
        sub *s = e->subs;
        e->subs = s->next;
        s->e = NULL;
    }
    for (size_t i = 0; i < SV_EVENTS_RING; i++)
        free(e->ring[i].text);
    for (sv_events_listener *l = e->listeners; l;) {
        sv_events_listener *next = l->next;
        free(l);
        l = next;
    }
    free(e);
}
