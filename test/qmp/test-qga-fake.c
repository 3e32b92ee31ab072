/* The guest-agent client against a scripted fake agent on a socketpair:
 * resynchronisation past stale bytes and replies, one exchange at a time,
 * resync after timeouts and garbage, the helpers' parsing, guest-shutdown
 * without reply, EOF and closing from callbacks. */
#include "qmptest.h"

#include "qmp/qmp-internal.h"

#include "cleanup.h"
#include "util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct gctx {
    tloop t;
    peer p;
    qga_conn *c;
    int disconnects, disconnect_status;
    int syncs;
    int64_t sync_ids[16];
    bool manual_sync;    /* do not answer syncs */
    bool slow;           /* answer syncs one byte at a time */
    char sync_junk[512]; /* sent before the marker of the next sync answer */
} gctx;

static void on_disconnect(qga_conn *c, int status, void *ud) {
    gctx *g = ud;
    assert_ptr_equal(c, g->c);
    g->disconnects++;
    g->disconnect_status = status;
    assert_int_equal(qga_ping(c, 0, NULL, NULL), -ENOTCONN);
}

static void answer_sync(gctx *g, int64_t id) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s\xff{\"return\": %lld}\n", g->sync_junk, (long long)id);
    g->sync_junk[0] = '\0';
    if (g->slow)
        peer_write_slowly(&g->p, buf);
    else
        peer_writes(&g->p, buf);
}

static void agent_msg(peer *p, json_t *msg, int ff, void *ud) {
    (void)p;
    gctx *g = ud;
    const char *cmd = json_string_value(json_object_get(msg, "execute"));
    assert_non_null(cmd);
    if (strcmp(cmd, "guest-sync-delimited") == 0) {
        /* The client flushes the agent's parser with a 0xFF first. */
        assert_int_equal(ff, 1);
        int64_t id = json_integer_value(json_object_get(json_object_get(msg, "arguments"), "id"));
        assert_true(id > 0);
        assert_true(g->syncs < 16);
        g->sync_ids[g->syncs++] = id;
        if (!g->manual_sync)
            answer_sync(g, id);
    } else {
        assert_int_equal(ff, 0);
    }
}

static void gctx_open(gctx *g) {
    *g = (gctx){0};
    tloop_init(&g->t);
    int fd;
    peer_init(&g->p, &g->t, &fd);
    g->p.auto_caps = false;
    g->p.on_msg = agent_msg;
    g->p.userdata = g;
    qga_options o = {.on_disconnect = on_disconnect, .userdata = g};
    assert_int_equal(qga_open_fd(&g->t.loop, fd, &o, &g->c), 0);
}

static void gctx_finish(gctx *g) {
    qga_close(g->c);
    peer_close(&g->p);
    tloop_finish(&g->t);
}

static void wait_received(gctx *g, int n) {
    assert_true(tloop_wait(&g->t, &g->p.n_received, n, 2000));
}

/* Replies to the n-th received message. */
static void answer(gctx *g, int n, const char *ret) {
    peer_writef(&g->p, "{\"return\": %s, \"id\": %lld}\n", ret, (long long)peer_id(&g->p, n));
}

static void test_sync_skips_stale(void **state) {
    (void)state;
    for (int slow = 0; slow < 2; slow++) {
        gctx g;
        gctx_open(&g);
        g.slow = slow;
        /* Stale output waiting before the client says anything. */
        peer_writes(&g.p, "{\"return\": {}, \"id\": \"old\"}\n\x01\x02 partial {\"ret");
        snprintf(g.sync_junk, sizeof g.sync_junk, "%s",
                 "urn\": 1}\n"
                 "\xff{\"return\": 12345}\n"    /* an earlier client's sync */
                 "{\"return\": {\"stale\": 1}, \"id\": 1}\n" /* our next id */
                 "\xff\xff{\"return\": \"x\"}\n" /* double marker, wrong reply */
                 "\xff{\"return\": 7, \"id\": 2}garbage\n"
                 "\xff{\"error\": {\"class\": \"GenericError\", \"desc\": \"stale\"}}\n");
        reply r;
        reply_init(&r, &g.t);
        assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &r), 0);
        wait_received(&g, 2);
        assert_string_equal(peer_command(&g.p, 0), "guest-sync-delimited");
        assert_string_equal(peer_command(&g.p, 1), "guest-ping");
        answer(&g, 1, "{}");
        assert_true(tloop_wait(&g.t, &r.calls, 1, 5000));
        assert_int_equal(r.status, 0);
        assert_true(json_is_object(r.result));
        assert_int_equal(json_object_size(r.result), 0);
        assert_int_equal(g.syncs, 1);
        assert_int_equal(g.p.ff_total, 1);
        assert_int_equal(g.disconnects, 0);
        reply_done(&r);
        gctx_finish(&g);
    }
}

