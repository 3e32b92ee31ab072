/* Guest-agent client.  See qga.h for the contract and docs/qmp.md for the
 * design.
 *
 * Requests form one FIFO; the head is in flight whenever `phase` is not
 * idle.  The receive side is a small state machine over the byte stream:
 *
 *   RX_SKIP    discard bytes up to a 0xFF marker (after which a reply to
 *              some guest-sync-delimited follows)
 *   RX_MARKED  the next line must be the reply to our sync; a stale one
 *              sends us back to RX_SKIP
 *   RX_NORMAL  synchronised: the next reply belongs to the head request
 *
 * Lines are handed to the shared linebuf one at a time so that a change of
 * state takes effect at the exact byte where the line ended. */
#include "qmp-internal.h"

#include "cleanup.h"
#include "linebuf.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct request request;
typedef void (*request_dispatch)(qga_conn *c, request *r, int status, json_t *result, const qmp_error *err);

struct request {
    uint64_t id;
    qmp__tnode tnode;
    request *prev, *next;
    char *line; /* serialised command, until written */
    size_t line_len;
    bool no_reply; /* guest-shutdown: done once written */
    request_dispatch dispatch;
    qmp__fn cb;
    void *userdata;
};

typedef enum phase {
    PH_IDLE,
    PH_SYNC,  /* guest-sync-delimited in flight for the head request */
    PH_CMD,   /* the head request's command in flight */
    PH_WRITE, /* the head request (no reply) is being written */
} phase;

typedef enum rx_mode {
    RX_NORMAL,
    RX_SKIP,
    RX_MARKED,
} rx_mode;

struct qga_conn {
    qmp__io io;
    qga_options opts;
    bool connected; /* the stream is usable (connect finished) */
    bool dead;      /* failed or closed */
    bool closed;    /* qga_close() was called */
    bool disconnect_fired;
    int deferred_fail; /* a write failed where no callback may run */
    qv_linebuf lb;
    rx_mode rx;
    phase phase;
    bool synced;
    uint64_t sync_id;
    uint64_t fixed_sync_id;
    uint64_t next_id;
    request *head, *tail;
    qmp__timeq timeq;
};

static void conn_fail(qga_conn *c, int status);

/* ---- queue ---- */

static int request_link(qga_conn *c, request *r, uint64_t deadline) {
    if (deadline) {
        int e = qmp__timeq_push(&c->timeq, &r->tnode, deadline);
        if (e < 0)
            return e;
    }
    r->prev = c->tail;
    r->next = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    return 0;
}

static void timer_rearm(qga_conn *c);

static void request_unlink(qga_conn *c, request *r) {
    qmp__timeq_remove(&c->timeq, &r->tnode);
    timer_rearm(c); /* an answered command leaves no wake-up behind */
    if (r->prev)
        r->prev->next = r->next;
    else
        c->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        c->tail = r->prev;
}

static void request_complete(qga_conn *c, request *r, int status, json_t *result, const qmp_error *err) {
    r->dispatch(c, r, status, result, err);
    free(r->line);
    free(r);
}

/* Completes the head request, which is in flight. */
static void complete_head(qga_conn *c, int status, json_t *result, const qmp_error *err) {
    request *r = c->head;
    request_unlink(c, r);
    c->phase = PH_IDLE;
    request_complete(c, r, status, result, err);
}

static void fail_all(qga_conn *c, int status) {
    request *r;
    while ((r = c->head)) {
        request_unlink(c, r);
        request_complete(c, r, status, NULL, NULL);
    }
}

static void timer_rearm(qga_conn *c) {
    if (c->deferred_fail) {
        qmp__io_timer_at(&c->io, 1); /* in the past: fires on the next loop pass */
        return;
    }
    qmp__tnode *top = qmp__timeq_top(&c->timeq);
    qmp__io_timer_at(&c->io, top ? top->deadline : 0);
}

/* A write failed synchronously.  The caller may be qga_send(), where no
 * callback may run, so the failure is reported from the timer. */
static void defer_fail(qga_conn *c, int status) {
    if (!c->deferred_fail)
        c->deferred_fail = status;
    timer_rearm(c);
}

/* Forgets the stream position: everything up to the next 0xFF marker is
 * stale. */
static void desync(qga_conn *c) {
    c->synced = false;
    c->rx = RX_SKIP;
    qv_linebuf_reset(&c->lb);
}

/* ---- sending ---- */

static void write_done(qmp__io *io, int status, uint64_t tag);

