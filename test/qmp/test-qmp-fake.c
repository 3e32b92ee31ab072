/* The QMP client against a scripted fake QEMU on a socketpair: greeting
 * variants, byte-at-a-time input, batches, interleaved events, timeouts and
 * late replies, error replies, EOF, oversize and garbage input, closing from
 * inside callbacks, and many outstanding commands. */
#include "qmptest.h"

#include "qmp/qmp-internal.h"

#include "cleanup.h"
#include "fileio.h"
#include "util.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct ctx ctx;
typedef void (*ctx_msg_cb)(ctx *x, json_t *msg);

struct ctx {
    tloop t;
    peer p;
    qmp_conn *c;
    int ready, ready_seq;
    int disconnects, disconnect_status, disconnect_seq;
    int events;
    json_t *event_log; /* [{"name","data","seconds","microseconds","seq"}] */
    bool close_in_ready, close_in_event, close_in_disconnect;
    int send_in_disconnect; /* qmp_send() result from inside on_disconnect */
    ctx_msg_cb on_msg;
};

static void on_ready(qmp_conn *c, void *ud) {
    ctx *x = ud;
    assert_ptr_equal(c, x->c);
    x->ready++;
    x->ready_seq = ++x->t.seq;
    if (x->close_in_ready)
        qmp_close(c);
}

static void on_event(qmp_conn *c, const char *name, json_t *data, const qmp_timestamp *ts, void *ud) {
    ctx *x = ud;
    assert_ptr_equal(c, x->c);
    x->events++;
    json_array_append_new(x->event_log, json_pack("{ss sO* sI sI si}", "name", name, "data", data, "seconds",
                                                  (json_int_t)ts->seconds, "microseconds",
                                                  (json_int_t)ts->microseconds, "seq", ++x->t.seq));
    if (x->close_in_event)
        qmp_close(c);
}

static void on_disconnect(qmp_conn *c, int status, void *ud) {
    ctx *x = ud;
    assert_ptr_equal(c, x->c);
    x->disconnects++;
    x->disconnect_status = status;
    x->disconnect_seq = ++x->t.seq;
    x->send_in_disconnect = qmp_send(c, "query-status", NULL, 0, NULL, NULL);
    if (x->close_in_disconnect)
        qmp_close(c);
}

static void ctx_peer_msg(peer *p, json_t *msg, int ff, void *ud) {
    (void)p;
    (void)ff;
    ctx *x = ud;
    if (x->on_msg)
        x->on_msg(x, msg);
}

static void ctx_open(ctx *x, uint64_t handshake_timeout_ms) {
    *x = (ctx){.event_log = json_array()};
    tloop_init(&x->t);
    int fd;
    peer_init(&x->p, &x->t, &fd);
    x->p.on_msg = ctx_peer_msg;
    x->p.userdata = x;
    qmp_options o = {
        .on_ready = on_ready,
        .on_event = on_event,
        .on_disconnect = on_disconnect,
        .userdata = x,
        .handshake_timeout_ms = handshake_timeout_ms,
    };
    assert_int_equal(qmp_open_fd(&x->t.loop, fd, &o, &x->c), 0);
}

/* Greeting + capabilities; afterwards the peer has received 1 message. */
static void ctx_handshake(ctx *x) {
    peer_writes(&x->p, QMP_TEST_GREETING);
    assert_true(tloop_wait(&x->t, &x->ready, 1, 2000));
    assert_string_equal(peer_command(&x->p, 0), "qmp_capabilities");
    assert_true(qmp_is_ready(x->c));
}

static void ctx_finish(ctx *x) {
    qmp_close(x->c);
    peer_close(&x->p);
    tloop_finish(&x->t);
    json_decref(x->event_log);
}

static void wait_received(ctx *x, int n) {
    assert_true(tloop_wait(&x->t, &x->p.n_received, n, 2000));
}

static void wait_reply(ctx *x, reply *r) {
    assert_true(tloop_wait(&x->t, &r->calls, 1, 2000));
}

/* ---- greeting ---- */

static void caps_error_msg(ctx *x, json_t *msg) {
    const char *cmd = json_string_value(json_object_get(msg, "execute"));
    if (strcmp(cmd, "qmp_capabilities") == 0)
        peer_writef(&x->p,
                    "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}, \"id\": %lld}\n",
                    (long long)json_integer_value(json_object_get(msg, "id")));
}

static void test_greeting_variants(void **state) {
    (void)state;
    static const struct {
        const char *input;
        int expect; /* 0: ready; otherwise the disconnect status */
        int major, minor, micro; /* -1: no version */
        int events_before;
        bool caps_error;
    } v[] = {
        {QMP_TEST_GREETING, 0, 7, 2, 22, 0, false},
        /* No capabilities, no package, \n only. */
        {"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 9}}}}\n", 0, 9, 0, 0, 0,
         false},
        /* Unknown members and capabilities are fine. */
        {"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 1, \"minor\": 2, \"major\": 8}, \"x\": 1}, "
         "\"capabilities\": [\"oob\", \"future-cap\"], \"new\": {}}, \"extra\": true}\r\n",
         0, 8, 2, 1, 0, false},
        /* No version at all. */
        {"{\"QMP\": {}}\n", 0, -1, 0, 0, 0, false},
        /* Blank lines and an event before the greeting. */
        {"\r\n  \n{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 5, \"microseconds\": 6}}\n" QMP_TEST_GREETING,
         0, 7, 2, 22, 1, false},
        /* A reply before the greeting is dropped (nothing was sent). */
        {"{\"return\": {}, \"id\": 1}\n" QMP_TEST_GREETING, 0, 7, 2, 22, 0, false},
        /* Malformed greetings and other garbage. */
        {"{\"QMP\": 1}\n", QMP_EPROTO, 0, 0, 0, 0, false},
        {"[\"QMP\"]\n", QMP_EPROTO, 0, 0, 0, 0, false},
        {"QMP ready\n", QMP_EPROTO, 0, 0, 0, 0, false},
        /* A second greeting. */
        {QMP_TEST_GREETING QMP_TEST_GREETING, QMP_EPROTO, 0, 0, 0, 0, false},
        /* qmp_capabilities refused. */
        {QMP_TEST_GREETING, QMP_EPROTO, 0, 0, 0, 0, true},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(v); i++) {
        ctx x;
        ctx_open(&x, 0);
        if (v[i].caps_error) {
            x.p.auto_caps = false;
            x.on_msg = caps_error_msg;
        }
        assert_int_equal(qmp_version(x.c, NULL, NULL, NULL), -ENODATA);
        assert_null(qmp_greeting(x.c));
        /* Sent before the greeting: held until the handshake is done. */
        reply r;
        reply_init(&r, &x.t);
        assert_int_equal(qmp_send(x.c, "query-status", NULL, 0, reply_cb, &r), 0);
        peer_writes(&x.p, v[i].input);
        if (v[i].expect == 0) {
            assert_true(tloop_wait(&x.t, &x.ready, 1, 2000));
            wait_received(&x, 2);
            assert_string_equal(peer_command(&x.p, 0), "qmp_capabilities");
            assert_string_equal(peer_command(&x.p, 1), "query-status");
            assert_null(json_object_get(json_array_get(x.p.received, 0), "arguments"));
            peer_writef(&x.p, "{\"return\": {\"n\": %zu}, \"id\": %lld}\n", i, (long long)peer_id(&x.p, 1));
            wait_reply(&x, &r);
            assert_int_equal(r.status, 0);
            assert_int_equal(json_integer_value(json_object_get(r.result, "n")), (json_int_t)i);
            assert_true(r.seq > x.ready_seq);
            assert_non_null(qmp_greeting(x.c));
            int ma = -2, mi = -2, mc = -2;
            if (v[i].major < 0) {
                assert_int_equal(qmp_version(x.c, &ma, &mi, &mc), -ENODATA);
            } else {
                assert_int_equal(qmp_version(x.c, &ma, &mi, &mc), 0);
                assert_int_equal(ma, v[i].major);
                assert_int_equal(mi, v[i].minor);
                assert_int_equal(mc, v[i].micro);
            }
            assert_int_equal(x.events, v[i].events_before);
            if (v[i].events_before) {
                json_t *e = json_array_get(x.event_log, 0);
                assert_string_equal(json_string_value(json_object_get(e, "name")), "RESUME");
                assert_true(json_integer_value(json_object_get(e, "seq")) < x.ready_seq);
            }
            assert_int_equal(x.disconnects, 0);
        } else {
            assert_true(tloop_wait(&x.t, &x.disconnects, 1, 2000));
            assert_int_equal(x.disconnect_status, v[i].expect);
            assert_int_equal(x.ready, 0);
            assert_int_equal(r.calls, 1);
            assert_int_equal(r.status, v[i].expect);
            assert_true(r.seq < x.disconnect_seq);
            assert_false(qmp_is_ready(x.c));
        }
        reply_done(&r);
        ctx_finish(&x);
        assert_int_equal(r.calls, 1);
    }
}

