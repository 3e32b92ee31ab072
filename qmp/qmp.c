/* QMP client.  See qmp.h for the contract and docs/qmp.md for the design.
 *
 * The connection base (io.h) keeps the commands: in send order (to fail
 * everything in order and to flush commands held during the handshake), by
 * id (to match a reply in O(1)), and in the deadline heap behind the
 * stream's timer (O(log n) per command), and runs the life cycle.  This
 * file is the protocol: the greeting and qmp_capabilities (with the
 * handshake deadline, a node of the same heap), replies, events and their
 * rate limit (the "hold" node), and the typed helpers.  Ids are never
 * reused, so once a command is gone from the table its late reply cannot
 * match anything and is dropped. */
#include "qmp-internal.h"

#include "cleanup.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

typedef enum conn_state {
    ST_GREETING,    /* waiting for {"QMP": ...} (or for the connect: !base.connected) */
    ST_NEGOTIATING, /* qmp_capabilities sent */
    ST_READY,
} conn_state; /* once base.dead: no more I/O, no more callbacks but close's */

struct qmp_conn {
    qmp__conn base; /* first: the base allocates and frees the struct */
    qmp_options opts;
    conn_state state;
    json_t *greeting;
    qmp__tnode handshake; /* deadline of greeting + negotiation */
    qmp__tnode hold;      /* reading paused until then: too many events */
    uint64_t ev_window;   /* start of the current second of events */
    unsigned ev_count;    /* events delivered in it */
    uint64_t ev_held;     /* times reading was paused for it (logged once) */
    unsigned n_fast;      /* requests in flight whose reply may take the fast path */
    char why[160];        /* what broke the connection, for qmp_failure() */
};

_Static_assert(offsetof(qmp_conn, base) == 0, "the base comes first");