static int start_sync(qga_conn *c) {
    c->sync_id = c->fixed_sync_id ? c->fixed_sync_id : qmp__random_id();
    json_t *args = json_pack("{sI}", "id", (json_int_t)c->sync_id);
    if (!args)
        return -ENOMEM;
    char *line;
    size_t len;
    int r = qmp__build_command("guest-sync-delimited", args, c->next_id++, &line, &len);
    json_decref(args);
    if (r < 0)
        return r;
    /* Everything the agent sent before its marker is stale; the leading
     * 0xFF of ours flushes whatever a previous client left half-written in
     * the agent's parser. */
    desync(c);
    c->phase = PH_SYNC;
    return qmp__io_write_line(&c->io, true, line, len, NULL, 0);
}

/* Starts the next exchange if nothing is in flight.  Never calls a
 * completion callback itself. */
static void pump(qga_conn *c) {
    if (c->dead || !c->connected || c->phase != PH_IDLE || c->deferred_fail)
        return;
    request *r = c->head;
    if (!r) {
        c->synced = false; /* the series ended: resync before the next */
        return;
    }
    int e;
    if (!c->synced) {
        e = start_sync(c);
    } else if (r->no_reply) {
        c->phase = PH_WRITE;
        e = qmp__io_write_line(&c->io, false, TAKE_PTR(r->line), r->line_len, write_done, r->id);
    } else {
        c->phase = PH_CMD;
        e = qmp__io_write_line(&c->io, false, TAKE_PTR(r->line), r->line_len, NULL, 0);
    }
    if (e < 0)
        defer_fail(c, e);
}

static qga_conn *io_conn(qmp__io *io) {
    return qmp__container_of(io, qga_conn, io);
}

static void write_done(qmp__io *io, int status, uint64_t tag) {
    qga_conn *c = io_conn(io);
    if (c->dead || c->phase != PH_WRITE || !c->head || c->head->id != tag)
        return; /* timed out or failed meanwhile */
    /* Whatever the agent might answer (an error) is stale from now on. */
    desync(c);
    complete_head(c, status < 0 ? qmp__map_stream_error(status) : 0, NULL, NULL);
    pump(c);
}

static void dispatch_plain(qga_conn *c, request *r, int status, json_t *result, const qmp_error *err) {
    qga_reply_cb cb = (qga_reply_cb)r->cb;
    if (cb)
        cb(c, status, result, err, r->userdata);
}

static int send_request(qga_conn *c, const char *command, json_t *args, uint64_t timeout_ms, bool no_reply,
                        request_dispatch dispatch, qmp__fn cb, void *userdata) {
    if (!c || c->dead)
        return -ENOTCONN;
    _cleanup_free_ request *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    qmp__tnode_init(&r->tnode);
    r->id = c->next_id++;
    r->no_reply = no_reply;
    r->dispatch = dispatch;
    r->cb = cb;
    r->userdata = userdata;
    int e = qmp__build_command(command, args, r->id, &r->line, &r->line_len);
    if (e < 0)
        return e;
    uint64_t deadline = timeout_ms ? qmp__io_now(&c->io) + timeout_ms : 0;
    e = request_link(c, r, deadline);
    if (e < 0) {
        free(r->line);
        return e;
    }
    if (deadline && qmp__timeq_top(&c->timeq) == &r->tnode)
        timer_rearm(c);
    TAKE_PTR(r);
    pump(c);
    return 0;
}

int qga_send(qga_conn *c, const char *command, json_t *args, uint64_t timeout_ms, qga_reply_cb cb,
             void *userdata) {
    return send_request(c, command, args, timeout_ms, false, dispatch_plain, (qmp__fn)cb, userdata);
}

/* ---- receiving ---- */

/* The reply in flight cannot be trusted (garbage, oversized): fail the
 * command and resynchronise before the next. */
static void garbage(qga_conn *c) {
    desync(c);
    if (c->phase == PH_CMD) {
        complete_head(c, QMP_EPROTO, NULL, NULL);
        pump(c);
    }
}

static void on_sync_line(qga_conn *c, const char *line, size_t len) {
    json_t *msg = qmp__parse_object(line, len);
    json_t *ret = json_object_get(msg, "return");
    bool ours = c->phase == PH_SYNC && json_is_integer(ret) && json_integer_value(ret) >= 0 &&
                (uint64_t)json_integer_value(ret) == c->sync_id;
    json_decref(msg);
    if (!ours) {
        log_debug("qga: skipping a stale reply");
        c->rx = RX_SKIP;
        return;
    }
    c->rx = RX_NORMAL;
    c->synced = true;
    c->phase = PH_IDLE;
    pump(c);
}