/* During negotiation qmp_capabilities is the only command on the wire, so a
 * reply that does not carry its id (another, none, a string) breaks the
 * protocol: the handshake fails at once instead of at its timeout.  Each
 * failure also says in words what broke (qmp_failure()). */
static void test_handshake_wrong_id(void **state) {
    (void)state;
    /* the held query-status's id, one never sent, none, a string */
    static const char *const ids[] = {"\"id\": 1, ", "\"id\": 100, ", "", "\"id\": \"2\", "};
    for (size_t i = 0; i < QV_ARRAY_SIZE(ids); i++) {
        ctx x;
        ctx_open(&x, 60000);
        x.p.auto_caps = false;
        reply r;
        reply_init(&r, &x.t);
        assert_int_equal(qmp_send(x.c, "query-status", NULL, 0, reply_cb, &r), 0);
        assert_string_equal(qmp_failure(x.c), "");
        peer_writes(&x.p, QMP_TEST_GREETING);
        wait_received(&x, 1);
        assert_string_equal(peer_command(&x.p, 0), "qmp_capabilities");
        uint64_t t0 = qv_now_ms();
        assert_int_equal(peer_id(&x.p, 0), 2);
        peer_writef(&x.p, "{%s\"return\": {}}\n", ids[i]);
        assert_true(tloop_wait(&x.t, &x.disconnects, 1, 2000));
        assert_true(qv_now_ms() - t0 < 2000);
        assert_int_equal(x.disconnect_status, QMP_EPROTO);
        assert_string_equal(qmp_failure(x.c), "a reply to qmp_capabilities with a wrong id");
        assert_int_equal(x.ready, 0);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.status, QMP_EPROTO);
        reply_done(&r);
        ctx_finish(&x);
    }
}

/* What qmp_failure() says for the other ways a monitor fails. */
static void test_failure_words(void **state) {
    (void)state;
    static const struct {
        const char *input;
        int status;
        const char *words;
    } v[] = {
        {"{\"QMP\": 1}\n", QMP_EPROTO, "a malformed greeting"},
        {"{\"QMP\"\n", QMP_EPROTO, "invalid JSON (or not an object): '{\"QMP\"'"},
        {QMP_TEST_GREETING QMP_TEST_GREETING, QMP_EPROTO, "a second greeting"},
        {QMP_TEST_GREETING, QMP_EDISCONNECTED, "the peer closed the connection while negotiating capabilities"},
        {"", QMP_EDISCONNECTED, "the peer closed the connection while waiting for the greeting"},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(v); i++) {
        ctx x;
        ctx_open(&x, 0);
        x.p.auto_caps = false;
        if (v[i].input[0])
            peer_writes(&x.p, v[i].input);
        if (v[i].status == QMP_EDISCONNECTED) {
            if (v[i].input[0])
                wait_received(&x, 1);
            peer_eof(&x.p);
        }
        assert_true(tloop_wait(&x.t, &x.disconnects, 1, 2000));
        assert_int_equal(x.disconnect_status, v[i].status);
        assert_string_equal(qmp_failure(x.c), v[i].words);
        ctx_finish(&x);
    }
}

/* ---- framing ---- */

static void test_one_byte_at_a_time(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    x.p.auto_caps = false;
    reply r;
    reply_init(&r, &x.t);
    assert_int_equal(qmp_query_status(x.c, 0, (qmp_status_cb)NULL, NULL), 0);
    assert_int_equal(qmp_send(x.c, "query-name", NULL, 0, reply_cb, &r), 0);
    peer_write_slowly(&x.p, QMP_TEST_GREETING);
    wait_received(&x, 1);
    assert_string_equal(peer_command(&x.p, 0), "qmp_capabilities");
    char buf[256];
    snprintf(buf, sizeof buf, "{\"return\": {}, \"id\": %lld}\r\n", (long long)peer_id(&x.p, 0));
    peer_write_slowly(&x.p, buf);
    assert_true(tloop_wait(&x.t, &x.ready, 1, 5000));
    wait_received(&x, 3);
    assert_string_equal(peer_command(&x.p, 1), "query-status");
    assert_string_equal(peer_command(&x.p, 2), "query-name");
    snprintf(buf, sizeof buf,
             "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n"
             "{\"return\": {\"name\": \"vm\\u00e9\"}, \"id\": %lld}\r\n",
             (long long)peer_id(&x.p, 2));
    peer_write_slowly(&x.p, buf);
    wait_reply(&x, &r);
    assert_int_equal(r.status, 0);
    assert_string_equal(json_string_value(json_object_get(r.result, "name")), "vm\xc3\xa9");
    assert_int_equal(x.events, 1);
    assert_int_equal(x.disconnects, 0);
    reply_done(&r);
    ctx_finish(&x);
}

#define BATCH 200

static void test_many_in_one_write(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    static reply r[BATCH];
    for (int i = 0; i < BATCH; i++) {
        reply_init(&r[i], &x.t);
        json_t *args = json_pack("{si}", "i", i);
        assert_int_equal(qmp_send(x.c, "echo", args, qv_test_timeout_ms(10000), reply_cb, &r[i]), 0);
        json_decref(args);
    }
    wait_received(&x, 1 + BATCH);
    /* All replies, in reverse order, with an event after each, in one
     * write: each reply carries the argument it answers. */
    size_t cap = (size_t)BATCH * 200, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    for (int i = BATCH - 1; i >= 0; i--) {
        json_t *m = json_array_get(x.p.received, (size_t)i + 1);
        json_int_t arg = json_integer_value(json_object_get(json_object_get(m, "arguments"), "i"));
        len += (size_t)snprintf(buf + len, cap - len,
                                "{\"return\": {\"i\": %lld}, \"id\": %lld}\r\n"
                                "{\"event\": \"E%d\", \"data\": {\"i\": %d}, \"timestamp\": {\"seconds\": %d, "
                                "\"microseconds\": 0}}\r\n",
                                (long long)arg, (long long)peer_id(&x.p, i + 1), i, i, i);
    }
    peer_write(&x.p, buf, len);
    free(buf);
    assert_true(tloop_wait(&x.t, &x.events, BATCH, 5000));
    for (int i = 0; i < BATCH; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, 0);
        assert_int_equal(json_integer_value(json_object_get(r[i].result, "i")), i);
        /* Delivered in wire order: the reply to i before event i. */
        json_t *e = json_array_get(x.event_log, (size_t)(BATCH - 1 - i));
        char name[16];
        snprintf(name, sizeof name, "E%d", i);
        assert_string_equal(json_string_value(json_object_get(e, "name")), name);
        assert_true(r[i].seq < json_integer_value(json_object_get(e, "seq")));
        reply_done(&r[i]);
    }
    ctx_finish(&x);
}

/* A QEMU that sends events faster than QMP_EVENTS_PER_SECOND is not read
 * for the rest of that second (a guest that controls its QEMU cannot make
 * the daemon spend a core on it); what waited is delivered afterwards, in
 * order.  Fails without the pause: all events arrive at once. */
static void test_event_flood_paused(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    const int n = 3 * (int)QMP_EVENTS_PER_SECOND;
    size_t cap = (size_t)n * 100, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len,
                                "{\"event\": \"%s\", \"timestamp\": {\"seconds\": %d, \"microseconds\": 0}}\n",
                                i % 2 ? "RESUME" : "STOP", i);
    peer_write(&x.p, buf, len);
    free(buf);
    assert_true(tloop_wait(&x.t, &x.events, (int)QMP_EVENTS_PER_SECOND, 5000));
    /* the rest of the read that crossed the limit, and nothing more */
    tloop_run_for(&x.t, 300);
    assert_true(x.events < 2 * (int)QMP_EVENTS_PER_SECOND);
    /* then one second's worth a second, in wire order */
    assert_true(tloop_wait(&x.t, &x.events, n, 10000));
    for (int i = 0; i < n; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(x.event_log, (size_t)i), "seconds")), i);
    ctx_finish(&x);
}