static void test_one_at_a_time_and_series(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    reply r[3];
    for (int i = 0; i < 3; i++) {
        reply_init(&r[i], &g.t);
        assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &r[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        wait_received(&g, 2 + i);
        /* Nothing else goes out while a command is in flight. */
        tloop_run_for(&g.t, 20);
        assert_int_equal(g.p.n_received, 2 + i);
        assert_string_equal(peer_command(&g.p, 1 + i), "guest-ping");
        answer(&g, 1 + i, "{}");
        assert_true(tloop_wait(&g.t, &r[i].calls, 1, 2000));
        assert_int_equal(r[i].status, 0);
    }
    /* One sync for the whole series... */
    assert_int_equal(g.syncs, 1);
    /* ...and a new one, with a new id, for the next. */
    reply r4;
    reply_init(&r4, &g.t);
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &r4), 0);
    wait_received(&g, 6);
    assert_string_equal(peer_command(&g.p, 4), "guest-sync-delimited");
    assert_int_equal(g.syncs, 2);
    assert_true(g.sync_ids[0] != g.sync_ids[1]);
    answer(&g, 5, "{}");
    assert_true(tloop_wait(&g.t, &r4.calls, 1, 2000));
    assert_int_equal(r4.status, 0);
    for (int i = 0; i < 3; i++)
        reply_done(&r[i]);
    reply_done(&r4);
    gctx_finish(&g);
}

