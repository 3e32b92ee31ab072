/* QMP client.  See qmp.h for the contract and docs/qmp.md for the design.
 *
 * Every command is a `pending` entry that sits, until it completes, in three
 * places: a list in send order (to fail everything in order and to flush
 * commands held during the handshake), a hash table by id (to match a reply
 * in O(1)), and a deadline heap behind one uv timer (O(log n) per command).
 * Ids are never reused, so once a command is gone from the table its late
 * reply cannot match anything and is dropped. */
#include "qmp-internal.h"

#include "cleanup.h"
#include "linebuf.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct pending pending;
typedef void (*pending_dispatch)(qmp_conn *c, pending *p, int status, json_t *result, const qmp_error *err);

struct pending {
    uint64_t id;
    qmp__tnode tnode;
    pending *prev, *next; /* send order */
    pending *hnext;       /* hash chain */
    char *line;           /* serialised, while held back by the handshake */
    size_t line_len;
    pending_dispatch dispatch;
    qmp__fn cb;
    void *userdata;
};

typedef enum conn_state {
    ST_CONNECTING,  /* qmp_connect() in progress */
    ST_GREETING,    /* waiting for {"QMP": ...} */
    ST_NEGOTIATING, /* qmp_capabilities sent */
    ST_READY,
    ST_DEAD, /* failed or closed: no more I/O, no more callbacks but close's */
} conn_state;

struct qmp_conn {
    qmp__io io;
    qmp_options opts;
    conn_state state;
    bool closed;           /* qmp_close() was called */
    bool disconnect_fired; /* on_disconnect ran */
    qv_linebuf lb;
    json_t *greeting;
    uint64_t next_id;
    pending *head, *tail;
    pending **buckets;
    size_t n_buckets; /* power of two */
    size_t n_pending;
    qmp__timeq timeq;
    qmp__tnode handshake; /* deadline of greeting + negotiation */
    qmp__tnode hold;      /* reading paused until then: too many events */
    uint64_t ev_window;   /* start of the current second of events */
    unsigned ev_count;    /* events delivered in it */
    uint64_t ev_held;     /* times reading was paused for it (logged once) */
    char why[160];        /* what broke the connection, for qmp_failure() */
};