static void test_event_between_command_and_reply(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply r;
    reply_init(&r, &x.t);
    assert_int_equal(qmp_system_powerdown(x.c, 0, reply_cb, &r), 0);
    wait_received(&x, 2);
    assert_string_equal(peer_command(&x.p, 1), "system_powerdown");
    peer_writes(&x.p, "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, \"event\": "
                      "\"POWERDOWN\"}\r\n");
    peer_writes(&x.p, "{\"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 7}, \"event\": \"SHUTDOWN\", "
                      "\"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}\r\n");
    assert_true(tloop_wait(&x.t, &x.events, 2, 2000));
    assert_int_equal(r.calls, 0);
    peer_writef(&x.p, "{\"return\": {}, \"id\": %lld}\r\n", (long long)peer_id(&x.p, 1));
    wait_reply(&x, &r);
    assert_int_equal(r.status, 0);
    assert_true(json_is_object(r.result));
    assert_int_equal(json_object_size(r.result), 0);

    json_t *e0 = json_array_get(x.event_log, 0), *e1 = json_array_get(x.event_log, 1);
    assert_string_equal(json_string_value(json_object_get(e0, "name")), "POWERDOWN");
    assert_null(json_object_get(e0, "data"));
    assert_int_equal(json_integer_value(json_object_get(e0, "seconds")), 1700000000);
    assert_int_equal(json_integer_value(json_object_get(e0, "microseconds")), 123456);
    assert_string_equal(json_string_value(json_object_get(e1, "name")), "SHUTDOWN");
    json_t *d = json_object_get(e1, "data");
    assert_true(json_is_true(json_object_get(d, "guest")));
    assert_string_equal(json_string_value(json_object_get(d, "reason")), "guest-shutdown");
    assert_true(json_integer_value(json_object_get(e1, "seq")) < r.seq);

    /* An event without a timestamp still arrives, with -1. */
    peer_writes(&x.p, "{\"event\": \"RESET\"}\n");
    assert_true(tloop_wait(&x.t, &x.events, 3, 2000));
    json_t *e2 = json_array_get(x.event_log, 2);
    assert_int_equal(json_integer_value(json_object_get(e2, "seconds")), -1);
    assert_int_equal(json_integer_value(json_object_get(e2, "microseconds")), -1);
    reply_done(&r);
    ctx_finish(&x);
}

/* ---- timeouts ---- */

static void test_late_reply_after_timeout(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply a, b, c;
    reply_init(&a, &x.t);
    reply_init(&b, &x.t);
    reply_init(&c, &x.t);
    uint64_t t0 = qv_now_ms();
    assert_int_equal(qmp_send(x.c, "slow", NULL, 100, reply_cb, &a), 0);
    assert_int_equal(qmp_send(x.c, "fast", NULL, 0, reply_cb, &b), 0);
    wait_received(&x, 3);
    wait_reply(&x, &a);
    assert_int_equal(a.status, QMP_ETIMEDOUT);
    assert_null(a.result);
    /* libuv's loop clock may be the coarse one: allow its granularity. */
    assert_true(qv_now_ms() - t0 >= 90);
    assert_int_equal(b.calls, 0);
    /* The late reply to "slow" arrives first; "fast" must get only its own,
     * and ids never issued or missing are dropped too. */
    peer_writef(&x.p,
                "{\"return\": {\"who\": \"slow\"}, \"id\": %lld}\n"
                "{\"return\": {\"who\": \"nobody\"}, \"id\": 999999}\n"
                "{\"return\": {\"who\": \"string id\"}, \"id\": \"%lld\"}\n"
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n"
                "{\"return\": {\"who\": \"fast\"}, \"id\": %lld}\n",
                (long long)peer_id(&x.p, 1), (long long)peer_id(&x.p, 2), (long long)peer_id(&x.p, 2));
    wait_reply(&x, &b);
    assert_int_equal(b.status, 0);
    assert_string_equal(json_string_value(json_object_get(b.result, "who")), "fast");
    assert_int_equal(a.calls, 1);
    /* The connection is fine. */
    assert_int_equal(qmp_send(x.c, "again", NULL, 1000, reply_cb, &c), 0);
    wait_received(&x, 4);
    peer_writef(&x.p, "{\"return\": 3, \"id\": %lld}\n", (long long)peer_id(&x.p, 3));
    wait_reply(&x, &c);
    assert_int_equal(c.status, 0);
    assert_int_equal(json_integer_value(c.result), 3);
    assert_int_equal(x.disconnects, 0);
    reply_done(&a);
    reply_done(&b);
    reply_done(&c);
    ctx_finish(&x);
    assert_int_equal(a.calls + b.calls + c.calls, 3);
}

static void test_handshake_timeout(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 100);
    reply r;
    reply_init(&r, &x.t);
    assert_int_equal(qmp_send(x.c, "query-status", NULL, 0, reply_cb, &r), 0);
    assert_true(tloop_wait(&x.t, &x.disconnects, 1, 2000));
    assert_int_equal(x.disconnect_status, QMP_ETIMEDOUT);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, QMP_ETIMEDOUT);
    assert_int_equal(x.ready, 0);
    assert_int_equal(x.send_in_disconnect, -ENOTCONN);
    assert_int_equal(x.p.n_received, 0);
    reply_done(&r);
    ctx_finish(&x);
}

/* 1000 outstanding commands, every other one timing out; all replies then
 * arrive in one write, shuffled, late ones included. */
#define MANY 1000

static void test_many_outstanding(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    static reply r[MANY];
    int timed_out = 0;
    for (int i = 0; i < MANY; i++) {
        reply_init(&r[i], &x.t);
        json_t *args = json_pack("{si}", "i", i);
        uint64_t timeout = i % 2 ? 50 + (uint64_t)(i % 7) : 0;
        assert_int_equal(qmp_send(x.c, "echo", args, timeout, reply_cb, &r[i]), 0);
        json_decref(args);
    }
    wait_received(&x, 1 + MANY);
    /* Wait until all odd ones timed out. */
    uint64_t deadline = qv_now_ms() + qv_test_timeout_ms(3000);
    for (;;) {
        timed_out = 0;
        for (int i = 1; i < MANY; i += 2)
            timed_out += r[i].calls;
        if (timed_out == MANY / 2 || qv_now_ms() > deadline)
            break;
        tloop_run_for(&x.t, 10);
    }
    assert_int_equal(timed_out, MANY / 2);
    int order[MANY];
    for (int i = 0; i < MANY; i++)
        order[i] = i;
    unsigned seed = 12345;
    for (int i = MANY - 1; i > 0; i--) {
        int j = (int)(rand_r(&seed) % (unsigned)(i + 1));
        int tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    size_t cap = (size_t)MANY * 64, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    for (int k = 0; k < MANY; k++) {
        int i = order[k];
        len += (size_t)snprintf(buf + len, cap - len, "{\"return\": %d, \"id\": %lld}\n", i,
                                (long long)peer_id(&x.p, i + 1));
    }
    uint64_t t0 = qv_now_ns();
    peer_write(&x.p, buf, len);
    free(buf);
    assert_true(tloop_wait(&x.t, &x.t.completed, MANY, 5000));
    uint64_t elapsed_us = (qv_now_ns() - t0) / 1000;
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(r[i].calls, 1);
        if (i % 2) {
            assert_int_equal(r[i].status, QMP_ETIMEDOUT);
        } else {
            assert_int_equal(r[i].status, 0);
            assert_int_equal(json_integer_value(r[i].result), i);
        }
        reply_done(&r[i]);
    }
    print_message("# 1000 replies matched in %llu us\n", (unsigned long long)elapsed_us);
    ctx_finish(&x);
}

/* ---- errors ---- */

