/* libFuzzer target for the QMP and guest-agent receive paths: framing
 * (linebuf), JSON parsing, message classification, id matching, the agent's
 * 0xFF resynchronisation and the helpers' reply parsers.
 *
 * Input: byte 0 selects the client and options, byte 1 the read chunking,
 * the rest is what the peer "sent".  The rest is also given to the
 * query-blockstats fast path (scan.c) and to jansson, which must agree
 * wherever the fast path answers, and, parsed as a result, to the checks
 * of the agent's exec and file replies (qga-guest.c), whose accepted
 * lengths must be what the base64 decoder gives.  Each run builds a fresh loop and
 * client on a socketpair, so nothing carries over between inputs. */
#include "qmp/qmp-internal.h"

#include "base64.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct state {
    void *conn;
    bool close_in_callback;
    int calls;
} state;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void qmp_close_maybe(state *s, qmp_conn *c) {
    s->calls++;
    if (s->close_in_callback && s->calls == 2)
        qmp_close(c);
}

static void q_ready(qmp_conn *c, void *ud) {
    qmp_close_maybe(ud, c);
}
static void q_event(qmp_conn *c, const char *name, json_t *data, const qmp_timestamp *ts, void *ud) {
    (void)name;
    (void)data;
    (void)ts;
    qmp_close_maybe(ud, c);
}
static void q_disconnect(qmp_conn *c, int status, void *ud) {
    (void)status;
    qmp_close_maybe(ud, c);
}
static void q_reply(qmp_conn *c, int status, json_t *result, const qmp_error *err, void *ud) {
    (void)status;
    (void)result;
    (void)err;
    qmp_close_maybe(ud, c);
}
static void q_status(qmp_conn *c, int status, const qmp_run_status *st, const qmp_error *err, void *ud) {
    (void)status;
    (void)st;
    (void)err;
    qmp_close_maybe(ud, c);
}
static void q_cpus(qmp_conn *c, int status, const qmp_vcpu *v, size_t n, const qmp_error *err, void *ud) {
    (void)status;
    (void)err;
    for (size_t i = 0; i < n; i++)
        if (v[i].thread_id <= 0)
            abort();
    qmp_close_maybe(ud, c);
}

static void q_blockstats(qmp_conn *c, int status, const qmp_blockstats *v, size_t n, const qmp_error *err,
                         void *ud) {
    (void)status;
    (void)err;
    /* qmp.h's promise: at most QMP_BLOCKSTATS_MAX, each named by printable
     * ASCII without space, quote or backslash */
    if (n > QMP_BLOCKSTATS_MAX)
        abort();
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(v[i].device);
        if (len == 0 || len > QMP_BLOCK_NAME_MAX)
            abort();
        for (size_t k = 0; k < len; k++)
            if (v[i].device[k] <= ' ' || v[i].device[k] > '~' || v[i].device[k] == '"' || v[i].device[k] == '\\')
                abort();
    }
    qmp_close_maybe(ud, c);
}

/* The fast path (scan.c) against the ordinary way, on the raw input: where
 * the scanner answers, jansson and the typed helper must say the same. */
static void differential(const uint8_t *data, size_t size) {
    qmp_blockstats fv[QMP_BLOCKSTATS_MAX], sv[QMP_BLOCKSTATS_MAX];
    char names[QMP_BLOCKSTATS_MAX][QMP_BLOCK_NAME_MAX + 1];
    size_t fn, sn;
    const char *value;
    size_t vlen;
    uint64_t id;
    if (qmp__scan_reply((const char *)data, size, &value, &vlen, &id) == 0) {
        json_t *msg = json_loadb((const char *)data, size, 0, NULL);
        json_t *jid = json_object_get(msg, "id");
        if (!json_is_object(msg) || json_object_size(msg) != 2 || !json_is_integer(jid) ||
            (uint64_t)json_integer_value(jid) != id || !json_object_get(msg, "return"))
            abort();
        json_decref(msg);
    } else {
        value = (const char *)data;
        vlen = size;
    }
    if (qmp__scan_blockstats(value, vlen, fv, names, &fn) < 0)
        return;
    json_t *j = json_loadb(value, vlen, 0, NULL);
    if (!j || qmp__parse_blockstats(j, sv, &sn) != 0 || sn != fn)
        abort();
    for (size_t i = 0; i < fn; i++)
        if (strcmp(fv[i].device, sv[i].device) != 0 || fv[i].rd_bytes != sv[i].rd_bytes ||
            fv[i].wr_bytes != sv[i].wr_bytes || fv[i].rd_operations != sv[i].rd_operations ||
            fv[i].wr_operations != sv[i].wr_operations)
            abort();
    json_decref(j);
}