static void conn_fail(qmp_conn *c, int status);
static void conn_fail_why(qmp_conn *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- pending bookkeeping ---- */

static size_t bucket_of(const qmp_conn *c, uint64_t id) {
    /* Ids are sequential: the low bits already spread them evenly. */
    return (size_t)(id & (c->n_buckets - 1));
}

static void hash_rebuild(qmp_conn *c) {
    size_t n = c->n_buckets;
    while (n < c->n_pending)
        n *= 2;
    pending **b = calloc(n, sizeof *b);
    if (!b)
        return; /* keep the old table: longer chains, still correct */
    free(c->buckets);
    c->buckets = b;
    c->n_buckets = n;
    for (pending *p = c->head; p; p = p->next) {
        size_t i = bucket_of(c, p->id);
        p->hnext = b[i];
        b[i] = p;
    }
}

static int pending_link(qmp_conn *c, pending *p, uint64_t deadline) {
    if (deadline) {
        int r = qmp__timeq_push(&c->timeq, &p->tnode, deadline);
        if (r < 0)
            return r;
    }
    p->prev = c->tail;
    p->next = NULL;
    if (c->tail)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
    c->n_pending++;
    if (c->n_pending > c->n_buckets * 2) {
        hash_rebuild(c);
    } else {
        size_t i = bucket_of(c, p->id);
        p->hnext = c->buckets[i];
        c->buckets[i] = p;
    }
    return 0;
}

static void timer_rearm(qmp_conn *c);

static void pending_unlink(qmp_conn *c, pending *p) {
    qmp__timeq_remove(&c->timeq, &p->tnode);
    timer_rearm(c); /* an answered command leaves no wake-up behind */
    if (p->prev)
        p->prev->next = p->next;
    else
        c->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        c->tail = p->prev;
    for (pending **pp = &c->buckets[bucket_of(c, p->id)]; *pp; pp = &(*pp)->hnext)
        if (*pp == p) {
            *pp = p->hnext;
            break;
        }
    c->n_pending--;
}

static pending *pending_find(const qmp_conn *c, uint64_t id) {
    for (pending *p = c->buckets[bucket_of(c, id)]; p; p = p->hnext)
        if (p->id == id)
            return p;
    return NULL;
}

/* Calls the entry's callback and frees it; it must be unlinked already. */
static void pending_complete(qmp_conn *c, pending *p, int status, json_t *result, const qmp_error *err) {
    p->dispatch(c, p, status, result, err);
    free(p->line);
    free(p);
}

static void fail_all(qmp_conn *c, int status) {
    pending *p;
    /* Re-read the head each time: a callback may close the connection,
     * which fails the rest from inside this loop. */
    while ((p = c->head)) {
        pending_unlink(c, p);
        pending_complete(c, p, status, NULL, NULL);
    }
}

static void timer_rearm(qmp_conn *c) {
    qmp__tnode *top = qmp__timeq_top(&c->timeq);
    qmp__io_timer_at(&c->io, top ? top->deadline : 0);
}

/* ---- sending ---- */

static int write_line(qmp_conn *c, pending *p) {
    char *line = TAKE_PTR(p->line);
    return qmp__io_write_line(&c->io, false, line, p->line_len, NULL, 0);
}

static int send_command(qmp_conn *c, const char *command, json_t *args, uint64_t timeout_ms,
                        pending_dispatch dispatch, qmp__fn cb, void *userdata) {
    if (!c || c->state == ST_DEAD)
        return -ENOTCONN;
    _cleanup_free_ pending *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    qmp__tnode_init(&p->tnode);
    p->id = c->next_id++;
    p->dispatch = dispatch;
    p->cb = cb;
    p->userdata = userdata;
    int r = qmp__build_command(command, args, p->id, &p->line, &p->line_len);
    if (r < 0)
        return r;

    uint64_t deadline = timeout_ms ? qmp__io_now(&c->io) + timeout_ms : 0;
    r = pending_link(c, p, deadline);
    if (r < 0) {
        free(p->line);
        return r;
    }
    /* Until qmp_capabilities succeeded, commands wait in the list. */
    if (c->state == ST_READY) {
        r = write_line(c, p);
        if (r < 0) {
            pending_unlink(c, p);
            return r;
        }
    }
    if (deadline && qmp__timeq_top(&c->timeq) == &p->tnode)
        qmp__io_timer_at(&c->io, deadline);
    TAKE_PTR(p);
    return 0;
}

static void dispatch_plain(qmp_conn *c, pending *p, int status, json_t *result, const qmp_error *err) {
    qmp_reply_cb cb = (qmp_reply_cb)p->cb;
    if (cb)
        cb(c, status, result, err, p->userdata);
}

int qmp_send(qmp_conn *c, const char *command, json_t *args, uint64_t timeout_ms, qmp_reply_cb cb,
             void *userdata) {
    return send_command(c, command, args, timeout_ms, dispatch_plain, (qmp__fn)cb, userdata);
}

/* ---- handshake ---- */

static void handshake_done(qmp_conn *c, pending *p, int status, json_t *result, const qmp_error *err) {
    if (c->state == ST_DEAD)
        return; /* the connection failed, which says it all */
    if (status != 0) {
        log_debug("qmp: qmp_capabilities failed: %s", err ? err->desc : "bad reply");
        conn_fail_why(c, QMP_EPROTO, "qmp_capabilities failed: %s", err ? err->desc : "bad reply");
        return;
    }
    c->state = ST_READY;
    qmp__timeq_remove(&c->timeq, &c->handshake);
    timer_rearm(c);
    for (pending *q = c->head; q; q = q->next) {
        if (!q->line)
            continue;
        int r = write_line(c, q);
        if (r < 0) {
            conn_fail(c, r);
            return;
        }
    }
    if (c->opts.on_ready)
        c->opts.on_ready(c, c->opts.userdata);
}

static void handle_greeting(qmp_conn *c, json_t *msg, json_t *qmp) {
    if (c->state != ST_GREETING || !json_is_object(qmp)) {
        log_debug("qmp: unexpected or malformed greeting");
        conn_fail_why(c, QMP_EPROTO, c->state != ST_GREETING ? "a second greeting" : "a malformed greeting");
        return;
    }
    c->greeting = json_incref(msg);
    /* qmp_capabilities is written at once, ahead of the user's commands
     * held in the list. */
    _cleanup_free_ pending *p = calloc(1, sizeof *p);
    if (!p) {
        conn_fail(c, -ENOMEM);
        return;
    }
    qmp__tnode_init(&p->tnode);
    p->id = c->next_id++;
    p->dispatch = handshake_done;
    int r = qmp__build_command("qmp_capabilities", NULL, p->id, &p->line, &p->line_len);
    if (r == 0) {
        r = pending_link(c, p, 0);
        if (r == 0) {
            r = write_line(c, p);
            if (r < 0)
                pending_unlink(c, p);
        }
        free(p->line);
    }
    if (r < 0) {
        conn_fail(c, r);
        return;
    }
    TAKE_PTR(p);
    c->state = ST_NEGOTIATING;
}

int qmp__parse_error(json_t *error, qmp_error *ret) {
    json_t *cls = json_object_get(error, "class");
    json_t *desc = json_object_get(error, "desc");
    if (!json_is_object(error) || !json_is_string(cls) || !json_is_string(desc))
        return -EPROTO;
    *ret = (qmp_error){.error_class = json_string_value(cls), .desc = json_string_value(desc)};
    return 0;
}

/* ---- receiving ---- */

static void handle_event(qmp_conn *c, json_t *msg, json_t *name) {
    if (!json_is_string(name)) {
        conn_fail_why(c, QMP_EPROTO, "an event without a name");
        return;
    }
    qmp_timestamp ts = {-1, -1};
    json_t *t = json_object_get(msg, "timestamp");
    json_t *sec = json_object_get(t, "seconds");
    json_t *usec = json_object_get(t, "microseconds");
    if (json_is_integer(sec) && json_is_integer(usec))
        ts = (qmp_timestamp){json_integer_value(sec), json_integer_value(usec)};
    uint64_t now = uv_now(c->io.loop);
    if (now - c->ev_window >= 1000) {
        c->ev_window = now;
        c->ev_count = 0;
    }
    if (++c->ev_count == QMP_EVENTS_PER_SECOND && c->hold.idx == SIZE_MAX &&
        qmp__timeq_push(&c->timeq, &c->hold, c->ev_window + 1000) == 0) {
        /* the rest of this read is still handled; then nothing until the
         * second is over */
        if (c->ev_held++ == 0)
            log_warning("QMP: more than %u events in a second; reading paused until the second is over (logged "
                        "once per connection)", QMP_EVENTS_PER_SECOND);
        qmp__io_stop_read(&c->io);
        timer_rearm(c);
    }
    if (c->opts.on_event)
        c->opts.on_event(c, json_string_value(name), json_object_get(msg, "data"), &ts, c->opts.userdata);
}

static void handle_reply(qmp_conn *c, json_t *msg) {
    json_t *error = json_object_get(msg, "error");
    qmp_error e;
    if (error && qmp__parse_error(error, &e) < 0) {
        conn_fail_why(c, QMP_EPROTO, "a malformed error reply");
        return;
    }
    uint64_t id;
    bool has_id = qmp__get_id(msg, &id);
    pending *p = has_id ? pending_find(c, id) : NULL;
    if (c->state == ST_NEGOTIATING && (!p || p->dispatch != handshake_done)) {
        /* qmp_capabilities is the only command on the wire yet (nothing
         * timed out, nothing else was written): any other reply cannot be
         * an answer to us, and waiting would only end at the handshake
         * timeout */
        conn_fail_why(c, QMP_EPROTO, "a reply to qmp_capabilities with a wrong id");
        return;
    }
    if (!p || p->line) {
        /* A late reply to a timed-out command, a reply to something never
         * sent, or QEMU's id-less answer to unparsable input. */
        log_debug("qmp: dropping reply with unknown id");
        return;
    }
    pending_unlink(c, p);
    if (error)
        pending_complete(c, p, QMP_ECOMMAND, NULL, &e);
    else
        pending_complete(c, p, 0, json_object_get(msg, "return"), NULL);
}

static void handle_message(qmp_conn *c, json_t *msg) {
    json_t *v;
    if ((v = json_object_get(msg, "event")))
        handle_event(c, msg, v);
    else if (json_object_get(msg, "return") || json_object_get(msg, "error"))
        handle_reply(c, msg);
    else if ((v = json_object_get(msg, "QMP")))
        handle_greeting(c, msg, v);
    else
        log_debug("qmp: ignoring message of unknown kind");
}

static int on_line(const char *line, size_t len, void *userdata) {
    qmp_conn *c = userdata;
    if (qmp__blank(line, len))
        return 0;
    json_t *msg = qmp__parse_object(line, len);
    if (!msg) {
        size_t n = len;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        conn_fail_why(c, QMP_EPROTO, "invalid JSON (or not an object): '%.*s%s'", (int)(n > 40 ? 40 : n), line,
                      n > 40 ? "..." : "");
        return 1;
    }
    handle_message(c, msg);
    json_decref(msg);
    /* Stop at once if a callback closed the connection. */
    return c->state == ST_DEAD ? 1 : 0;
}

void qmp__feed(qmp_conn *c, const char *buf, size_t len) {
    if (c->state == ST_DEAD)
        return;
    int r = qv_linebuf_feed(&c->lb, buf, len, on_line, c);
    if (r == -EMSGSIZE) {
        log_debug("qmp: message over %u bytes", QMP_MAX_MESSAGE);
        conn_fail_why(c, QMP_EPROTO, "a message over %u bytes", QMP_MAX_MESSAGE);
    } else if (r < 0) {
        conn_fail(c, r);
    }
}

/* ---- connection ---- */

static void conn_fail_why(qmp_conn *c, int status, const char *fmt, ...) {
    if (c->state == ST_DEAD)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof c->why, fmt, ap);
    va_end(ap);
    conn_fail(c, status);
}