static void status_rec(qmp_conn *c, int status, const qmp_run_status *st, const qmp_error *err, void *ud) {
    (void)c;
    reply *r = ud;
    r->calls++;
    r->status = status;
    if (st) {
        json_decref(r->result);
        r->result = json_pack("{sbss}", "running", st->running, "status", st->status);
    }
    if (err) {
        snprintf(r->error_class, sizeof r->error_class, "%s", err->error_class);
        snprintf(r->desc, sizeof r->desc, "%s", err->desc);
    }
}

static void test_error_reply(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply a, b;
    reply_init(&a, &x.t);
    reply_init(&b, &x.t);
    assert_int_equal(qmp_send(x.c, "nope", NULL, 0, reply_cb, &a), 0);
    assert_int_equal(qmp_query_status(x.c, 0, status_rec, &b), 0);
    wait_received(&x, 3);
    peer_writef(&x.p,
                "{\"id\": %lld, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has "
                "not been found\"}}\r\n"
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"busy\", \"extra\": 1}, \"id\": %lld}\r\n",
                (long long)peer_id(&x.p, 1), (long long)peer_id(&x.p, 2));
    wait_reply(&x, &a);
    assert_true(tloop_wait(&x.t, &b.calls, 1, 2000));
    assert_int_equal(a.status, QMP_ECOMMAND);
    assert_null(a.result);
    assert_string_equal(a.error_class, "CommandNotFound");
    assert_string_equal(a.desc, "The command nope has not been found");
    assert_int_equal(b.status, QMP_ECOMMAND);
    assert_string_equal(b.error_class, "GenericError");
    assert_string_equal(b.desc, "busy");
    assert_int_equal(x.disconnects, 0);

    /* An error reply without class is a protocol error. */
    reply c;
    reply_init(&c, &x.t);
    assert_int_equal(qmp_send(x.c, "x", NULL, 0, reply_cb, &c), 0);
    wait_received(&x, 4);
    peer_writef(&x.p, "{\"error\": {\"desc\": \"no class\"}, \"id\": %lld}\n", (long long)peer_id(&x.p, 3));
    wait_reply(&x, &c);
    assert_int_equal(c.status, QMP_EPROTO);
    assert_int_equal(x.disconnects, 1);
    assert_int_equal(x.disconnect_status, QMP_EPROTO);
    reply_done(&a);
    reply_done(&b);
    reply_done(&c);
    ctx_finish(&x);
}

typedef struct timer_count {
    const tloop *t;
    int n;
} timer_count;

static void count_active_timers(uv_handle_t *h, void *arg) {
    timer_count *tc = arg;
    if (h->type == UV_TIMER && uv_is_active(h) && h != (const uv_handle_t *)&tc->t->watchdog)
        tc->n++;
}

/* How many timers other than the test's watchdog are armed. */
static int armed_timers(tloop *t) {
    timer_count tc = {t, 0};
    uv_walk(&t->loop, count_active_timers, &tc);
    return tc.n;
}

static void test_answered_commands_leave_no_timer(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply a;
    reply_init(&a, &x.t);
    assert_int_equal(qmp_send(x.c, "cont", NULL, 10000, reply_cb, &a), 0);
    wait_received(&x, 2);
    peer_writef(&x.p, "{\"return\": {}, \"id\": %lld}\n", (long long)peer_id(&x.p, 1));
    wait_reply(&x, &a);
    assert_int_equal(a.status, 0);
    /* the 10 s deadline went with the reply: an idle connection wakes no one */
    assert_int_equal(armed_timers(&x.t), 0);
    reply_done(&a);
    ctx_finish(&x);
}

static void test_eof_mid_reply(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply r[3];
    for (int i = 0; i < 3; i++) {
        reply_init(&r[i], &x.t);
        assert_int_equal(qmp_send(x.c, "query-status", NULL, i == 2 ? 60000 : 0, reply_cb, &r[i]), 0);
    }
    wait_received(&x, 4);
    peer_writef(&x.p, "{\"return\": {\"status\": \"running\"}, \"id\": %lld}\n{\"return\": {\"sta",
                (long long)peer_id(&x.p, 1));
    peer_eof(&x.p);
    assert_true(tloop_wait(&x.t, &x.disconnects, 1, 2000));
    assert_int_equal(x.disconnect_status, QMP_EDISCONNECTED);
    assert_int_equal(r[0].status, 0);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, QMP_EDISCONNECTED);
        assert_true(r[i].seq < x.disconnect_seq);
    }
    assert_int_equal(x.send_in_disconnect, -ENOTCONN);
    assert_int_equal(qmp_send(x.c, "query-status", NULL, 0, reply_cb, &r[0]), -ENOTCONN);
    assert_false(qmp_is_ready(x.c));
    /* The handles are closed already, before qmp_close(). */
    peer_close(&x.p);
    tloop_run_for(&x.t, 20);
    assert_int_equal(x.disconnects, 1);
    qmp_close(x.c);
    assert_int_equal(x.disconnects, 1);
    tloop_finish(&x.t);
    json_decref(x.event_log);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        reply_done(&r[i]);
    }
}

static void expect_protocol_error(const char *what, const void *data, size_t len, bool eof) {
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply r[2];
    for (int i = 0; i < 2; i++) {
        reply_init(&r[i], &x.t);
        assert_int_equal(qmp_send(x.c, "query-status", NULL, 0, reply_cb, &r[i]), 0);
    }
    wait_received(&x, 3);
    peer_write(&x.p, data, len);
    /* A valid reply right behind the bad input must not be delivered. */
    peer_writef(&x.p, "\n{\"return\": {}, \"id\": %lld}\n", (long long)peer_id(&x.p, 1));
    if (eof)
        peer_eof(&x.p);
    if (!tloop_wait(&x.t, &x.disconnects, 1, 5000))
        fail_msg("no disconnect for %s", what);
    assert_int_equal(x.disconnect_status, QMP_EPROTO);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, QMP_EPROTO);
        reply_done(&r[i]);
    }
    tloop_run_for(&x.t, 10);
    assert_int_equal(x.disconnects, 1);
    ctx_finish(&x);
}

static void test_oversized_message(void **state) {
    (void)state;
    /* Exactly QMP_MAX_MESSAGE bytes is accepted... */
    {
        ctx x;
        ctx_open(&x, 0);
        ctx_handshake(&x);
        reply r;
        reply_init(&r, &x.t);
        assert_int_equal(qmp_send(x.c, "big", NULL, 0, reply_cb, &r), 0);
        wait_received(&x, 2);
        char head[64];
        int hl = snprintf(head, sizeof head, "{\"id\": %lld, \"return\": \"", (long long)peer_id(&x.p, 1));
        size_t total = QMP_MAX_MESSAGE;
        char *buf = malloc(total + 1);
        if (!buf)
            abort();
        memcpy(buf, head, (size_t)hl);
        memset(buf + hl, 'x', total - (size_t)hl - 2);
        memcpy(buf + total - 2, "\"}", 2);
        buf[total] = '\n';
        peer_write(&x.p, buf, total + 1);
        free(buf);
        assert_true(tloop_wait(&x.t, &r.calls, 1, 10000));
        assert_int_equal(r.status, 0);
        assert_int_equal(strlen(json_string_value(r.result)), total - (size_t)hl - 2);
        assert_int_equal(x.disconnects, 0);
        reply_done(&r);
        ctx_finish(&x);
    }
    /* ...one more byte is not, with or without a newline in sight. */
    size_t total = QMP_MAX_MESSAGE + 1;
    char *buf = malloc(total + 1);
    if (!buf)
        abort();
    memcpy(buf, "{\"return\": \"", 12);
    memset(buf + 12, 'y', total - 14);
    memcpy(buf + total - 2, "\"}", 2);
    buf[total] = '\n';
    expect_protocol_error("oversized line", buf, total + 1, false);
    memset(buf, 'z', total + 1);
    expect_protocol_error("oversized unterminated", buf, total + 1, false);
    free(buf);
}

static void test_invalid_utf8(void **state) {
    (void)state;
    static const char *const bad[] = {
        "{\"event\": \"X\xff\xfe\"}\n",
        "{\"return\": \"\xc0\xaf\"}\n",             /* overlong '/' */
        "{\"return\": \"\xed\xa0\x80\"}\n",         /* UTF-16 surrogate */
        "{\"return\": {\"a\": \"ok\xe2\x82\"}}\n",  /* truncated sequence */
        "{\"ev\xf8nt\": 1}\n",                      /* invalid lead byte in a key */
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(bad); i++)
        expect_protocol_error(bad[i], bad[i], strlen(bad[i]), false);
}