static void test_timeout_then_resync(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    /* A command times out; its late reply must not reach the next one. */
    reply a, b;
    reply_init(&a, &g.t);
    reply_init(&b, &g.t);
    assert_int_equal(qga_ping(g.c, 100, qga_reply_cb_rec, &a), 0);
    wait_received(&g, 2);
    assert_true(tloop_wait(&g.t, &a.calls, 1, 2000));
    assert_int_equal(a.status, QMP_ETIMEDOUT);
    /* The late reply arrives before the next exchange. */
    answer(&g, 1, "{\"late\": true}");
    tloop_run_for(&g.t, 10);
    assert_int_equal(qga_send(g.c, "guest-info", NULL, 0, qga_reply_cb_rec, &b), 0);
    wait_received(&g, 4);
    assert_string_equal(peer_command(&g.p, 2), "guest-sync-delimited");
    assert_string_equal(peer_command(&g.p, 3), "guest-info");
    answer(&g, 3, "{\"version\": \"7.2.22\"}");
    assert_true(tloop_wait(&g.t, &b.calls, 1, 2000));
    assert_int_equal(b.status, 0);
    assert_string_equal(json_string_value(json_object_get(b.result, "version")), "7.2.22");
    assert_int_equal(a.calls, 1);
    reply_done(&a);
    reply_done(&b);

    /* The sync itself times out; its answer comes late, during the next. */
    g.manual_sync = true;
    reply c, d;
    reply_init(&c, &g.t);
    reply_init(&d, &g.t);
    assert_int_equal(qga_ping(g.c, 100, qga_reply_cb_rec, &c), 0);
    wait_received(&g, 5);
    assert_true(tloop_wait(&g.t, &c.calls, 1, 2000));
    assert_int_equal(c.status, QMP_ETIMEDOUT);
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &d), 0);
    wait_received(&g, 6);
    assert_int_equal(g.syncs, 4);
    /* Answers to older syncs, the timed-out one included, are stale. */
    answer_sync(&g, g.sync_ids[1]);
    answer_sync(&g, g.sync_ids[2]);
    tloop_run_for(&g.t, 30);
    assert_int_equal(g.p.n_received, 6); /* still waiting for its own */
    peer_writef(&g.p, "{\"return\": {}, \"id\": %lld}\n", (long long)peer_id(&g.p, 3));
    assert_int_equal(d.calls, 0);
    peer_writef(&g.p, "\xff{\"return\": %lld}\n", (long long)g.sync_ids[3]);
    wait_received(&g, 7);
    assert_string_equal(peer_command(&g.p, 6), "guest-ping");
    /* A stale reply carrying another id is skipped, the right one taken. */
    peer_writef(&g.p, "{\"return\": {\"stale\": 1}, \"id\": 424242}\n");
    answer(&g, 6, "{\"ok\": 1}");
    assert_true(tloop_wait(&g.t, &d.calls, 1, 2000));
    assert_int_equal(d.status, 0);
    assert_int_equal(json_integer_value(json_object_get(d.result, "ok")), 1);
    assert_int_equal(c.calls, 1);
    reply_done(&c);
    reply_done(&d);

    /* A timeout inside a series: the next command is resynchronised too,
     * and the late reply is skipped even without an id. */
    g.manual_sync = false;
    reply e, f;
    reply_init(&e, &g.t);
    reply_init(&f, &g.t);
    assert_int_equal(qga_ping(g.c, 100, qga_reply_cb_rec, &e), 0);
    assert_int_equal(qga_send(g.c, "guest-info", NULL, 0, qga_reply_cb_rec, &f), 0);
    wait_received(&g, 9);
    assert_string_equal(peer_command(&g.p, 7), "guest-sync-delimited");
    assert_string_equal(peer_command(&g.p, 8), "guest-ping");
    assert_true(tloop_wait(&g.t, &e.calls, 1, 2000));
    assert_int_equal(e.status, QMP_ETIMEDOUT);
    peer_writes(&g.p, "{\"return\": {\"late\": 1}}\n");
    wait_received(&g, 11);
    assert_string_equal(peer_command(&g.p, 9), "guest-sync-delimited");
    assert_string_equal(peer_command(&g.p, 10), "guest-info");
    answer(&g, 10, "{\"version\": \"x\"}");
    assert_true(tloop_wait(&g.t, &f.calls, 1, 2000));
    assert_int_equal(f.status, 0);
    assert_string_equal(json_string_value(json_object_get(f.result, "version")), "x");
    reply_done(&e);
    reply_done(&f);
    assert_int_equal(g.disconnects, 0);
    gctx_finish(&g);
}

static void test_garbage_reply(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    reply a, b, c;
    reply_init(&a, &g.t);
    reply_init(&b, &g.t);
    reply_init(&c, &g.t);
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &a), 0);
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &b), 0);
    wait_received(&g, 2);
    peer_writes(&g.p, "{\"return\": \xff\xfe oops\n");
    assert_true(tloop_wait(&g.t, &a.calls, 1, 2000));
    assert_int_equal(a.status, QMP_EPROTO);
    /* The next command resynchronises first. */
    wait_received(&g, 4);
    assert_string_equal(peer_command(&g.p, 2), "guest-sync-delimited");
    answer(&g, 3, "{}");
    assert_true(tloop_wait(&g.t, &b.calls, 1, 2000));
    assert_int_equal(b.status, 0);

    /* An oversized reply fails its command; the stream recovers.  Only
     * guest-exec-status and guest-file-read may get QGA_MAX_MESSAGE: a
     * ping's reply is held to QMP_MAX_MESSAGE. */
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &c), 0);
    wait_received(&g, 6);
    size_t big = QMP_MAX_MESSAGE + 100;
    char *buf = malloc(big);
    if (!buf)
        abort();
    memset(buf, 'z', big);
    memcpy(buf, "{\"return\": \"", 12);
    peer_write(&g.p, buf, big);
    free(buf);
    assert_true(tloop_wait(&g.t, &c.calls, 1, 10000));
    assert_int_equal(c.status, QMP_EPROTO);
    reply d;
    reply_init(&d, &g.t);
    peer_writes(&g.p, "zzzz\"}\n");
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &d), 0);
    wait_received(&g, 8);
    answer(&g, 7, "{}");
    assert_true(tloop_wait(&g.t, &d.calls, 1, 2000));
    assert_int_equal(d.status, 0);
    assert_int_equal(g.syncs, 4);
    assert_int_equal(g.disconnects, 0);
    reply_done(&a);
    reply_done(&b);
    reply_done(&c);
    reply_done(&d);
    gctx_finish(&g);
}