static void conn_fail(qmp_conn *c, int status) {
    if (c->state == ST_DEAD)
        return;
    if (!c->why[0]) {
        const char *when = c->state == ST_CONNECTING    ? "connecting"
                           : c->state == ST_GREETING    ? "waiting for the greeting"
                           : c->state == ST_NEGOTIATING ? "negotiating capabilities"
                                                        : NULL;
        const char *what = status == QMP_EDISCONNECTED ? "the peer closed the connection"
                           : status == QMP_ETIMEDOUT   ? "no handshake in time"
                                                       : strerror(-status);
        snprintf(c->why, sizeof c->why, "%s%s%s", what, when ? " while " : "", when ? when : "");
    }
    c->state = ST_DEAD;
    qmp__io_shutdown(&c->io);
    qmp__timeq_remove(&c->timeq, &c->handshake);
    timer_rearm(c);
    fail_all(c, status);
    if (!c->closed && !c->disconnect_fired) {
        c->disconnect_fired = true;
        if (c->opts.on_disconnect)
            c->opts.on_disconnect(c, status, c->opts.userdata);
    }
}

static qmp_conn *io_conn(qmp__io *io) {
    return qmp__container_of(io, qmp_conn, io);
}

static void io_on_connect(qmp__io *io, int status) {
    qmp_conn *c = io_conn(io);
    if (status < 0) {
        conn_fail(c, status);
        return;
    }
    c->state = ST_GREETING;
    int r = qmp__io_start_read(io);
    if (r < 0)
        conn_fail(c, r);
}