static void test_invalid_json(void **state) {
    (void)state;
    static const char *const bad[] = {
        "{\"return\": }\n",
        "not json at all\n",
        "{\"return\": {}} trailing\n",
        "{\"return\": {}}{\"return\": {}}\n",
        "[]\n",
        "42\n",
        "\"string\"\n",
        "{\"event\": 5}\n",
        "{\"event\": null, \"data\": {}}\n",
        "{'return': {}}\n",
        "{\"return\": {\"a\": [1, 2}\n",
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(bad); i++)
        expect_protocol_error(bad[i], bad[i], strlen(bad[i]), false);
    /* Embedded NUL, and nesting deeper than the parser allows. */
    static const char nul[] = "{\"return\": \"a\0b\"}\n";
    expect_protocol_error("NUL", nul, sizeof nul - 1, false);
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 2);
    if (!deep)
        abort();
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = '\n';
    expect_protocol_error("deep nesting", deep, 2 * depth + 1, false);
    free(deep);
}

/* ---- closing from callbacks ---- */

typedef struct close_rec {
    reply r;
    qmp_conn *close_conn; /* qmp_close() this from the callback */
    int send_result;      /* qmp_send() from inside, after the close */
} close_rec;

static void close_in_reply(qmp_conn *c, int status, json_t *result, const qmp_error *err, void *ud) {
    close_rec *cr = ud;
    reply_cb(c, status, result, err, &cr->r);
    if (cr->close_conn) {
        qmp_close(cr->close_conn);
        cr->send_result = qmp_send(c, "after-close", NULL, 0, NULL, NULL);
    }
}

static void test_close_from_reply_callback(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    close_rec cr[3];
    memset(cr, 0, sizeof cr);
    for (int i = 0; i < 3; i++) {
        reply_init(&cr[i].r, &x.t);
        assert_int_equal(qmp_send(x.c, "q", NULL, i == 2 ? 100000 : 0, close_in_reply, &cr[i]), 0);
    }
    cr[0].close_conn = x.c;
    wait_received(&x, 4);
    /* All three replies and an event in one read: only the first reply may
     * be delivered; the rest are cancelled by the close. */
    peer_writef(&x.p,
                "{\"return\": 0, \"id\": %lld}\n{\"event\": \"LATE\"}\n{\"return\": 1, \"id\": %lld}\n"
                "{\"return\": 2, \"id\": %lld}\n",
                (long long)peer_id(&x.p, 1), (long long)peer_id(&x.p, 2), (long long)peer_id(&x.p, 3));
    assert_true(tloop_wait(&x.t, &cr[0].r.calls, 1, 2000));
    assert_int_equal(cr[0].r.status, 0);
    assert_int_equal(cr[0].send_result, -ENOTCONN);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(cr[i].r.calls, 1);
        assert_int_equal(cr[i].r.status, QMP_ECANCELED);
    }
    tloop_run_for(&x.t, 20);
    assert_int_equal(x.events, 0);
    assert_int_equal(x.disconnects, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cr[i].r.calls, 1);
        reply_done(&cr[i].r);
    }
    peer_close(&x.p);
    tloop_finish(&x.t);
    json_decref(x.event_log);
}

static void test_close_from_other_callbacks(void **state) {
    (void)state;
    /* on_ready */
    {
        ctx x;
        ctx_open(&x, 0);
        x.close_in_ready = true;
        reply r;
        reply_init(&r, &x.t);
        assert_int_equal(qmp_send(x.c, "q", NULL, 0, reply_cb, &r), 0);
        peer_writes(&x.p, QMP_TEST_GREETING);
        assert_true(tloop_wait(&x.t, &x.ready, 1, 2000));
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.status, QMP_ECANCELED);
        reply_done(&r);
        peer_close(&x.p);
        tloop_finish(&x.t);
        json_decref(x.event_log);
    }
    /* on_event, with a reply behind it in the same read */
    {
        ctx x;
        ctx_open(&x, 0);
        ctx_handshake(&x);
        x.close_in_event = true;
        reply r;
        reply_init(&r, &x.t);
        assert_int_equal(qmp_send(x.c, "q", NULL, 0, reply_cb, &r), 0);
        wait_received(&x, 2);
        peer_writef(&x.p, "{\"event\": \"A\"}\n{\"event\": \"B\"}\n{\"return\": {}, \"id\": %lld}\n",
                    (long long)peer_id(&x.p, 1));
        assert_true(tloop_wait(&x.t, &x.events, 1, 2000));
        tloop_run_for(&x.t, 20);
        assert_int_equal(x.events, 1);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.status, QMP_ECANCELED);
        assert_int_equal(x.disconnects, 0);
        reply_done(&r);
        peer_close(&x.p);
        tloop_finish(&x.t);
        json_decref(x.event_log);
    }
    /* on_disconnect */
    {
        ctx x;
        ctx_open(&x, 0);
        ctx_handshake(&x);
        x.close_in_disconnect = true;
        peer_eof(&x.p);
        assert_true(tloop_wait(&x.t, &x.disconnects, 1, 2000));
        assert_int_equal(x.disconnect_status, QMP_EDISCONNECTED);
        peer_close(&x.p);
        tloop_finish(&x.t);
        json_decref(x.event_log);
    }
    /* a timeout callback */
    {
        ctx x;
        ctx_open(&x, 0);
        ctx_handshake(&x);
        close_rec a = {0}, b = {0};
        reply_init(&a.r, &x.t);
        reply_init(&b.r, &x.t);
        a.close_conn = x.c;
        assert_int_equal(qmp_send(x.c, "q", NULL, 30, close_in_reply, &a), 0);
        assert_int_equal(qmp_send(x.c, "q", NULL, 30, close_in_reply, &b), 0);
        assert_true(tloop_wait(&x.t, &a.r.calls, 1, 2000));
        assert_int_equal(a.r.status, QMP_ETIMEDOUT);
        assert_int_equal(b.r.calls, 1);
        assert_int_equal(b.r.status, QMP_ECANCELED);
        reply_done(&a.r);
        reply_done(&b.r);
        peer_close(&x.p);
        tloop_finish(&x.t);
        json_decref(x.event_log);
    }
    /* qmp_close() with commands pending, outside any callback, and twice */
    {
        ctx x;
        ctx_open(&x, 0);
        reply r;
        reply_init(&r, &x.t);
        assert_int_equal(qmp_send(x.c, "q", NULL, 10, reply_cb, &r), 0);
        qmp_close(x.c);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.status, QMP_ECANCELED);
        tloop_run_for(&x.t, 30);
        assert_int_equal(r.calls, 1);
        assert_int_equal(x.disconnects, 0);
        reply_done(&r);
        peer_close(&x.p);
        tloop_finish(&x.t);
        json_decref(x.event_log);
    }
}

/* ---- helpers' parsing ---- */

static void cpus_rec(qmp_conn *c, int status, const qmp_vcpu *cpus, size_t n, const qmp_error *err, void *ud) {
    (void)c;
    (void)err;
    reply *r = ud;
    r->calls++;
    r->status = status;
    json_decref(r->result);
    r->result = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(r->result, json_pack("{sI si ss* ss*}", "cpu", (json_int_t)cpus[i].cpu_index, "tid",
                                                   (int)cpus[i].thread_id, "qom", cpus[i].qom_path, "target",
                                                   cpus[i].target));
}