static void g_close_maybe(state *s, qga_conn *c) {
    s->calls++;
    if (s->close_in_callback && s->calls == 2)
        qga_close(c);
}
static void g_reply(qga_conn *c, int status, json_t *result, const qmp_error *err, void *ud) {
    (void)status;
    (void)result;
    (void)err;
    g_close_maybe(ud, c);
}
static void g_info(qga_conn *c, int status, const char *version, json_t *result, const qmp_error *err, void *ud) {
    (void)status;
    (void)version;
    (void)result;
    (void)err;
    g_close_maybe(ud, c);
}
static void g_ifaces(qga_conn *c, int status, const qga_interface *ifs, size_t n, const qmp_error *err,
                     void *ud) {
    (void)status;
    (void)err;
    /* qga.h's promise: every address handed on parses, prefixes in range */
    for (size_t i = 0; i < n; i++) {
        if (!ifs[i].name)
            abort();
        for (size_t a = 0; a < ifs[i].n_addrs; a++) {
            const qga_ip_address *ad = &ifs[i].addrs[a];
            unsigned char bin[16];
            if ((ad->family != AF_INET && ad->family != AF_INET6) || inet_pton(ad->family, ad->address, bin) != 1 ||
                ad->prefix > (ad->family == AF_INET ? 32u : 128u))
                abort();
        }
    }
    g_close_maybe(ud, c);
}
static void g_disconnect(qga_conn *c, int status, void *ud) {
    (void)status;
    g_close_maybe(ud, c);
}

/* Feeds the input in chunks whose sizes come from a small PRNG. */
static void feed_all(void (*feed)(void *, const char *, size_t), void *conn, const uint8_t *data, size_t size,
                     uint8_t chunking) {
    uint32_t x = 2463534242u ^ chunking;
    while (size > 0) {
        size_t n = size;
        if (chunking) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            n = 1 + x % chunking;
            if (n > size)
                n = size;
        }
        feed(conn, (const char *)data, n);
        data += n;
        size -= n;
    }
}

static void feed_qmp(void *c, const char *b, size_t n) {
    qmp__feed(c, b, n);
}
static void feed_qga(void *c, const char *b, size_t n) {
    qga__feed(c, b, n);
}

/* The checks of guest-exec, guest-exec-status and guest-file-* replies
 * (qga-guest.c) on the raw input as a result, and what they let through
 * against the decoder: a length they accepted is the length decoded. */
static void decodes_as_checked(const char *b64, size_t b64_len, size_t len) {
    if (!b64)
        return;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    size_t got = SIZE_MAX;
    if (qv_base64_decode(b64, b64_len, buf, len, &got) != 0 || got != len)
        abort();
    free(buf);
}

static void guest_replies(const uint8_t *data, size_t size) {
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!j)
        return;
    int64_t id;
    if (qga_parse_exec(j, &id) == 0 && (id <= 0 || id > INT32_MAX))
        abort();
    if (qga_parse_file_open(j, &id) == 0 && id <= 0)
        abort();
    qga_exec_status st;
    if (qga_parse_exec_status(j, &st) == 0) {
        if (st.out.len > QGA_EXEC_MAX_OUTPUT || st.err.len > QGA_EXEC_MAX_OUTPUT)
            abort();
        if (st.exited && (st.exitcode >= 0) == (st.signal >= 0))
            abort();
        decodes_as_checked(st.out.b64, st.out.b64_len, st.out.len);
        decodes_as_checked(st.err.b64, st.err.b64_len, st.err.len);
    }
    qga_file_chunk ch;
    size_t asked = 1u << 16;
    if (qga_parse_file_read(j, asked, &ch) == 0) {
        if (ch.count > asked)
            abort();
        decodes_as_checked(ch.b64, ch.b64_len, ch.count);
    }
    size_t n;
    if (qga_parse_file_write(j, 4096, &n) == 0 && n > 4096)
        abort();
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    uint8_t mode = data[0], chunking = data[1];
    data += 2;
    size -= 2;
    differential(data, size);
    guest_replies(data, size);

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        abort();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    state s = {.close_in_callback = mode & 2};

    /* Ids are deterministic: QMP commands get 1..4 and qmp_capabilities 5;
     * the agent's ping is 1, its sync 2 (id 42), then 3, 4, 5. */
    if (!(mode & 1)) {
        qmp_options o = {q_ready, q_event, q_disconnect, &s, 0};
        qmp_conn *c;
        if (qmp_open_fd(&loop, sv[0], &o, &c) != 0)
            abort();
        qmp_send(c, "a", NULL, 0, q_reply, &s);
        qmp_query_status(c, 60000, q_status, &s);
        qmp_query_cpus_fast(c, 0, q_cpus, &s);
        qmp_send(c, "b", NULL, 30000, q_reply, &s);
        if (mode & 4) /* id 5 (qmp_capabilities then 6): its replies may take the fast path */
            qmp_query_blockstats(c, 0, q_blockstats, &s);
        feed_all(feed_qmp, c, data, size, chunking);
        qmp_close(c);
    } else {
        qga_options o = {g_disconnect, &s};
        qga_conn *c;
        if (qga_open_fd(&loop, sv[0], &o, &c) != 0)
            abort();
        qga__set_sync_id(c, 42);
        qga_ping(c, 0, g_reply, &s);
        qga_info(c, 60000, g_info, &s);
        qga_network_get_interfaces(c, 0, g_ifaces, &s);
        if (mode & 4)
            qga_shutdown(c, NULL, 0, g_reply, &s);
        qga_send(c, "guest-x", NULL, 0, g_reply, &s);
        feed_all(feed_qga, c, data, size, chunking);
        qga_close(c);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        abort();
    close(sv[1]);
    return 0;
}