/* guest-file-read may bring up to QGA_MAX_MESSAGE; the limit goes back
 * down once it is answered, so the next command's oversized reply fails. */
static void test_large_reply_only_when_asked(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    reply a, b;
    reply_init(&a, &g.t);
    reply_init(&b, &g.t);
    json_t *args = json_pack("{s:i, s:i}", "handle", 1, "count", 1 << 24); /* qga_send copies it */
    assert_int_equal(qga_send(g.c, "guest-file-read", args, 0, qga_reply_cb_rec, &a), 0);
    json_decref(args);
    wait_received(&g, 2);
    size_t n = QMP_MAX_MESSAGE + (2u << 20); /* over the ordinary limit, under the large one */
    char *buf = malloc(n + 128);
    if (!buf)
        abort();
    int h = snprintf(buf, 128, "{\"id\": %lld, \"return\": {\"count\": 0, \"eof\": true, \"buf-b64\": \"",
                     (long long)peer_id(&g.p, 1));
    memset(buf + h, 'A', n);
    memcpy(buf + h + n, "\"}}\n", 4);
    peer_write(&g.p, buf, (size_t)h + n + 4);
    assert_true(tloop_wait(&g.t, &a.calls, 1, 10000));
    assert_int_equal(a.status, 0);
    /* the same size for a ping: refused */
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &b), 0);
    wait_received(&g, 4); /* a new series: sync, then the ping */
    assert_string_equal(peer_command(&g.p, 3), "guest-ping");
    h = snprintf(buf, 128, "{\"id\": %lld, \"return\": \"", (long long)peer_id(&g.p, 3));
    memset(buf + h, 'A', n);
    memcpy(buf + h + n, "\"}\n", 3);
    peer_write(&g.p, buf, (size_t)h + n + 3);
    free(buf);
    assert_true(tloop_wait(&g.t, &b.calls, 1, 10000));
    assert_int_equal(b.status, QMP_EPROTO);
    assert_int_equal(g.disconnects, 0);
    reply_done(&a);
    reply_done(&b);
    gctx_finish(&g);
}

/* ---- helpers ---- */

typedef struct info_rec {
    int calls, status;
    char version[64];
    size_t n_commands;
    char error_class[64];
} info_rec;

static void info_cb(qga_conn *c, int status, const char *version, json_t *result, const qmp_error *err,
                    void *ud) {
    (void)c;
    info_rec *r = ud;
    r->calls++;
    r->status = status;
    if (version)
        snprintf(r->version, sizeof r->version, "%s", version);
    r->n_commands = json_array_size(json_object_get(result, "supported_commands"));
    if (err)
        snprintf(r->error_class, sizeof r->error_class, "%s", err->error_class);
}

typedef struct ifaces_rec {
    int calls, status;
    json_t *list; /* [{"name","mac","addrs":["fam/addr/prefix"]}] */
} ifaces_rec;

static void ifaces_cb(qga_conn *c, int status, const qga_interface *ifs, size_t n, const qmp_error *err, void *ud) {
    (void)c;
    (void)err;
    ifaces_rec *r = ud;
    r->calls++;
    r->status = status;
    r->list = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *addrs = json_array();
        for (size_t j = 0; j < ifs[i].n_addrs; j++) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s %s/%u", ifs[i].addrs[j].family == AF_INET ? "inet" : "inet6",
                     ifs[i].addrs[j].address, ifs[i].addrs[j].prefix);
            json_array_append_new(addrs, json_string(buf));
        }
        json_array_append_new(r->list,
                              json_pack("{ss ss* so}", "name", ifs[i].name, "mac", ifs[i].mac, "addrs", addrs));
    }
}