static void test_helpers(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply st, st_bad, cpus, cpus_bad, simple[5];
    reply_init(&st, &x.t);
    reply_init(&st_bad, &x.t);
    reply_init(&cpus, &x.t);
    reply_init(&cpus_bad, &x.t);
    assert_int_equal(qmp_query_status(x.c, 0, status_rec, &st), 0);
    assert_int_equal(qmp_query_status(x.c, 0, status_rec, &st_bad), 0);
    assert_int_equal(qmp_query_cpus_fast(x.c, 0, cpus_rec, &cpus), 0);
    assert_int_equal(qmp_query_cpus_fast(x.c, 0, cpus_rec, &cpus_bad), 0);
    int (*fns[5])(qmp_conn *, uint64_t, qmp_reply_cb, void *) = {qmp_cont, qmp_stop, qmp_system_powerdown,
                                                                 qmp_system_reset, qmp_quit};
    static const char *const names[5] = {"cont", "stop", "system_powerdown", "system_reset", "quit"};
    for (int i = 0; i < 5; i++) {
        reply_init(&simple[i], &x.t);
        assert_int_equal(fns[i](x.c, 0, reply_cb, &simple[i]), 0);
    }
    wait_received(&x, 10);
    assert_string_equal(peer_command(&x.p, 1), "query-status");
    assert_string_equal(peer_command(&x.p, 3), "query-cpus-fast");
    for (int i = 0; i < 5; i++)
        assert_string_equal(peer_command(&x.p, 5 + i), names[i]);
    peer_writef(&x.p,
                "{\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}, \"id\": %lld}\n"
                "{\"return\": {\"status\": 3, \"running\": false}, \"id\": %lld}\n"
                "{\"return\": [{\"thread-id\": 7466, \"props\": {\"core-id\": 0}, \"qom-path\": "
                "\"/machine/unattached/device[0]\", \"cpu-index\": 0, \"target\": \"x86_64\"}, {\"thread-id\": "
                "7467, \"cpu-index\": 1}], \"id\": %lld}\n"
                "{\"return\": [{\"thread-id\": \"7466\", \"cpu-index\": 0}], \"id\": %lld}\n",
                (long long)peer_id(&x.p, 1), (long long)peer_id(&x.p, 2), (long long)peer_id(&x.p, 3),
                (long long)peer_id(&x.p, 4));
    for (int i = 0; i < 5; i++)
        peer_writef(&x.p, "{\"return\": {}, \"id\": %lld}\n", (long long)peer_id(&x.p, 5 + i));
    assert_true(tloop_wait(&x.t, &simple[4].calls, 1, 2000));
    assert_int_equal(st.status, 0);
    assert_false(json_is_true(json_object_get(st.result, "running")));
    assert_string_equal(json_string_value(json_object_get(st.result, "status")), "prelaunch");
    assert_int_equal(st_bad.status, QMP_EBADREPLY);
    assert_int_equal(cpus.status, 0);
    assert_int_equal(json_array_size(cpus.result), 2);
    json_t *c0 = json_array_get(cpus.result, 0), *c1 = json_array_get(cpus.result, 1);
    assert_int_equal(json_integer_value(json_object_get(c0, "tid")), 7466);
    assert_int_equal(json_integer_value(json_object_get(c0, "cpu")), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "qom")), "/machine/unattached/device[0]");
    assert_string_equal(json_string_value(json_object_get(c0, "target")), "x86_64");
    assert_int_equal(json_integer_value(json_object_get(c1, "tid")), 7467);
    assert_null(json_object_get(c1, "qom"));
    assert_int_equal(cpus_bad.status, QMP_EBADREPLY);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(simple[i].status, 0);
        reply_done(&simple[i]);
    }
    assert_int_equal(x.disconnects, 0);

    /* Invalid arguments are refused up front. */
    json_t *arr = json_array();
    assert_int_equal(qmp_send(x.c, "x", arr, 0, NULL, NULL), -EINVAL);
    json_decref(arr);
    assert_int_equal(qmp_send(x.c, "", NULL, 0, NULL, NULL), -EINVAL);
    assert_int_equal(qmp_send(x.c, NULL, NULL, 0, NULL, NULL), -EINVAL);
    assert_int_equal(qmp_send(NULL, "x", NULL, 0, NULL, NULL), -ENOTCONN);

    /* Arguments are borrowed and serialised as given. */
    json_t *args = json_pack("{sss{si}}", "device", "vd\xc3\xa9", "opts", "n", 1);
    assert_int_equal(qmp_send(x.c, "device_del", args, 0, NULL, NULL), 0);
    assert_int_equal(args->refcount, 1);
    wait_received(&x, 11);
    assert_true(json_equal(json_object_get(json_array_get(x.p.received, 10), "arguments"), args));
    json_decref(args);

    reply_done(&st);
    reply_done(&st_bad);
    reply_done(&cpus);
    reply_done(&cpus_bad);
    ctx_finish(&x);
}

/* query-blockstats: QEMU's reply (a real QEMU 7.2 one first) is copied out
 * named by node name, device or qdev; anything off refuses it whole. */
static void blockstats_rec(qmp_conn *c, int status, const qmp_blockstats *st, size_t n, const qmp_error *err,
                           void *ud) {
    (void)c;
    (void)err;
    reply *r = ud;
    r->calls++;
    r->status = status;
    json_decref(r->result);
    r->result = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(r->result, json_pack("{ss sI sI sI sI}", "device", st[i].device, "rb",
                                                   (json_int_t)st[i].rd_bytes, "wb", (json_int_t)st[i].wr_bytes,
                                                   "ro", (json_int_t)st[i].rd_operations, "wo",
                                                   (json_int_t)st[i].wr_operations));
}

static void test_blockstats(void **state) {
    (void)state;
    static const char *const replies[] = {
        /* QEMU 7.2 with -blockdev: node-name names it, device is "" */
        "[{\"device\": \"\", \"parent\": {\"stats\": {\"rd_bytes\": 0}}, \"node-name\": \"disk0\", "
        "\"qdev\": \"/machine/peripheral/virtio-disk0/virtio-backend\", \"stats\": {\"rd_bytes\": 512, "
        "\"wr_bytes\": 4096, \"rd_operations\": 1, \"wr_operations\": 2, \"flush_operations\": 0}}, "
        "{\"device\": \"ide0-cd0\", \"stats\": {\"rd_bytes\": 1, \"wr_bytes\": 0, \"rd_operations\": 1, "
        "\"wr_operations\": 0}}, {\"device\": \"\", \"qdev\": \"/machine/unattached/device[23]\", "
        "\"stats\": {\"rd_bytes\": 0, \"wr_bytes\": 0, \"rd_operations\": 0, \"wr_operations\": 0}}]",
        "[]",
        "{}",                                                            /* not an array */
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": -1, \"wr_bytes\": 0, \"rd_operations\": 0, "
        "\"wr_operations\": 0}}]",                                         /* negative */
        "[{\"node-name\": \"d\\\"x\", \"stats\": {\"rd_bytes\": 0, \"wr_bytes\": 0, \"rd_operations\": 0, "
        "\"wr_operations\": 0}}]",                                         /* a quote in the name */
        "[{\"node-name\": \"d\\u001b[2J\", \"stats\": {\"rd_bytes\": 0, \"wr_bytes\": 0, "
        "\"rd_operations\": 0, \"wr_operations\": 0}}]",                  /* a terminal escape */
        "[{\"device\": \"\", \"stats\": {\"rd_bytes\": 0, \"wr_bytes\": 0, \"rd_operations\": 0, "
        "\"wr_operations\": 0}}]",                                         /* no name at all */
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": \"1\", \"wr_bytes\": 0, \"rd_operations\": 0, "
        "\"wr_operations\": 0}}]",                                         /* a string */
        "[{\"node-name\": \"d\"}]",                                        /* no stats */
    };
    enum { N = sizeof replies / sizeof replies[0] };
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    reply r[N + 1];
    for (size_t i = 0; i <= N; i++) {
        reply_init(&r[i], &x.t);
        assert_int_equal(qmp_query_blockstats(x.c, 0, blockstats_rec, &r[i]), 0);
    }
    wait_received(&x, N + 2);
    assert_string_equal(peer_command(&x.p, 1), "query-blockstats");
    for (size_t i = 0; i < N; i++)
        peer_writef(&x.p, "{\"return\": %s, \"id\": %lld}\n", replies[i], (long long)peer_id(&x.p, 1 + i));
    /* more backends than any VM of ours has */
    char many[65 * 128] = "[";
    for (int i = 0; i < QMP_BLOCKSTATS_MAX + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many),
                 "%s{\"node-name\": \"d%d\", \"stats\": {\"rd_bytes\": 0, \"wr_bytes\": 0, \"rd_operations\": 0, "
                 "\"wr_operations\": 0}}",
                 i ? "," : "", i);
    peer_writef(&x.p, "{\"return\": %s], \"id\": %lld}\n", many, (long long)peer_id(&x.p, 1 + N));
    assert_true(tloop_wait(&x.t, &r[N].calls, 1, 2000));

    assert_int_equal(r[0].status, 0);
    assert_int_equal(json_array_size(r[0].result), 3);
    json_t *want = json_loads("[{\"device\": \"disk0\", \"rb\": 512, \"wb\": 4096, \"ro\": 1, \"wo\": 2},"
                              " {\"device\": \"ide0-cd0\", \"rb\": 1, \"wb\": 0, \"ro\": 1, \"wo\": 0},"
                              " {\"device\": \"/machine/unattached/device[23]\", \"rb\": 0, \"wb\": 0, \"ro\": 0,"
                              " \"wo\": 0}]",
                              0, NULL);
    assert_true(json_equal(r[0].result, want));
    json_decref(want);
    assert_int_equal(r[1].status, 0);
    assert_int_equal(json_array_size(r[1].result), 0);
    for (size_t i = 2; i <= N; i++) {
        if (r[i].status != QMP_EBADREPLY)
            fail_msg("reply %zu: status %d, want QMP_EBADREPLY", i, r[i].status);
        assert_int_equal(json_array_size(r[i].result), 0);
    }
    assert_int_equal(x.disconnects, 0); /* the connection stays up */
    for (size_t i = 0; i <= N; i++)
        reply_done(&r[i]);
    ctx_finish(&x);
}