static void on_reply_line(qga_conn *c, const char *line, size_t len) {
    json_t *msg = qmp__parse_object(line, len);
    if (!msg) {
        log_debug("qga: invalid JSON from the agent");
        garbage(c);
        return;
    }
    json_t *error = json_object_get(msg, "error");
    uint64_t id;
    bool has_id = qmp__get_id(msg, &id);
    if (c->phase != PH_CMD || (!error && !json_object_get(msg, "return")) || (has_id && id != c->head->id)) {
        log_debug("qga: dropping an unexpected message");
        json_decref(msg);
        return;
    }
    /* A reply without id is the agent's answer to input it could not
     * parse, which can only be our command. */
    qmp_error e;
    if (!error)
        complete_head(c, 0, json_object_get(msg, "return"), NULL);
    else if (qmp__parse_error(error, &e) == 0)
        complete_head(c, QMP_ECOMMAND, NULL, &e);
    else
        garbage(c);
    json_decref(msg);
    pump(c);
}

static int on_line(const char *line, size_t len, void *userdata) {
    qga_conn *c = userdata;
    if (qmp__blank(line, len))
        return 0;
    if (c->rx == RX_MARKED)
        on_sync_line(c, line, len);
    else
        on_reply_line(c, line, len);
    return 0;
}

void qga__feed(qga_conn *c, const char *buf, size_t len) {
    while (len > 0 && !c->dead) {
        if (c->rx == RX_SKIP) {
            const char *m = memchr(buf, 0xFF, len);
            if (!m)
                return;
            size_t n = (size_t)(m - buf) + 1;
            buf += n;
            len -= n;
            qv_linebuf_reset(&c->lb);
            c->rx = RX_MARKED;
            continue;
        }
        const char *nl = memchr(buf, '\n', len);
        size_t seg = nl ? (size_t)(nl - buf) + 1 : len;
        if (c->rx == RX_MARKED) {
            /* A later marker: what preceded it was not our reply. */
            const char *m = memchr(buf, 0xFF, seg);
            if (m) {
                size_t n = (size_t)(m - buf) + 1;
                buf += n;
                len -= n;
                qv_linebuf_reset(&c->lb);
                continue;
            }
        }
        int r = qv_linebuf_feed(&c->lb, buf, seg, on_line, c);
        buf += seg;
        len -= seg;
        if (r == -EMSGSIZE) {
            log_debug("qga: message over %u bytes", QMP_MAX_MESSAGE);
            garbage(c);
        } else if (r < 0) {
            conn_fail(c, r);
        }
    }
}

/* ---- connection ---- */

static void conn_fail(qga_conn *c, int status) {
    if (c->dead)
        return;
    c->dead = true;
    qmp__io_shutdown(&c->io);
    fail_all(c, status);
    if (!c->closed && !c->disconnect_fired) {
        c->disconnect_fired = true;
        if (c->opts.on_disconnect)
            c->opts.on_disconnect(c, status, c->opts.userdata);
    }
}

static void io_on_connect(qmp__io *io, int status) {
    qga_conn *c = io_conn(io);
    if (status < 0) {
        conn_fail(c, status);
        return;
    }
    int r = qmp__io_start_read(io);
    if (r < 0) {
        conn_fail(c, r);
        return;
    }
    c->connected = true;
    pump(c);
}

static void io_on_data(qmp__io *io, const char *buf, size_t len) {
    qga__feed(io_conn(io), buf, len);
}

static void io_on_error(qmp__io *io, int status) {
    conn_fail(io_conn(io), qmp__map_stream_error(status));
}

static void io_on_timer(qmp__io *io) {
    qga_conn *c = io_conn(io);
    if (c->deferred_fail) {
        conn_fail(c, c->deferred_fail);
        return;
    }
    uint64_t now = uv_now(io->loop);
    qmp__tnode *top;
    while ((top = qmp__timeq_top(&c->timeq)) && top->deadline <= now) {
        request *r = qmp__container_of(top, request, tnode);
        if (r == c->head && c->phase != PH_IDLE) {
            /* Its reply may still come: skip it by resynchronising
             * (before the callback, which may send the next command). */
            desync(c);
            complete_head(c, QMP_ETIMEDOUT, NULL, NULL);
        } else {
            request_unlink(c, r);
            request_complete(c, r, QMP_ETIMEDOUT, NULL, NULL);
        }
        if (c->dead)
            return;
    }
    pump(c);
    timer_rearm(c);
}