static void test_helpers(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    info_rec info = {0}, info_err = {0};
    ifaces_rec ifs = {0}, ifs_bad = {0}, ifs_bad2 = {0};
    assert_int_equal(qga_info(g.c, 0, info_cb, &info), 0);
    assert_int_equal(qga_info(g.c, 0, info_cb, &info_err), 0);
    assert_int_equal(qga_network_get_interfaces(g.c, 0, ifaces_cb, &ifs), 0);
    assert_int_equal(qga_network_get_interfaces(g.c, 0, ifaces_cb, &ifs_bad), 0);
    assert_int_equal(qga_network_get_interfaces(g.c, 0, ifaces_cb, &ifs_bad2), 0);
    wait_received(&g, 2);
    assert_string_equal(peer_command(&g.p, 1), "guest-info");
    answer(&g, 1,
           "{\"version\": \"7.2.22\", \"supported_commands\": [{\"enabled\": true, \"name\": \"guest-ping\", "
           "\"success-response\": true}, {\"enabled\": false, \"name\": \"guest-shutdown\", "
           "\"success-response\": false}]}");
    wait_received(&g, 3);
    peer_writef(&g.p,
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Command guest-info has been disabled\"}, "
                "\"id\": %lld}\n",
                (long long)peer_id(&g.p, 2));
    wait_received(&g, 4);
    assert_string_equal(peer_command(&g.p, 3), "guest-network-get-interfaces");
    answer(&g, 3,
           "[{\"name\": \"lo\", \"ip-addresses\": [{\"ip-address-type\": \"ipv4\", \"ip-address\": \"127.0.0.1\", "
           "\"prefix\": 8}, {\"ip-address-type\": \"ipv6\", \"ip-address\": \"::1\", \"prefix\": 128}], "
           "\"statistics\": {\"tx-packets\": 29}, \"hardware-address\": \"00:00:00:00:00:00\"}, "
           "{\"name\": \"ifb0\", \"hardware-address\": \"da:23:38:e2:56:ea\"}, "
           "{\"name\": \"eth0\", \"ip-addresses\": [{\"ip-address-type\": \"ipv4\", \"ip-address\": "
           "\"192.0.2.2\", \"prefix\": 24}, {\"ip-address-type\": \"ipv6\", \"ip-address\": \"fe80::fc:ff:fe00:1\", "
           "\"prefix\": 64}], \"hardware-address\": \"02:fc:00:00:00:01\"}, "
           "{\"name\": \"tun0\"}]");
    wait_received(&g, 5);
    answer(&g, 4, "[{\"name\": \"eth0\", \"ip-addresses\": [{\"ip-address-type\": \"ipv4\", \"ip-address\": "
                  "\"192.0.2.2\", \"prefix\": 33}]}]");
    wait_received(&g, 6);
    answer(&g, 5, "{\"name\": \"eth0\"}");
    assert_true(tloop_wait(&g.t, &ifs_bad2.calls, 1, 2000));

    assert_int_equal(info.status, 0);
    assert_string_equal(info.version, "7.2.22");
    assert_int_equal(info.n_commands, 2);
    assert_int_equal(info_err.status, QMP_ECOMMAND);
    assert_string_equal(info_err.error_class, "CommandNotFound");

    assert_int_equal(ifs.status, 0);
    json_t *want = json_loads(
        "[{\"name\": \"lo\", \"mac\": \"00:00:00:00:00:00\", \"addrs\": [\"inet 127.0.0.1/8\", \"inet6 ::1/128\"]},"
        " {\"name\": \"ifb0\", \"mac\": \"da:23:38:e2:56:ea\", \"addrs\": []},"
        " {\"name\": \"eth0\", \"mac\": \"02:fc:00:00:00:01\", \"addrs\": [\"inet 192.0.2.2/24\", "
        "\"inet6 fe80::fc:ff:fe00:1/64\"]},"
        " {\"name\": \"tun0\", \"addrs\": []}]",
        0, NULL);
    assert_non_null(want);
    if (!json_equal(want, ifs.list)) {
        char *s = json_dumps(ifs.list, 0);
        fail_msg("interfaces: %s", s);
    }
    json_decref(want);
    assert_int_equal(ifs_bad.status, QMP_EBADREPLY);
    assert_int_equal(ifs_bad2.status, QMP_EBADREPLY);
    json_decref(ifs.list);
    json_decref(ifs_bad.list);
    json_decref(ifs_bad2.list);
    /* One series: one sync. */
    assert_int_equal(g.syncs, 1);
    gctx_finish(&g);
}