/* ---- the fast path against the ordinary way ---- */

/* Where the scanner answers for a query-blockstats value, jansson and
 * qmp__parse_blockstats must say the same; returns whether it answered. */
static bool same_blockstats(const char *value, size_t len) {
    qmp_blockstats fv[QMP_BLOCKSTATS_MAX], sv[QMP_BLOCKSTATS_MAX];
    char names[QMP_BLOCKSTATS_MAX][QMP_BLOCK_NAME_MAX + 1];
    size_t fn = 0, sn = 0;
    if (qmp__scan_blockstats(value, len, fv, names, &fn) < 0)
        return false;
    json_t *j = json_loadb(value, len, 0, NULL);
    if (!j)
        fail_msg("the scanner took what jansson refuses: %.*s", (int)len, value);
    int r = qmp__parse_blockstats(j, sv, &sn);
    if (r != 0 || fn != sn)
        fail_msg("the scanner found %zu entries, the ordinary way %d/%zu: %.*s", fn, r, sn, (int)len, value);
    for (size_t i = 0; i < fn; i++)
        if (strcmp(fv[i].device, sv[i].device) != 0 || fv[i].rd_bytes != sv[i].rd_bytes ||
            fv[i].wr_bytes != sv[i].wr_bytes || fv[i].rd_operations != sv[i].rd_operations ||
            fv[i].wr_operations != sv[i].wr_operations)
            fail_msg("entry %zu differs: %.*s", i, (int)len, value);
    json_decref(j);
    return true;
}