static void conn_free(qga_conn *c) {
    request *r;
    while ((r = c->head)) {
        request_unlink(c, r);
        free(r->line);
        free(r);
    }
    qv_linebuf_free(&c->lb);
    qmp__timeq_free(&c->timeq);
    free(c);
}

static void io_on_free(qmp__io *io) {
    conn_free(io_conn(io));
}

static const qmp__io_ops conn_io_ops = {
    .on_connect = io_on_connect,
    .on_data = io_on_data,
    .on_read_error = io_on_error,
    .on_write_error = io_on_error,
    .on_timer = io_on_timer,
    .on_free = io_on_free,
};

static int conn_new(uv_loop_t *loop, const qga_options *opts, qga_conn **ret) {
    if (!loop)
        return -EINVAL;
    qga_conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    if (opts)
        c->opts = *opts;
    c->next_id = 1;
    c->rx = RX_SKIP;
    qv_linebuf_init(&c->lb, QMP_MAX_MESSAGE);
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

static int conn_abort(qga_conn *c, int r) {
    c->dead = true;
    c->closed = true;
    qmp__io_release(&c->io);
    return r;
}

int qga_connect(uv_loop_t *loop, const char *path, const qga_options *opts, qga_conn **ret_conn) {
    if (!ret_conn)
        return -EINVAL;
    qga_conn *c;
    int r = conn_new(loop, opts, &c);
    if (r < 0)
        return r;
    r = qmp__io_connect(&c->io, path);
    if (r < 0)
        return conn_abort(c, r);
    *ret_conn = c;
    return 0;
}

int qga_open_fd(uv_loop_t *loop, int fd, const qga_options *opts, qga_conn **ret_conn) {
    if (!ret_conn)
        return -EINVAL;
    qga_conn *c;
    int r = conn_new(loop, opts, &c);
    if (r < 0)
        return r;
    r = qmp__io_open(&c->io, fd);
    if (r < 0)
        return conn_abort(c, r);
    r = qmp__io_start_read(&c->io);
    if (r < 0)
        return conn_abort(c, r); /* closes fd with the handle */
    c->connected = true;
    *ret_conn = c;
    return 0;
}

void qga_close(qga_conn *c) {
    if (!c || c->closed)
        return;
    c->closed = true;
    if (!c->dead) {
        c->dead = true;
        qmp__io_shutdown(&c->io);
    }
    fail_all(c, QMP_ECANCELED);
    qmp__io_release(&c->io);
}

void qga__set_sync_id(qga_conn *c, uint64_t id) {
    c->fixed_sync_id = id;
}

/* ---- helpers ---- */

int qga_ping(qga_conn *c, uint64_t timeout_ms, qga_reply_cb cb, void *userdata) {
    return qga_send(c, "guest-ping", NULL, timeout_ms, cb, userdata);
}

static void dispatch_info(qga_conn *c, request *r, int status, json_t *result, const qmp_error *err) {
    qga_info_cb cb = (qga_info_cb)r->cb;
    if (!cb)
        return;
    if (status == 0) {
        json_t *version = json_object_get(result, "version");
        if (json_is_string(version)) {
            cb(c, 0, json_string_value(version), result, NULL, r->userdata);
            return;
        }
        status = QMP_EBADREPLY;
    }
    cb(c, status, NULL, NULL, err, r->userdata);
}

int qga_info(qga_conn *c, uint64_t timeout_ms, qga_info_cb cb, void *userdata) {
    return send_request(c, "guest-info", NULL, timeout_ms, false, dispatch_info, (qmp__fn)cb, userdata);
}

typedef struct iface_list {
    qga_interface *ifaces;
    qga_ip_address *addrs;
    size_t n_ifaces;
} iface_list;

static void iface_list_done(iface_list *l) {
    free(l->ifaces);
    free(l->addrs);
}

static int parse_address(json_t *a, qga_ip_address *ret) {
    json_t *type = json_object_get(a, "ip-address-type");
    json_t *addr = json_object_get(a, "ip-address");
    json_t *prefix = json_object_get(a, "prefix");
    if (!json_is_string(type) || !json_is_string(addr) || !json_is_integer(prefix))
        return QMP_EBADREPLY;
    int family;
    json_int_t max;
    if (strcmp(json_string_value(type), "ipv4") == 0) {
        family = AF_INET;
        max = 32;
    } else if (strcmp(json_string_value(type), "ipv6") == 0) {
        family = AF_INET6;
        max = 128;
    } else {
        return QMP_EBADREPLY;
    }
    json_int_t p = json_integer_value(prefix);
    if (p < 0 || p > max)
        return QMP_EBADREPLY;
    /* the agent's text never goes further: what it means, written by us */
    unsigned char bin[sizeof(struct in6_addr)];
    if (inet_pton(family, json_string_value(addr), bin) != 1)
        return QMP_EBADREPLY;
    *ret = (qga_ip_address){.family = family, .prefix = (unsigned)p};
    _Static_assert(sizeof ret->address >= INET6_ADDRSTRLEN, "room for any address");
    if (!inet_ntop(family, bin, ret->address, sizeof ret->address))
        return QMP_EBADREPLY;
    return 0;
}

/* Printable ASCII (spaces allowed: "Ethernet 2"), 1..QGA_MAX_IFNAME bytes. */
static bool ifname_ok(const char *s, size_t len) {
    if (len == 0 || len > QGA_MAX_IFNAME || strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

/* "52:54:00:12:34:56": hex octets and colons (up to 20 octets, InfiniBand's). */
static bool mac_ok(const char *s, size_t len) {
    if (len == 0 || len > 20 * 3 - 1 || len % 3 != 2 || strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (i % 3 == 2 ? s[i] != ':' : !isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* Parses the reply into l; strings point into result. */
static int parse_interfaces(json_t *result, iface_list *l) {
    if (!json_is_array(result))
        return QMP_EBADREPLY;
    size_t n = json_array_size(result), n_addrs = 0;
    if (n > QGA_MAX_INTERFACES)
        return QMP_EBADREPLY;
    for (size_t i = 0; i < n; i++) {
        json_t *ips = json_object_get(json_array_get(result, i), "ip-addresses");
        if (ips && (!json_is_array(ips) || json_array_size(ips) > QGA_MAX_ADDRESSES))
            return QMP_EBADREPLY;
        n_addrs += json_array_size(ips);
    }
    l->ifaces = calloc(n ? n : 1, sizeof *l->ifaces);
    l->addrs = calloc(n_addrs ? n_addrs : 1, sizeof *l->addrs);
    if (!l->ifaces || !l->addrs)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(result, i);
        json_t *name = json_object_get(e, "name");
        json_t *mac = json_object_get(e, "hardware-address");
        json_t *ips = json_object_get(e, "ip-addresses");
        if (!json_is_string(name) || !ifname_ok(json_string_value(name), json_string_length(name)))
            return QMP_EBADREPLY;
        if (mac && (!json_is_string(mac) || !mac_ok(json_string_value(mac), json_string_length(mac))))
            return QMP_EBADREPLY;
        qga_interface *it = &l->ifaces[i];
        *it = (qga_interface){.name = json_string_value(name), .mac = json_string_value(mac), .addrs = l->addrs + k};
        for (size_t j = 0; j < json_array_size(ips); j++) {
            int r = parse_address(json_array_get(ips, j), &l->addrs[k]);
            if (r < 0)
                return r;
            k++;
            it->n_addrs++;
        }
    }
    l->n_ifaces = n;
    return 0;
}

static void dispatch_interfaces(qga_conn *c, request *r, int status, json_t *result, const qmp_error *err) {
    qga_interfaces_cb cb = (qga_interfaces_cb)r->cb;
    if (!cb)
        return;
    if (status == 0) {
        iface_list l = {0};
        status = parse_interfaces(result, &l);
        if (status == 0)
            cb(c, 0, l.ifaces, l.n_ifaces, NULL, r->userdata);
        iface_list_done(&l);
        if (status == 0)
            return;
    }
    cb(c, status, NULL, 0, err, r->userdata);
}

int qga_network_get_interfaces(qga_conn *c, uint64_t timeout_ms, qga_interfaces_cb cb, void *userdata) {
    return send_request(c, "guest-network-get-interfaces", NULL, timeout_ms, false, dispatch_interfaces,
                        (qmp__fn)cb, userdata);
}

int qga_shutdown(qga_conn *c, const char *mode, uint64_t timeout_ms, qga_reply_cb cb, void *userdata) {
    json_t *args = NULL;
    if (mode) {
        args = json_pack("{ss}", "mode", mode);
        if (!args)
            return -EINVAL;
    }
    int r = send_request(c, "guest-shutdown", args, timeout_ms, true, dispatch_plain, (qmp__fn)cb, userdata);
    json_decref(args);
    return r;
}