static void conn_fail_why(qmp_conn *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fast_blockstats(qmp_conn *c, qmp__req *p, const char *value, size_t len);

static qmp_conn *conn_of(qmp__conn *b) {
    return qmp__container_of(b, qmp_conn, base);
}

static void conn_fail(qmp_conn *c, int status) {
    qmp__conn_fail(&c->base, status);
}

/* ---- sending ---- */

static int write_line(qmp_conn *c, qmp__req *p) {
    char *line = TAKE_PTR(p->line);
    return qmp__io_write_line(&c->base.io, false, line, p->line_len, NULL, 0);
}

/* *ret_p (may be NULL) is the request, valid until it completes. */
static int send_command_req(qmp_conn *c, const char *command, json_t *args, uint64_t timeout_ms,
                            qmp__req_dispatch dispatch, qmp__fn cb, void *userdata, qmp__req **ret_p) {
    if (!c)
        return -ENOTCONN;
    qmp__req *p;
    int r = qmp__conn_submit(&c->base, command, args, timeout_ms, dispatch, cb, userdata, &p);
    if (r < 0)
        return r;
    /* Until qmp_capabilities succeeded, commands wait in the list. */
    if (c->state == ST_READY) {
        r = write_line(c, p);
        if (r < 0) {
            qmp__conn_discard(&c->base, p);
            return r;
        }
    }
    if (ret_p)
        *ret_p = p;
    return 0;
}

static int send_command(qmp_conn *c, const char *command, json_t *args, uint64_t timeout_ms,
                        qmp__req_dispatch dispatch, qmp__fn cb, void *userdata) {
    return send_command_req(c, command, args, timeout_ms, dispatch, cb, userdata, NULL);
}

static void dispatch_plain(qmp__conn *b, qmp__req *p, int status, json_t *result, const qmp_error *err) {
    qmp_reply_cb cb = (qmp_reply_cb)p->cb;
    if (cb)
        cb(conn_of(b), status, result, err, p->userdata);
}

int qmp_send(qmp_conn *c, const char *command, json_t *args, uint64_t timeout_ms, qmp_reply_cb cb,
             void *userdata) {
    return send_command(c, command, args, timeout_ms, dispatch_plain, (qmp__fn)cb, userdata);
}

/* ---- handshake ---- */

static void handshake_done(qmp__conn *b, qmp__req *p, int status, json_t *result, const qmp_error *err) {
    qmp_conn *c = conn_of(b);
    if (b->dead)
        return; /* the connection failed, which says it all */
    if (status != 0) {
        log_debug("qmp: qmp_capabilities failed: %s", err ? err->desc : "bad reply");
        conn_fail_why(c, QMP_EPROTO, "qmp_capabilities failed: %s", err ? err->desc : "bad reply");
        return;
    }
    c->state = ST_READY;
    qmp__timeq_remove(&b->timeq, &c->handshake);
    qmp__conn_rearm(b);
    for (qmp__req *q = b->head; q; q = q->next) {
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
    qmp__req *p;
    int r = qmp__conn_submit(&c->base, "qmp_capabilities", NULL, 0, handshake_done, NULL, NULL, &p);
    if (r == 0) {
        r = write_line(c, p);
        if (r < 0)
            qmp__conn_discard(&c->base, p);
    }
    if (r < 0) {
        conn_fail(c, r);
        return;
    }
    c->state = ST_NEGOTIATING;
}

static void handshake_expired(qmp__tnode *node) {
    conn_fail(qmp__container_of(node, qmp_conn, handshake), QMP_ETIMEDOUT);
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

static void hold_over(qmp__tnode *node) {
    qmp_conn *c = qmp__container_of(node, qmp_conn, hold);
    int r = qmp__io_start_read(&c->base.io);
    if (r < 0)
        conn_fail(c, r);
}

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
    uint64_t now = uv_now(c->base.io.loop);
    if (now - c->ev_window >= 1000) {
        c->ev_window = now;
        c->ev_count = 0;
    }
    if (++c->ev_count == QMP_EVENTS_PER_SECOND && c->hold.idx == SIZE_MAX &&
        qmp__timeq_push(&c->base.timeq, &c->hold, c->ev_window + 1000) == 0) {
        /* the rest of this read is still handled; then nothing until the
         * second is over */
        if (c->ev_held++ == 0)
            log_warning("QMP: more than %u events in a second; reading paused until the second is over (logged "
                        "once per connection)", QMP_EVENTS_PER_SECOND);
        qmp__io_stop_read(&c->base.io);
        qmp__conn_rearm(&c->base);
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
    qmp__req *p = has_id ? qmp__conn_find(&c->base, id) : NULL;
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
    if (error)
        qmp__conn_complete(&c->base, p, QMP_ECOMMAND, NULL, &e);
    else
        qmp__conn_complete(&c->base, p, 0, json_object_get(msg, "return"), NULL);
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

/* A reply that a fast path may take: true when it did. */
static bool fast_reply(qmp_conn *c, const char *line, size_t len) {
    const char *value;
    size_t value_len;
    uint64_t id;
    if (!c->n_fast || c->state != ST_READY || qmp__scan_reply(line, len, &value, &value_len, &id) < 0)
        return false;
    qmp__req *p = qmp__conn_find(&c->base, id);
    if (!p || p->line || !p->fast)
        return false;
    return fast_blockstats(c, p, value, value_len);
}

static int on_line(const char *line, size_t len, void *userdata) {
    qmp_conn *c = userdata;
    if (qmp__blank(line, len))
        return 0;
    if (fast_reply(c, line, len))
        return c->base.dead ? 1 : 0;
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
    return c->base.dead ? 1 : 0;
}

void qmp__feed(qmp_conn *c, const char *buf, size_t len) {
    if (c->base.dead)
        return;
    int r = qv_linebuf_feed(&c->base.lb, buf, len, on_line, c);
    if (r == -EMSGSIZE) {
        log_debug("qmp: message over %u bytes", QMP_MAX_MESSAGE);
        conn_fail_why(c, QMP_EPROTO, "a message over %u bytes", QMP_MAX_MESSAGE);
    } else if (r < 0) {
        conn_fail(c, r);
    }
}

/* ---- connection ---- */

static void conn_fail_why(qmp_conn *c, int status, const char *fmt, ...) {
    if (c->base.dead)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof c->why, fmt, ap);
    va_end(ap);
    conn_fail(c, status);
}

/* The base's on_fail: says what broke the connection unless the caller
 * did (conn_fail_why). */
static void on_fail(qmp__conn *b, int status) {
    qmp_conn *c = conn_of(b);
    if (c->why[0])
        return;
    const char *when = !b->connected                ? "connecting"
                       : c->state == ST_GREETING    ? "waiting for the greeting"
                       : c->state == ST_NEGOTIATING ? "negotiating capabilities"
                                                    : NULL;
    const char *what = status == QMP_EDISCONNECTED ? "the peer closed the connection"
                       : status == QMP_ETIMEDOUT   ? "no handshake in time"
                                                   : strerror(-status);
    snprintf(c->why, sizeof c->why, "%s%s%s", what, when ? " while " : "", when ? when : "");
}

static void on_disconnect(qmp__conn *b, int status) {
    qmp_conn *c = conn_of(b);
    if (c->opts.on_disconnect)
        c->opts.on_disconnect(c, status, c->opts.userdata);
}

static void on_data(qmp__conn *b, const char *buf, size_t len) {
    qmp__feed(conn_of(b), buf, len);
}

/* The handshake deadline runs from connect/open. */
static int on_start(qmp__conn *b) {
    qmp_conn *c = conn_of(b);
    if (!c->opts.handshake_timeout_ms)
        return 0;
    uint64_t deadline = qmp__io_now(&b->io) + c->opts.handshake_timeout_ms;
    int r = qmp__timeq_push(&b->timeq, &c->handshake, deadline);
    if (r < 0)
        return r;
    qmp__conn_rearm(b);
    return 0;
}

static void init(qmp__conn *b, const void *opts) {
    qmp_conn *c = conn_of(b);
    if (opts)
        c->opts = *(const qmp_options *)opts;
    qmp__tnode_init(&c->handshake);
    c->handshake.fire = handshake_expired;
    qmp__tnode_init(&c->hold);
    c->hold.fire = hold_over;
}

static void on_free(qmp__conn *b) {
    json_decref(conn_of(b)->greeting);
}

static const qmp__conn_ops conn_ops = {
    .size = sizeof(qmp_conn),
    .max_message = QMP_MAX_MESSAGE,
    .by_id = true,
    .init = init,
    .on_start = on_start,
    .on_data = on_data,
    .on_fail = on_fail,
    .on_disconnect = on_disconnect,
    .on_free = on_free,
};

int qmp_connect(uv_loop_t *loop, const char *path, const qmp_options *opts, qmp_conn **ret_conn) {
    qmp__conn *b;
    int r = ret_conn ? qmp__conn_start(loop, &conn_ops, opts, true, path, -1, &b) : -EINVAL;
    if (r == 0)
        *ret_conn = conn_of(b);
    return r;
}

int qmp_open_fd(uv_loop_t *loop, int fd, const qmp_options *opts, qmp_conn **ret_conn) {
    qmp__conn *b;
    int r = ret_conn ? qmp__conn_start(loop, &conn_ops, opts, false, NULL, fd, &b) : -EINVAL;
    if (r == 0)
        *ret_conn = conn_of(b);
    return r;
}

void qmp_close(qmp_conn *c) {
    if (c)
        qmp__conn_close(&c->base);
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
    return c && !c->base.dead && c->state == ST_READY;
}

/* ---- helpers ---- */

static void dispatch_status(qmp__conn *b, qmp__req *p, int status, json_t *result, const qmp_error *err) {
    qmp_conn *c = conn_of(b);
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

static void dispatch_cpus(qmp__conn *b, qmp__req *p, int status, json_t *result, const qmp_error *err) {
    qmp_conn *c = conn_of(b);
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

static bool block_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > QMP_BLOCK_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\')
            return false;
    return true;
}

/* The backend's name: node-name, else device, else qdev (NULL: none usable). */
static const char *block_name(json_t *e) {
    static const char *const keys[] = {"node-name", "device", "qdev"};
    for (size_t k = 0; k < QV_ARRAY_SIZE(keys); k++) {
        const char *v = json_string_value(json_object_get(e, keys[k]));
        if (v && v[0])
            return block_name_ok(v) ? v : NULL;
    }
    return NULL;
}

static int counter(json_t *stats, const char *key, uint64_t *ret) {
    json_t *v = json_object_get(stats, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return QMP_EBADREPLY;
    *ret = (uint64_t)json_integer_value(v);
    return 0;
}

int qmp__parse_blockstats(json_t *result, qmp_blockstats *v, size_t *ret_n) {
    if (!json_is_array(result) || json_array_size(result) > QMP_BLOCKSTATS_MAX)
        return QMP_EBADREPLY;
    size_t n = json_array_size(result);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(result, i);
        json_t *st = json_object_get(e, "stats");
        qmp_blockstats *b = &v[i];
        b->device = block_name(e);
        if (!b->device || !json_is_object(st) || counter(st, "rd_bytes", &b->rd_bytes) < 0 ||
            counter(st, "wr_bytes", &b->wr_bytes) < 0 || counter(st, "rd_operations", &b->rd_operations) < 0 ||
            counter(st, "wr_operations", &b->wr_operations) < 0)
            return QMP_EBADREPLY;
    }
    *ret_n = n;
    return 0;
}

static void dispatch_blockstats(qmp__conn *b, qmp__req *p, int status, json_t *result, const qmp_error *err) {
    qmp_conn *c = conn_of(b);
    qmp_blockstats_cb cb = (qmp_blockstats_cb)p->cb;
    c->n_fast--;
    if (!cb)
        return;
    if (status == 0) {
        qmp_blockstats v[QMP_BLOCKSTATS_MAX];
        size_t n = 0;
        status = qmp__parse_blockstats(result, v, &n);
        if (status == 0) {
            cb(c, 0, v, n, NULL, p->userdata);
            return;
        }
    }
    cb(c, status, NULL, 0, err, p->userdata);
}

int qmp_query_blockstats(qmp_conn *c, uint64_t timeout_ms, qmp_blockstats_cb cb, void *userdata) {
    qmp__req *p;
    int r = send_command_req(c, "query-blockstats", NULL, timeout_ms, dispatch_blockstats, (qmp__fn)cb, userdata, &p);
    if (r == 0) {
        p->fast = true;
        c->n_fast++;
    }
    return r;
}

/* query-blockstats' reply without jansson (scan.c), when it has the plain
 * shape QEMU writes: true when it completed the request. */
static bool fast_blockstats(qmp_conn *c, qmp__req *p, const char *value, size_t len) {
    qmp_blockstats v[QMP_BLOCKSTATS_MAX];
    char names[QMP_BLOCKSTATS_MAX][QMP_BLOCK_NAME_MAX + 1];
    size_t n;
    if (qmp__scan_blockstats(value, len, v, names, &n) < 0)
        return false;
    qmp_blockstats_cb cb = (qmp_blockstats_cb)p->cb;
    void *userdata = p->userdata;
    c->n_fast--;
    qmp__conn_discard(&c->base, p); /* as a completion: off the table and the deadline heap */
    if (cb)
        cb(c, 0, v, n, NULL, userdata);
    return true;
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