/* The same for a whole reply line: {"return": VALUE, "id": N}. */
static bool same_reply(const char *line, size_t len) {
    const char *value;
    size_t vlen;
    uint64_t id;
    if (qmp__scan_reply(line, len, &value, &vlen, &id) < 0)
        return false;
    json_t *msg = json_loadb(line, len, 0, NULL);
    if (!json_is_object(msg) || json_object_size(msg) != 2)
        fail_msg("the scanner took a reply jansson reads otherwise: %.*s", (int)len, line);
    json_t *jid = json_object_get(msg, "id"), *ret = json_object_get(msg, "return");
    assert_true(json_is_integer(jid) && (uint64_t)json_integer_value(jid) == id);
    json_t *v = json_loadb(value, vlen, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    assert_true(json_equal(v, ret));
    json_decref(v);
    json_decref(msg);
    same_blockstats(value, vlen);
    return true;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* QEMU 7.2's own reply (test/qmp/blockstats-qemu-7.2.json) takes the fast
 * path; so do hand-made plain variants; everything else falls back.  Then
 * thousands of mutations of the real reply: wherever the scanners answer,
 * they answer what jansson and the typed helper would. */
static void test_blockstats_fast_path(void **state) {
    (void)state;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/test/qmp/blockstats-qemu-7.2.json", getenv("QVISOR_SOURCE_ROOT"));
    _cleanup_free_ char *real = NULL;
    size_t real_len;
    assert_int_equal(qv_read_file(path, 1 << 20, &real, &real_len), 0);
    /* QEMU wrote it without an id: give it one, as a reply to us */
    const char *end = strrchr(real, '}');
    assert_non_null(end);
    char line[8192];
    int n = snprintf(line, sizeof line, "%.*s, \"id\": 42}\n", (int)(end - real), real);
    assert_true(n > 0 && (size_t)n < sizeof line);
    assert_true(same_reply(line, (size_t)n));
    const char *value;
    size_t vlen;
    uint64_t id;
    assert_int_equal(qmp__scan_reply(line, (size_t)n, &value, &vlen, &id), 0);
    assert_int_equal(id, 42);
    qmp_blockstats v[QMP_BLOCKSTATS_MAX];
    char names[QMP_BLOCKSTATS_MAX][QMP_BLOCK_NAME_MAX + 1];
    size_t nv;
    assert_int_equal(qmp__scan_blockstats(value, vlen, v, names, &nv), 0);
    assert_int_equal(nv, 2);
    assert_string_equal(v[0].device, "disk0");
    assert_string_equal(v[1].device, "seed0");

    static const char *const plain[] = {
        "[]", " [ ] ",
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": 1, \"wr_bytes\": 2, \"rd_operations\": 3, "
        "\"wr_operations\": 4, \"x\": [1.5e10, -2, true, null, {\"a\": []}]}}]",
        "[{\"device\": \"\", \"qdev\": \"/machine/x[1]\", \"stats\": {\"wr_operations\": 0, \"rd_operations\": 0, "
        "\"wr_bytes\": 0, \"rd_bytes\": 999999999999999999}}]",
    };
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        if (!same_blockstats(plain[i], strlen(plain[i])))
            fail_msg("plain reply %zu did not take the fast path", i);
    /* valid, but for the ordinary way to judge */
    static const char *const fallback[] = {
        "[{\"node-name\": \"d\\u0041\", \"stats\": {\"rd_bytes\": 1, \"wr_bytes\": 2, \"rd_operations\": 3, "
        "\"wr_operations\": 4}}]", /* an escape */
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": 1, \"rd_bytes\": 2, \"wr_bytes\": 2, "
        "\"rd_operations\": 3, \"wr_operations\": 4}}]", /* a key twice */
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": 1.0, \"wr_bytes\": 2, \"rd_operations\": 3, "
        "\"wr_operations\": 4}}]", /* a real */
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": 1234567890123456789, \"wr_bytes\": 2, "
        "\"rd_operations\": 3, \"wr_operations\": 4}}]", /* 19 digits */
        "[{\"node-name\": \"d \", \"stats\": {\"rd_bytes\": 1, \"wr_bytes\": 2, \"rd_operations\": 3, "
        "\"wr_operations\": 4}}]", /* a space in the name */
        "[{\"node-name\": \"d\", \"stats\": {\"rd_bytes\": 1, \"wr_bytes\": 2, \"rd_operations\": 3}}]",
        "[{\"node-name\": \"d\", \"x\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], "
        "\"stats\": {\"rd_bytes\": 1, \"wr_bytes\": 2, \"rd_operations\": 3, \"wr_operations\": 4}}]",
        "[{\"node-name\": \"d\xc3\xa9\", \"stats\": {}}]",
        "[1]", "{}", "[", "", "[]x",
    };
    for (size_t i = 0; i < sizeof fallback / sizeof fallback[0]; i++)
        if (qmp__scan_blockstats(fallback[i], strlen(fallback[i]), v, names, &nv) == 0)
            fail_msg("fallback reply %zu took the fast path", i);
    static const char *const not_replies[] = {
        "{\"return\": {}, \"id\": 1, \"x\": 2}", "{\"return\": {}}", "{\"id\": 1}", "{\"return\": {}, \"id\": -1}",
        "{\"return\": {}, \"id\": 1.0}", "{\"id\": 1, \"id\": 2, \"return\": 3}", "{\"event\": \"STOP\"}",
        "{\"return\": {}, \"id\": 1} x", "[\"return\", 1]",
    };
    for (size_t i = 0; i < sizeof not_replies / sizeof not_replies[0]; i++)
        if (qmp__scan_reply(not_replies[i], strlen(not_replies[i]), &value, &vlen, &id) == 0)
            fail_msg("'%s' was taken for a plain reply", not_replies[i]);
    assert_true(same_reply("{\"id\": 3, \"return\": [] }", 24));

    /* mutations of the real reply */
    static const char alphabet[] = "{}[],:\"\\0919-+eE. atfn\x7f\x80\x1f\n";
    unsigned taken = 0, refused = 0;
    int rounds = (int)(getenv("ASAN_OPTIONS") ? 3000 : 20000);
    for (int r = 0; r < rounds; r++) {
        char m[8192];
        size_t ml = (size_t)n;
        memcpy(m, line, ml);
        for (uint64_t k = rng() % 3 + 1; k; k--) {
            size_t at = (size_t)(rng() % ml);
            switch (rng() % 3) {
            case 0: /* replace a byte */
                m[at] = alphabet[rng() % (sizeof alphabet - 1)];
                break;
            case 1: /* delete one */
                memmove(m + at, m + at + 1, ml - at - 1);
                ml--;
                break;
            default: /* insert one */
                if (ml + 1 < sizeof m) {
                    memmove(m + at + 1, m + at, ml - at);
                    m[at] = alphabet[rng() % (sizeof alphabet - 1)];
                    ml++;
                }
            }
        }
        if (same_reply(m, ml))
            taken++;
        else
            refused++;
    }
    /* both kinds were seen: the comparison had something to compare */
    print_message("# %u mutated replies took the fast path, %u fell back\n", taken, refused);
    assert_true(taken > 100);
    assert_true(refused > 100);
}

/* A command larger than the socket buffer is written partly at once and
 * partly queued; what follows must not overtake it. */
static void test_large_command(void **state) {
    (void)state;
    ctx x;
    ctx_open(&x, 0);
    ctx_handshake(&x);
    size_t big = 4 * 1024 * 1024;
    char *s = malloc(big + 1);
    if (!s)
        abort();
    for (size_t i = 0; i < big; i++)
        s[i] = (char)('a' + i % 26);
    s[big] = '\0';
    json_t *args = json_pack("{ss}", "blob", s);
    reply r[3];
    for (int i = 0; i < 3; i++) {
        reply_init(&r[i], &x.t);
        assert_int_equal(qmp_send(x.c, i == 1 ? "big" : "small", i == 1 ? args : NULL, 0, reply_cb, &r[i]), 0);
    }
    json_decref(args);
    wait_received(&x, 4);
    assert_string_equal(peer_command(&x.p, 1), "small");
    assert_string_equal(peer_command(&x.p, 2), "big");
    assert_string_equal(peer_command(&x.p, 3), "small");
    json_t *got = json_object_get(json_object_get(json_array_get(x.p.received, 2), "arguments"), "blob");
    assert_int_equal(json_string_length(got), big);
    assert_memory_equal(json_string_value(got), s, big);
    free(s);
    for (int i = 0; i < 3; i++)
        peer_writef(&x.p, "{\"return\": %d, \"id\": %lld}\n", i, (long long)peer_id(&x.p, 1 + i));
    assert_true(tloop_wait(&x.t, &x.t.completed, 3, 2000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].status, 0);
        assert_int_equal(json_integer_value(r[i].result), i);
        reply_done(&r[i]);
    }
    ctx_finish(&x);
}

/* ---- the listening socket and qmp_connect() ---- */

static void test_listen_and_connect(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("qmp-listen");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/mon.sock", dir);

    int lfd = -1;
    assert_int_equal(qmp_listen_socket(path, &lfd), 0);
    assert_true(fcntl(lfd, F_GETFD) & FD_CLOEXEC);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* The client connects at once, before anybody accepts: no polling. */
    ctx x = {.event_log = json_array()};
    tloop_init(&x.t);
    qmp_options o = {.on_ready = on_ready, .on_event = on_event, .on_disconnect = on_disconnect, .userdata = &x};
    assert_int_equal(qmp_connect(&x.t.loop, path, &o, &x.c), 0);
    reply r;
    reply_init(&r, &x.t);
    assert_int_equal(qmp_query_status(x.c, 5000, status_rec, &r), 0);
    tloop_run_for(&x.t, 20);
    assert_int_equal(x.disconnects, 0);

    /* "QEMU" accepts later and serves. */
    int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(afd >= 0);
    peer_init_fd(&x.p, &x.t, afd);
    x.p.on_msg = ctx_peer_msg;
    x.p.userdata = &x;
    ctx_handshake(&x);
    wait_received(&x, 2);
    assert_string_equal(peer_command(&x.p, 1), "query-status");
    peer_writef(&x.p, "{\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": %lld}\n",
                (long long)peer_id(&x.p, 1));
    assert_true(tloop_wait(&x.t, &r.calls, 1, 2000));
    assert_int_equal(r.status, 0);
    assert_string_equal(json_string_value(json_object_get(r.result, "status")), "paused");
    reply_done(&r);
    ctx_finish(&x);

    /* A stale socket is replaced; anything else is not touched. */
    int lfd2 = -1;
    assert_int_equal(qmp_listen_socket(path, &lfd2), 0);
    close(lfd2);
    close(lfd);
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/regular", dir);
    qv_test_write(dir, "regular", "keep");
    assert_int_equal(qmp_listen_socket(file, &lfd2), -EEXIST);
    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    assert_int_equal(qmp_listen_socket(longp, &lfd2), -ENAMETOOLONG);

    /* Connecting where nobody listens fails through on_disconnect. */
    {
        ctx y = {.event_log = json_array()};
        tloop_init(&y.t);
        qmp_options o2 = {.on_disconnect = on_disconnect, .userdata = &y};
        char missing[PATH_MAX];
        snprintf(missing, sizeof missing, "%s/missing.sock", dir);
        assert_int_equal(qmp_connect(&y.t.loop, missing, &o2, &y.c), 0);
        reply rr;
        reply_init(&rr, &y.t);
        assert_int_equal(qmp_send(y.c, "q", NULL, 0, reply_cb, &rr), 0);
        assert_true(tloop_wait(&y.t, &y.disconnects, 1, 2000));
        assert_int_equal(y.disconnect_status, -ENOENT);
        assert_int_equal(rr.status, -ENOENT);
        assert_int_equal(qmp_connect(&y.t.loop, longp, &o2, &y.c), -ENAMETOOLONG);
        reply_done(&rr);
        qmp_close(y.c);
        tloop_finish(&y.t);
        json_decref(y.event_log);
    }
    /* qmp_open_fd() refuses what is not a stream socket, and leaves it. */
    {
        tloop t;
        tloop_init(&t);
        int pfd[2];
        assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
        qmp_conn *c = NULL;
        assert_int_equal(qmp_open_fd(&t.loop, pfd[0], NULL, &c), -EINVAL);
        assert_int_equal(qmp_open_fd(&t.loop, -1, NULL, &c), -EBADF);
        assert_true(fcntl(pfd[0], F_GETFD) >= 0);
        close(pfd[0]);
        close(pfd[1]);
        tloop_finish(&t);
    }
    qv_test_rm_rf(dir);
    free(dir);
}

int main(void) {
    /* As in every libuv program: a peer gone mid-write is an EPIPE, not a
     * signal. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_variants),
        cmocka_unit_test(test_handshake_wrong_id),
        cmocka_unit_test(test_failure_words),
        cmocka_unit_test(test_one_byte_at_a_time),
        cmocka_unit_test(test_many_in_one_write),
        cmocka_unit_test(test_event_between_command_and_reply),
        cmocka_unit_test(test_event_flood_paused),
        cmocka_unit_test(test_late_reply_after_timeout),
        cmocka_unit_test(test_handshake_timeout),
        cmocka_unit_test(test_many_outstanding),
        cmocka_unit_test(test_error_reply),
        cmocka_unit_test(test_answered_commands_leave_no_timer),
        cmocka_unit_test(test_eof_mid_reply),
        cmocka_unit_test(test_oversized_message),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_close_from_reply_callback),
        cmocka_unit_test(test_close_from_other_callbacks),
        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_blockstats),
        cmocka_unit_test(test_blockstats_fast_path),
        cmocka_unit_test(test_large_command),
        cmocka_unit_test(test_listen_and_connect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