/* A compromised guest's agent: escape sequences and spaces in addresses and
 * names, names too long, more interfaces or addresses than anyone has.  Each
 * reply is refused whole; a valid one comes out in inet_ntop's form. */
static void test_hostile_interfaces(void **state) {
    (void)state;
    static const char *const hostile[] = {
        "[{\"name\": \"eth0\", \"ip-addresses\": [{\"ip-address-type\": \"ipv4\", \"ip-address\": "
        "\"\\u001b]0;pwned\\u0007\\u001b[2J10.0.0.1 evil\", \"prefix\": 24}]}]",
        "[{\"name\": \"eth0\", \"ip-addresses\": [{\"ip-address-type\": \"ipv4\", \"ip-address\": "
        "\"10.0.0.1 \", \"prefix\": 24}]}]",
        "[{\"name\": \"eth0\", \"ip-addresses\": [{\"ip-address-type\": \"ipv6\", \"ip-address\": "
        "\"10.0.0.1\", \"prefix\": 64}]}]",
        "[{\"name\": \"eth\\u001b[31m0\"}]",
        "[{\"name\": \"eth\\u009b0\"}]",
        "[{\"name\": \"\"}]",
        "[{\"name\": \"eth0\", \"hardware-address\": \"52:54:00:12:34:56\\u001b[2J\"}]",
        "[{\"name\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}]", /* 65 */
    };
    enum { N_HOSTILE = sizeof hostile / sizeof *hostile };
    gctx g;
    gctx_open(&g);
    ifaces_rec rec[N_HOSTILE + 3] = {0};
    for (size_t i = 0; i < N_HOSTILE + 3; i++)
        assert_int_equal(qga_network_get_interfaces(g.c, 0, ifaces_cb, &rec[i]), 0);
    for (size_t i = 0; i < N_HOSTILE; i++) {
        wait_received(&g, (int)i + 2);
        answer(&g, (int)i + 1, hostile[i]);
    }
    /* too many interfaces, too many addresses on one */
    size_t big = 300 * 40 + 64;
    char *many = malloc(big), *p = many;
    p += sprintf(p, "[");
    for (int i = 0; i < QGA_MAX_INTERFACES + 1; i++)
        p += sprintf(p, "%s{\"name\": \"e%d\"}", i ? ", " : "", i);
    sprintf(p, "]");
    wait_received(&g, N_HOSTILE + 2);
    answer(&g, N_HOSTILE + 1, many);
    p = many;
    p += sprintf(p, "[{\"name\": \"eth0\", \"ip-addresses\": [");
    for (int i = 0; i < QGA_MAX_ADDRESSES + 1; i++)
        p += sprintf(p, "%s{\"ip-address-type\": \"ipv4\", \"ip-address\": \"10.0.0.%d\", \"prefix\": 8}",
                     i ? ", " : "", i);
    sprintf(p, "]}]");
    wait_received(&g, N_HOSTILE + 3);
    answer(&g, N_HOSTILE + 2, many);
    free(many);
    /* valid, written oddly: comes out canonical */
    wait_received(&g, N_HOSTILE + 4);
    answer(&g, N_HOSTILE + 3,
           "[{\"name\": \"Ethernet 2\", \"hardware-address\": \"52:54:00:AB:cd:ef\", \"ip-addresses\": "
           "[{\"ip-address-type\": \"ipv6\", \"ip-address\": \"FE80:0:0:0:0:0:0:0001\", \"prefix\": 64}, "
           "{\"ip-address-type\": \"ipv6\", \"ip-address\": \"::ffff:10.0.0.1\", \"prefix\": 128}]}]");
    assert_true(tloop_wait(&g.t, &rec[N_HOSTILE + 2].calls, 1, 2000));
    for (size_t i = 0; i < N_HOSTILE + 2; i++) {
        if (rec[i].status != QMP_EBADREPLY)
            fail_msg("reply %zu accepted: %s", i, json_dumps(rec[i].list, 0));
        json_decref(rec[i].list);
    }
    assert_int_equal(rec[N_HOSTILE + 2].status, 0);
    json_t *want = json_loads("[{\"name\": \"Ethernet 2\", \"mac\": \"52:54:00:AB:cd:ef\", \"addrs\": "
                              "[\"inet6 fe80::1/64\", \"inet6 ::ffff:10.0.0.1/128\"]}]",
                              0, NULL);
    if (!json_equal(want, rec[N_HOSTILE + 2].list))
        fail_msg("interfaces: %s", json_dumps(rec[N_HOSTILE + 2].list, 0));
    json_decref(want);
    json_decref(rec[N_HOSTILE + 2].list);
    gctx_finish(&g);
}