static void io_on_data(qmp__io *io, const char *buf, size_t len) {
    qmp__feed(io_conn(io), buf, len);
}

static void io_on_read_error(qmp__io *io, int status) {
    conn_fail(io_conn(io), qmp__map_stream_error(status));
}

static void io_on_write_error(qmp__io *io, int status) {
    conn_fail(io_conn(io), qmp__map_stream_error(status));
}

static void io_on_timer(qmp__io *io) {
    qmp_conn *c = io_conn(io);
    uint64_t now = uv_now(io->loop);
    qmp__tnode *top;
    while ((top = qmp__timeq_top(&c->timeq)) && top->deadline <= now) {
        if (top == &c->handshake) {
            qmp__timeq_remove(&c->timeq, top);
            conn_fail(c, QMP_ETIMEDOUT);
            return;
        }
        if (top == &c->hold) {
            qmp__timeq_remove(&c->timeq, top);
            int r = qmp__io_start_read(io);
            if (r < 0) {
                conn_fail(c, r);
                return;
            }
            continue;
        }
        pending *p = qmp__container_of(top, pending, tnode);
        pending_unlink(c, p);
        pending_complete(c, p, QMP_ETIMEDOUT, NULL, NULL);
        if (c->state == ST_DEAD)
            return;
    }
    timer_rearm(c);
}

static void conn_free(qmp_conn *c) {
    pending *p;
    while ((p = c->head)) {
        pending_unlink(c, p);
        free(p->line);
        free(p);
    }
    qv_linebuf_free(&c->lb);
    json_decref(c->greeting);
    qmp__timeq_free(&c->timeq);
    free(c->buckets);
    free(c);
}

