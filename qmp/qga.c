/* Guest-agent client.  See qga.h for the contract and docs/qmp.md for the
 * design.
 *
 * The connection base (io.h) keeps the requests (one FIFO with deadlines)
 * and runs the life cycle; this file is the agent's protocol.  The head
 * request is in flight whenever `phase` is not idle.  The receive side is a
 * small state machine over the byte stream:
 *
 *   RX_SKIP    discard bytes up to a 0xFF marker (after which a reply to
 *              some guest-sync-delimited follows)
 *   RX_MARKED  the next line must be the reply to our sync; a stale one
 *              sends us back to RX_SKIP
 *   RX_NORMAL  synchronised: the next reply belongs to the head request
 *
 * Lines are handed to the base's linebuf one at a time so that a change of
 * state takes effect at the exact byte where the line ended. */
#include "qmp-internal.h"

#include "cleanup.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
    qmp__conn base; /* first: the base allocates and frees the struct */
    qga_options opts;
    rx_mode rx;
    phase phase;
    bool synced;
    uint64_t sync_id;
    uint64_t fixed_sync_id;
};

_Static_assert(offsetof(qga_conn, base) == 0, "the base comes first");

static qga_conn *conn_of(qmp__conn *b) {
    return qmp__container_of(b, qga_conn, base);
}

/* ---- queue ---- */

/* Completes the head request, which is in flight. */
static void complete_head(qga_conn *c, int status, json_t *result, const qmp_error *err) {
    c->phase = PH_IDLE;
    c->base.lb.max_line = QMP_MAX_MESSAGE;
    qmp__conn_complete(&c->base, c->base.head, status, result, err);
}

/* Forgets the stream position: everything up to the next 0xFF marker is
 * stale. */
static void desync(qga_conn *c) {
    c->synced = false;
    c->rx = RX_SKIP;
    qv_linebuf_reset(&c->base.lb);
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
    int r = qmp__build_command("guest-sync-delimited", args, c->base.next_id++, &line, &len);
    json_decref(args);
    if (r < 0)
        return r;
    /* Everything the agent sent before its marker is stale; the leading
     * 0xFF of ours flushes whatever a previous client left half-written in
     * the agent's parser. */
    desync(c);
    c->phase = PH_SYNC;
    return qmp__io_write_line(&c->base.io, true, line, len, NULL, 0);
}

/* Starts the next exchange if nothing is in flight.  Never calls a
 * completion callback itself: a failed write is reported from the timer
 * (qmp__conn_defer_fail), since the caller may be qga_send(). */
static void pump(qga_conn *c) {
    if (c->base.dead || !c->base.connected || c->phase != PH_IDLE || c->base.deferred_fail)
        return;
    qmp__req *r = c->base.head;
    if (!r) {
        c->synced = false; /* the series ended: resync before the next */
        return;
    }
    int e;
    if (!c->synced) {
        e = start_sync(c);
    } else if (r->no_reply) {
        c->phase = PH_WRITE;
        e = qmp__io_write_line(&c->base.io, false, TAKE_PTR(r->line), r->line_len, write_done, r->id);
    } else {
        c->phase = PH_CMD;
        if (r->large)
            c->base.lb.max_line = QGA_MAX_MESSAGE; /* back to QMP_MAX_MESSAGE when it completes */
        e = qmp__io_write_line(&c->base.io, false, TAKE_PTR(r->line), r->line_len, NULL, 0);
    }
    if (e < 0)
        qmp__conn_defer_fail(&c->base, e);
}

static void write_done(qmp__io *io, int status, uint64_t tag) {
    qga_conn *c = conn_of(qmp__container_of(io, qmp__conn, io));
    if (c->base.dead || c->phase != PH_WRITE || !c->base.head || c->base.head->id != tag)
        return; /* timed out or failed meanwhile */
    /* Whatever the agent might answer (an error) is stale from now on. */
    desync(c);
    complete_head(c, status < 0 ? qmp__map_stream_error(status) : 0, NULL, NULL);
    pump(c);
}

static void dispatch_plain(qmp__conn *b, qmp__req *r, int status, json_t *result, const qmp_error *err) {
    qga_reply_cb cb = (qga_reply_cb)r->cb;
    if (cb)
        cb(conn_of(b), status, result, err, r->userdata);
}