static void test_shutdown_without_reply(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    reply s, p;
    reply_init(&s, &g.t);
    reply_init(&p, &g.t);
    assert_int_equal(qga_shutdown(g.c, "powerdown", 1000, qga_reply_cb_rec, &s), 0);
    assert_int_equal(qga_shutdown(g.c, "bogus\xff", 1000, NULL, NULL), -EINVAL);
    wait_received(&g, 2);
    assert_true(tloop_wait(&g.t, &s.calls, 1, 2000));
    assert_int_equal(s.status, 0);
    json_t *m = json_array_get(g.p.received, 1);
    assert_string_equal(json_string_value(json_object_get(m, "execute")), "guest-shutdown");
    assert_string_equal(json_string_value(json_object_get(json_object_get(m, "arguments"), "mode")), "powerdown");
    /* Had it been refused, the error is stale for the next exchange. */
    peer_writef(&g.p, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"disabled\"}, \"id\": %lld}\n",
                (long long)peer_id(&g.p, 1));
    tloop_run_for(&g.t, 10);
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &p), 0);
    wait_received(&g, 4);
    assert_string_equal(peer_command(&g.p, 2), "guest-sync-delimited");
    answer(&g, 3, "{}");
    assert_true(tloop_wait(&g.t, &p.calls, 1, 2000));
    assert_int_equal(p.status, 0);
    assert_int_equal(s.calls, 1);
    reply_done(&s);
    reply_done(&p);
    gctx_finish(&g);
}

static void test_eof(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    reply r[2];
    for (int i = 0; i < 2; i++) {
        reply_init(&r[i], &g.t);
        assert_int_equal(qga_ping(g.c, i ? 60000 : 0, qga_reply_cb_rec, &r[i]), 0);
    }
    wait_received(&g, 2);
    peer_writes(&g.p, "{\"return\": {");
    peer_eof(&g.p);
    assert_true(tloop_wait(&g.t, &g.disconnects, 1, 2000));
    assert_int_equal(g.disconnect_status, QMP_EDISCONNECTED);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, QMP_EDISCONNECTED);
        reply_done(&r[i]);
    }
    assert_int_equal(qga_ping(g.c, 0, NULL, NULL), -ENOTCONN);
    tloop_run_for(&g.t, 10);
    assert_int_equal(g.disconnects, 1);
    gctx_finish(&g);
    assert_int_equal(g.disconnects, 1);
}

typedef struct close_rec {
    reply r;
    qga_conn *close_conn;
} close_rec;

static void close_cb(qga_conn *c, int status, json_t *result, const qmp_error *err, void *ud) {
    close_rec *cr = ud;
    qga_reply_cb_rec(c, status, result, err, &cr->r);
    if (cr->close_conn) {
        qga_close(cr->close_conn);
        assert_int_equal(qga_ping(c, 0, NULL, NULL), -ENOTCONN);
    }
}