static void io_on_free(qmp__io *io) {
    conn_free(io_conn(io));
}

static const qmp__io_ops conn_io_ops = {
    .on_connect = io_on_connect,
    .on_data = io_on_data,
    .on_read_error = io_on_read_error,
    .on_write_error = io_on_write_error,
    .on_timer = io_on_timer,
    .on_free = io_on_free,
};

static int conn_new(uv_loop_t *loop, const qmp_options *opts, qmp_conn **ret) {
    if (!loop)
        return -EINVAL;
    qmp_conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    if (opts)
        c->opts = *opts;
    c->next_id = 1;
    qv_linebuf_init(&c->lb, QMP_MAX_MESSAGE);
    qmp__tnode_init(&c->handshake);
    qmp__tnode_init(&c->hold);
    c->n_buckets = 64;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
    if (!c->buckets) {
        conn_free(c);
        return -ENOMEM;
    }
    int r = qmp__io_init(&c->io, loop, &conn_io_ops);
    if (r < 0) {
        if (c->io.open_handles)
            qmp__io_release(&c->io);
        else
            conn_free(c);
        return r;
    }
    *ret = c;
    return 0;
}

/* Failure after conn_new(): nothing was reported to the user yet. */
static int conn_abort(qmp_conn *c, int r) {
    c->state = ST_DEAD;
    c->closed = true;
    qmp__io_release(&c->io);
    return r;
}

static int conn_start_handshake_timer(qmp_conn *c) {
    if (!c->opts.handshake_timeout_ms)
        return 0;
    uint64_t deadline = qmp__io_now(&c->io) + c->opts.handshake_timeout_ms;
    int r = qmp__timeq_push(&c->timeq, &c->handshake, deadline);
    if (r < 0)
        return r;
    timer_rearm(c);
    return 0;
}

int qmp_connect(uv_loop_t *loop, const char *path, const qmp_options *opts, qmp_conn **ret_conn) {
    if (!ret_conn)
        return -EINVAL;
    qmp_conn *c;
    int r = conn_new(loop, opts, &c);
    if (r < 0)
        return r;
    c->state = ST_CONNECTING;
    r = qmp__io_connect(&c->io, path);
    if (r == 0)
        r = conn_start_handshake_timer(c);
    if (r < 0)
        return conn_abort(c, r);
    *ret_conn = c;
    return 0;
}

int qmp_open_fd(uv_loop_t *loop, int fd, const qmp_options *opts, qmp_conn **ret_conn) {
    if (!ret_conn)
        return -EINVAL;
    qmp_conn *c;
    int r = conn_new(loop, opts, &c);
    if (r < 0)
        return r;
    c->state = ST_GREETING;
    r = conn_start_handshake_timer(c);
    if (r == 0)
        r = qmp__io_open(&c->io, fd);
    if (r < 0)
        return conn_abort(c, r);
    /* The handle owns fd now.  qmp__io_open() checked the fd is a readable
     * socket, which is all uv_read_start() can object to. */
    r = qmp__io_start_read(&c->io);
    if (r < 0)
        return conn_abort(c, r); /* closes fd with the handle */
    *ret_conn = c;
    return 0;
}

void qmp_close(qmp_conn *c) {
    if (!c || c->closed)
        return;
    c->closed = true;
    if (c->state != ST_DEAD) {
        c->state = ST_DEAD;
        qmp__io_shutdown(&c->io);
    }
    qmp__timeq_remove(&c->timeq, &c->handshake);
    timer_rearm(c);
    fail_all(c, QMP_ECANCELED);
    qmp__io_release(&c->io);
}

/* ---- listening socket for QEMU ---- */