static int send_request(qga_conn *c, const char *command, json_t *args, uint64_t timeout_ms, bool no_reply,
                        qmp__req_dispatch dispatch, qmp__fn cb, void *userdata) {
    if (!c)
        return -ENOTCONN;
    qmp__req *r;
    int e = qmp__conn_submit(&c->base, command, args, timeout_ms, dispatch, cb, userdata, &r);
    if (e < 0)
        return e;
    r->no_reply = no_reply;
    r->large = strcmp(command, "guest-exec-status") == 0 || strcmp(command, "guest-file-read") == 0;
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
    if (c->phase != PH_CMD || (!error && !json_object_get(msg, "return")) || (has_id && id != c->base.head->id)) {
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
    while (len > 0 && !c->base.dead) {
        if (c->rx == RX_SKIP) {
            const char *m = memchr(buf, 0xFF, len);
            if (!m)
                return;
            size_t n = (size_t)(m - buf) + 1;
            buf += n;
            len -= n;
            qv_linebuf_reset(&c->base.lb);
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
                qv_linebuf_reset(&c->base.lb);
                continue;
            }
        }
        int r = qv_linebuf_feed(&c->base.lb, buf, seg, on_line, c);
        buf += seg;
        len -= seg;
        if (r == -EMSGSIZE) {
            log_debug("qga: message over %zu bytes", c->base.lb.max_line);
            garbage(c);
        } else if (r < 0) {
            qmp__conn_fail(&c->base, r);
        }
    }
}

/* ---- connection ---- */

static void on_data(qmp__conn *b, const char *buf, size_t len) {
    qga__feed(conn_of(b), buf, len);
}

static void kick(qmp__conn *b) {
    pump(conn_of(b));
}

static void on_timeout(qmp__conn *b, qmp__req *r) {
    qga_conn *c = conn_of(b);
    if (r == b->head && c->phase != PH_IDLE) {
        /* Its reply may still come: skip it by resynchronising (before
         * the callback, which may send the next command). */
        desync(c);
        c->phase = PH_IDLE;
    }
}

static void on_disconnect(qmp__conn *b, int status) {
    qga_conn *c = conn_of(b);
    if (c->opts.on_disconnect)
        c->opts.on_disconnect(c, status, c->opts.userdata);
}

static void init(qmp__conn *b, const void *opts) {
    qga_conn *c = conn_of(b);
    if (opts)
        c->opts = *(const qga_options *)opts;
    c->rx = RX_SKIP;
}

static const qmp__conn_ops conn_ops = {
    .size = sizeof(qga_conn),
    .max_message = QMP_MAX_MESSAGE,
    .init = init,
    .on_data = on_data,
    .kick = kick,
    .on_timeout = on_timeout,
    .on_disconnect = on_disconnect,
};

int qga_connect(uv_loop_t *loop, const char *path, const qga_options *opts, qga_conn **ret_conn) {
    qmp__conn *b;
    int r = ret_conn ? qmp__conn_start(loop, &conn_ops, opts, true, path, -1, &b) : -EINVAL;
    if (r == 0)
        *ret_conn = conn_of(b);
    return r;
}

int qga_open_fd(uv_loop_t *loop, int fd, const qga_options *opts, qga_conn **ret_conn) {
    qmp__conn *b;
    int r = ret_conn ? qmp__conn_start(loop, &conn_ops, opts, false, NULL, fd, &b) : -EINVAL;
    if (r == 0)
        *ret_conn = conn_of(b);
    return r;
}

void qga_close(qga_conn *c) {
    if (c)
        qmp__conn_close(&c->base);
}

void qga__set_sync_id(qga_conn *c, uint64_t id) {
    c->fixed_sync_id = id;
}

/* ---- helpers ---- */

int qga_ping(qga_conn *c, uint64_t timeout_ms, qga_reply_cb cb, void *userdata) {
    return qga_send(c, "guest-ping", NULL, timeout_ms, cb, userdata);
}

static void dispatch_info(qmp__conn *b, qmp__req *r, int status, json_t *result, const qmp_error *err) {
    qga_conn *c = conn_of(b);
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

static void dispatch_interfaces(qmp__conn *b, qmp__req *r, int status, json_t *result, const qmp_error *err) {
    qga_conn *c = conn_of(b);
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