static void test_close_from_callback(void **state) {
    (void)state;
    gctx g;
    gctx_open(&g);
    close_rec a = {0}, b = {0};
    reply_init(&a.r, &g.t);
    reply_init(&b.r, &g.t);
    a.close_conn = g.c;
    assert_int_equal(qga_ping(g.c, 0, close_cb, &a), 0);
    assert_int_equal(qga_ping(g.c, 0, close_cb, &b), 0);
    wait_received(&g, 2);
    /* Its reply and a stray one in the same read. */
    peer_writef(&g.p, "{\"return\": {}, \"id\": %lld}\n{\"return\": {}}\n", (long long)peer_id(&g.p, 1));
    assert_true(tloop_wait(&g.t, &a.r.calls, 1, 2000));
    assert_int_equal(a.r.status, 0);
    assert_int_equal(b.r.calls, 1);
    assert_int_equal(b.r.status, QMP_ECANCELED);
    tloop_run_for(&g.t, 10);
    assert_int_equal(g.disconnects, 0);
    reply_done(&a.r);
    reply_done(&b.r);
    peer_close(&g.p);
    tloop_finish(&g.t);

    /* Closing with commands queued, from outside. */
    gctx_open(&g);
    reply r;
    reply_init(&r, &g.t);
    assert_int_equal(qga_ping(g.c, 10, qga_reply_cb_rec, &r), 0);
    qga_close(g.c);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, QMP_ECANCELED);
    tloop_run_for(&g.t, 30);
    assert_int_equal(r.calls, 1);
    reply_done(&r);
    peer_close(&g.p);
    tloop_finish(&g.t);
}

static void test_connect(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("qga-connect");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/qga.sock", dir);
    int lfd;
    assert_int_equal(qmp_listen_socket(path, &lfd), 0);
    gctx g = {0};
    tloop_init(&g.t);
    qga_options o = {.on_disconnect = on_disconnect, .userdata = &g};
    assert_int_equal(qga_connect(&g.t.loop, path, &o, &g.c), 0);
    reply r;
    reply_init(&r, &g.t);
    assert_int_equal(qga_ping(g.c, 5000, qga_reply_cb_rec, &r), 0);
    tloop_run_for(&g.t, 10);
    int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(afd >= 0);
    peer_init_fd(&g.p, &g.t, afd);
    g.p.auto_caps = false;
    g.p.on_msg = agent_msg;
    g.p.userdata = &g;
    wait_received(&g, 2);
    answer(&g, 1, "{}");
    assert_true(tloop_wait(&g.t, &r.calls, 1, 2000));
    assert_int_equal(r.status, 0);
    reply_done(&r);
    gctx_finish(&g);
    close(lfd);

    /* Nobody there. */
    tloop_init(&g.t);
    g.disconnects = 0;
    unlink(path);
    assert_int_equal(qga_connect(&g.t.loop, path, &o, &g.c), 0);
    reply_init(&r, &g.t);
    assert_int_equal(qga_ping(g.c, 0, qga_reply_cb_rec, &r), 0);
    assert_true(tloop_wait(&g.t, &g.disconnects, 1, 2000));
    assert_int_equal(g.disconnect_status, -ENOENT);
    assert_int_equal(r.status, -ENOENT);
    reply_done(&r);
    qga_close(g.c);
    tloop_finish(&g.t);
    qv_test_rm_rf(dir);
    free(dir);
}

int main(void) {
    /* As in every libuv program: a peer gone mid-write is an EPIPE, not a
     * signal. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_skips_stale),
        cmocka_unit_test(test_one_at_a_time_and_series),
        cmocka_unit_test(test_timeout_then_resync),
        cmocka_unit_test(test_garbage_reply),
        cmocka_unit_test(test_large_reply_only_when_asked),
        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_hostile_interfaces),
        cmocka_unit_test(test_shutdown_without_reply),
        cmocka_unit_test(test_eof),
        cmocka_unit_test(test_close_from_callback),
        cmocka_unit_test(test_connect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