int qmp_listen_socket(const char *path, int *ret_fd) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || !*path || !ret_fd)
        return -EINVAL;
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);

    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return -EEXIST;
        /* A socket left by an earlier run: nobody can be listening on it
         * that we want to keep, the path belongs to this VM. */
        if (unlink(path) < 0 && errno != ENOENT)
            return -errno;
    } else if (errno != ENOENT) {
        return -errno;
    }

    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -errno;
    if (chmod(path, 0600) < 0 || listen(fd, 4) < 0) {
        int r = -errno;
        unlink(path);
        return r;
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/* ---- accessors ---- */

int qmp_version(qmp_conn *c, int *ret_major, int *ret_minor, int *ret_micro) {
    json_t *qemu = json_object_get(json_object_get(json_object_get(c->greeting, "QMP"), "version"), "qemu");
    json_t *ma = json_object_get(qemu, "major"), *mi = json_object_get(qemu, "minor"),
           *mc = json_object_get(qemu, "micro");
    if (!json_is_integer(ma) || !json_is_integer(mi) || !json_is_integer(mc))
        return -ENODATA;
    if (ret_major)
        *ret_major = (int)json_integer_value(ma);
    if (ret_minor)
        *ret_minor = (int)json_integer_value(mi);
    if (ret_micro)
        *ret_micro = (int)json_integer_value(mc);
    return 0;
}

const char *qmp_failure(const qmp_conn *c) {
    return c->why;
}

json_t *qmp_greeting(qmp_conn *c) {
    return c->greeting;
}

bool qmp_is_ready(qmp_conn *c) {
    return c && c->state == ST_READY;
}

/* ---- helpers ---- */

static void dispatch_status(qmp_conn *c, pending *p, int status, json_t *result, const qmp_error *err) {
    qmp_status_cb cb = (qmp_status_cb)p->cb;
    if (!cb)
        return;
    if (status == 0) {
        json_t *running = json_object_get(result, "running");
        json_t *st = json_object_get(result, "status");
        if (json_is_boolean(running) && json_is_string(st)) {
            qmp_run_status s = {.running = json_is_true(running), .status = json_string_value(st)};
            cb(c, 0, &s, NULL, p->userdata);
            return;
        }
        status = QMP_EBADREPLY;
    }
    cb(c, status, NULL, err, p->userdata);
}

int qmp_query_status(qmp_conn *c, uint64_t timeout_ms, qmp_status_cb cb, void *userdata) {
    return send_command(c, "query-status", NULL, timeout_ms, dispatch_status, (qmp__fn)cb, userdata);
}

static int parse_cpus(json_t *result, qmp_vcpu **ret, size_t *ret_n) {
    if (!json_is_array(result))
        return QMP_EBADREPLY;
    size_t n = json_array_size(result);
    _cleanup_free_ qmp_vcpu *v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(result, i);
        json_t *idx = json_object_get(e, "cpu-index");
        json_t *tid = json_object_get(e, "thread-id");
        json_t *qom = json_object_get(e, "qom-path");
        json_t *target = json_object_get(e, "target");
        if (!json_is_integer(idx) || !json_is_integer(tid) || json_integer_value(tid) <= 0 ||
            json_integer_value(tid) > INT32_MAX)
            return QMP_EBADREPLY;
        v[i] = (qmp_vcpu){
            .cpu_index = json_integer_value(idx),
            .thread_id = (pid_t)json_integer_value(tid),
            .qom_path = json_string_value(qom),
            .target = json_string_value(target),
        };
    }
    *ret = TAKE_PTR(v);
    *ret_n = n;
    return 0;
}

static void dispatch_cpus(qmp_conn *c, pending *p, int status, json_t *result, const qmp_error *err) {
    qmp_cpus_cb cb = (qmp_cpus_cb)p->cb;
    if (!cb)
        return;
    if (status == 0) {
        _cleanup_free_ qmp_vcpu *v = NULL;
        size_t n = 0;
        status = parse_cpus(result, &v, &n);
        if (status == 0) {
            cb(c, 0, v, n, NULL, p->userdata);
            return;
        }
    }
    cb(c, status, NULL, 0, err, p->userdata);
}

int qmp_query_cpus_fast(qmp_conn *c, uint64_t timeout_ms, qmp_cpus_cb cb, void *userdata) {
    return send_command(c, "query-cpus-fast", NULL, timeout_ms, dispatch_cpus, (qmp__fn)cb, userdata);
}

int qmp_cont(qmp_conn *c, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata) {
    return qmp_send(c, "cont", NULL, timeout_ms, cb, userdata);
}

int qmp_stop(qmp_conn *c, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata) {
    return qmp_send(c, "stop", NULL, timeout_ms, cb, userdata);
}

int qmp_system_powerdown(qmp_conn *c, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata) {
    return qmp_send(c, "system_powerdown", NULL, timeout_ms, cb, userdata);
}

int qmp_system_reset(qmp_conn *c, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata) {
    return qmp_send(c, "system_reset", NULL, timeout_ms, cb, userdata);
}

int qmp_quit(qmp_conn *c, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata) {
    return qmp_send(c, "quit", NULL, timeout_ms, cb, userdata);
}
