/* The metrics endpoint (supervisor/metrics/http.c) with real HTTP over
 * loopback and a unix socket, against a fake source of text: answers,
 * refusals, bad and slow clients, a stop while a text is being made, the
 * listening socket's errors, and no timer left armed once idle.  The
 * clients run on a thread of their own; the server on the test's loop. */
#include "testlib.h"

#include "cleanup.h"
#include "supervisor/metrics/expo.h"
#include "supervisor/metrics/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- a fake source: the text after delay_ms (0: at once, inside start) ---- */

typedef struct fake {
    uv_loop_t *loop;
    uint64_t delay_ms;
    int fail;      /* a negative errno to fail with, 0 to answer */
    int started, cancelled, answered;
} fake;

typedef struct fake_job {
    uv_timer_t timer;
    fake *f;
    sv_metrics_text_fn done;
    void *done_data;
} fake_job;

static void answer(fake *f, sv_metrics_text_fn done, void *done_data) {
    f->answered++;
    if (f->fail)
        done(f->fail, NULL, 0, done_data);
    else
        done(0, strdup("qvisor_fake 1\n"), strlen("qvisor_fake 1\n"), done_data);
}

static void job_closed(uv_handle_t *h) {
    free(h->data);
}

static void on_job_timer(uv_timer_t *t) {
    fake_job *j = t->data;
    answer(j->f, j->done, j->done_data);
    uv_close((uv_handle_t *)&j->timer, job_closed);
}

static void *fake_start(void *userdata, sv_metrics_text_fn done, void *done_data) {
    fake *f = userdata;
    f->started++;
    if (!f->delay_ms) {
        answer(f, done, done_data);
        return NULL;
    }
    fake_job *j = calloc(1, sizeof *j);
    assert_non_null(j);
    *j = (fake_job){.f = f, .done = done, .done_data = done_data};
    uv_timer_init(f->loop, &j->timer);
    j->timer.data = j;
    uv_timer_start(&j->timer, on_job_timer, f->delay_ms, 0);
    return j;
}

static void fake_cancel(void *handle) {
    fake_job *j = handle;
    j->f->cancelled++;
    uv_close((uv_handle_t *)&j->timer, job_closed);
}

/* ---- the test's loop and its clients ---------------------------------------------- */

typedef struct client {
    pthread_t thread;
    char target[128]; /* "127.0.0.1:PORT" or a socket path */
    const char *send; /* request bytes (NULL: send nothing) */
    size_t send_len;
    int hold_ms;      /* keep the connection this long before reading */
    char *reply;      /* what came back until EOF */
    size_t reply_len;
    int error;        /* errno of connect or I/O */
    atomic_bool done;
} client;

static int connect_to(const char *target) {
    int fd;
    if (target[0] == '/') {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", target);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_port = htons((uint16_t)atoi(strchr(target, ':') + 1));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *client_main(void *arg) {
    client *c = arg;
    int fd = connect_to(c->target);
    if (fd < 0) {
        c->error = errno;
        atomic_store(&c->done, true);
        return NULL;
    }
    struct timeval tv = {.tv_sec = (time_t)(qv_test_timeout_ms(20000) / 1000)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (size_t off = 0; c->send && off < c->send_len;) {
        ssize_t n = send(fd, c->send + off, c->send_len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            c->error = n < 0 ? errno : EPIPE;
            break;
        }
        off += (size_t)n;
    }
    if (c->hold_ms)
        usleep((useconds_t)c->hold_ms * 1000);
    size_t cap = 1 << 16;
    c->reply = calloc(1, cap);
    for (;;) {
        if (c->reply_len + 1 >= cap)
            c->reply = realloc(c->reply, cap *= 2);
        ssize_t n = recv(fd, c->reply + c->reply_len, cap - c->reply_len - 1, 0);
        if (n <= 0) {
            if (n < 0 && errno != ECONNRESET)
                c->error = errno;
            break;
        }
        c->reply_len += (size_t)n;
        c->reply[c->reply_len] = '\0';
    }
    close(fd);
    atomic_store(&c->done, true);
    return NULL;
}

/* Sends len bytes of send (SIZE_MAX: the string), then reads until EOF. */
static void client_start_n(client *c, const char *target, const char *send, size_t len, int hold_ms) {
    memset(c, 0, sizeof *c);
    snprintf(c->target, sizeof c->target, "%s", target);
    c->send = send;
    c->send_len = !send ? 0 : len == SIZE_MAX ? strlen(send) : len;
    c->hold_ms = hold_ms;
    assert_int_equal(pthread_create(&c->thread, NULL, client_main, c), 0);
}

static void client_start(client *c, const char *target, const char *send) {
    client_start_n(c, target, send, SIZE_MAX, 0);
}

static void client_join(client *c) {
    pthread_join(c->thread, NULL);
}

static void client_free(client *c) {
    free(c->reply);
    c->reply = NULL;
}

static void on_tick(uv_timer_t *t) {
    (void)t; /* only wakes the loop to look at the flags */
}

/* Runs the loop until every client is done (fails after a while). */
static void run_until_done(uv_loop_t *loop, client **cs, size_t n) {
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    uint64_t deadline = uv_now(loop) + qv_test_timeout_ms(20000);
    for (;;) {
        bool all = true;
        for (size_t i = 0; i < n; i++)
            all = all && atomic_load(&cs[i]->done);
        if (all)
            break;
        assert_true(uv_now(loop) < deadline);
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void run_for(uv_loop_t *loop, uint64_t ms) {
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    uint64_t end = uv_now(loop) + ms;
    while (uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* One request, served on the loop: the whole reply (caller frees). */
static char *request(uv_loop_t *loop, const char *target, const char *req) {
    client c;
    client_start(&c, target, req);
    client *cs[] = {&c};
    run_until_done(loop, cs, 1);
    client_join(&c);
    assert_int_equal(c.error, 0);
    return c.reply;
}

static const char GET[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/* A free loopback port (bound and released: good enough for a test). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    return ntohs(sa.sin_port);
}

typedef struct env {
    uv_loop_t loop;
    fake f;
    sv_metrics_server *s;
    char target[128];
} env;

static int env_setup(void **state) {
    env *e = calloc(1, sizeof *e);
    uv_loop_init(&e->loop);
    e->f.loop = &e->loop;
    snprintf(e->target, sizeof e->target, "127.0.0.1:%d", free_port());
    sv_metrics_source src = {.start = fake_start, .cancel = fake_cancel, .userdata = &e->f};
    qv_error err = {0};
    int r = sv_metrics_server_new(&e->loop, e->target, (gid_t)-1, &src, &e->s, &err);
    if (r == -EOPNOTSUPP) {
        print_message("# SKIP: %s\n", err.msg);
        free(e);
        *state = NULL;
        return 0;
    }
    assert_int_equal(r, 0);
    *state = e;
    return 0;
}

/* Every test ends by closing the server and finding the loop empty. */
static int env_teardown(void **state) {
    env *e = *state;
    if (!e)
        return 0;
    sv_metrics_server_close(e->s);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    free(e);
    return 0;
}

#define ENV()          \
    env *e = *state;   \
    if (!e)            \
        skip();

static void assert_ok_reply(const char *reply) {
    if (strncmp(reply, "HTTP/1.1 200 OK\r\n", 17) != 0)
        fail_msg("reply: %s", reply);
    assert_non_null(strstr(reply, "Content-Type: " SV_EXPO_CONTENT_TYPE "\r\n"));
    assert_non_null(strstr(reply, "Connection: close\r\n"));
    assert_non_null(strstr(reply, "\r\n\r\nqvisor_fake 1\n"));
}

static void assert_status(const char *reply, const char *status) {
    if (strncmp(reply, status, strlen(status)) != 0)
        fail_msg("reply '%.200s', want it to start with '%s'", reply, status);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_get(void **state) {
    ENV();
    _cleanup_free_ char *r = request(&e->loop, e->target, GET);
    assert_ok_reply(r); /* read until EOF: the server closed after it */
    assert_int_equal(e->f.started, 1);
    _cleanup_free_ char *head = request(&e->loop, e->target, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_status(head, "HTTP/1.1 200 OK\r\n");
    assert_null(strstr(head, "qvisor_fake"));
    _cleanup_free_ char *v10 = request(&e->loop, e->target, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_status(v10, "HTTP/1.1 200 OK\r\n");
    /* a body with a GET is read and ignored */
    _cleanup_free_ char *body =
        request(&e->loop, e->target, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_ok_reply(body);
    assert_int_equal(e->f.started, 4);
}

static void test_refusals(void **state) {
    ENV();
    _cleanup_free_ char *post = request(&e->loop, e->target, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    assert_status(post, "HTTP/1.1 405 ");
    assert_non_null(strstr(post, "Allow: GET, HEAD\r\n"));
    _cleanup_free_ char *nf = request(&e->loop, e->target, "GET /metrics/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_status(nf, "HTTP/1.1 404 ");
    _cleanup_free_ char *root = request(&e->loop, e->target, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_status(root, "HTTP/1.1 200 ");
    assert_non_null(strstr(root, "/metrics"));
    assert_non_null(strstr(root, "Content-Type: text/plain; charset=utf-8\r\n"));
    assert_int_equal(e->f.started, 0); /* none of these made a text */
}

/* Malformed requests and a huge header: an error or a closed connection,
 * and the next scrape works. */
static void test_bad_input(void **state) {
    ENV();
#define REQ(s) {s, sizeof s - 1}
    static const struct {
        const char *bytes;
        size_t len;
    } bad[] = {
        REQ("GARBAGE\r\n\r\n"),
        REQ("GET\r\n\r\n"),
        REQ("GET /metrics HTTP/9.9\r\n\r\n"),
        REQ("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n"),
        REQ("GET /metrics HTTP/1.1\r\n\r\n"), /* HTTP/1.1 without Host */
        REQ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), /* a TLS ClientHello */
        REQ("GET /me\x00trics HTTP/1.1\r\nHost: x\r\n\r\n"),
        REQ("\r\n\r\n\r\n"),
    };
#undef REQ
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        client c;
        client_start_n(&c, e->target, bad[i].bytes, bad[i].len, 0);
        client *cs[] = {&c};
        run_until_done(&e->loop, cs, 1);
        client_join(&c);
        if (c.reply_len && strncmp(c.reply, "HTTP/1.1 200", 12) == 0)
            fail_msg("bad request %zu answered 200: %s", i, c.reply);
        client_free(&c);
        _cleanup_free_ char *ok = request(&e->loop, e->target, GET);
        assert_ok_reply(ok);
    }
    assert_int_equal(e->f.started, (int)(sizeof bad / sizeof bad[0]));
    /* a header far beyond the connection's 32 KiB */
    size_t big = 256 * 1024;
    _cleanup_free_ char *huge = malloc(big + 64);
    int n = snprintf(huge, 64, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(huge + n, 'a', big);
    strcpy(huge + n + big, "\r\n\r\n");
    client c;
    client_start(&c, e->target, huge);
    client *cs[] = {&c};
    run_until_done(&e->loop, cs, 1);
    client_join(&c);
    assert_status(c.reply, "HTTP/1.1 431 ");
    client_free(&c);
    _cleanup_free_ char *ok = request(&e->loop, e->target, GET);
    assert_ok_reply(ok);
}

/* Clients that connect and send nothing, or half a request, do not keep a
 * scrape from being answered; the server closes with them still there. */
static void test_slow_clients(void **state) {
    ENV();
    client silent[3], half;
    for (int i = 0; i < 3; i++)
        client_start(&silent[i], e->target, NULL);
    client_start(&half, e->target, "GET /metr");
    run_for(&e->loop, 100);
    _cleanup_free_ char *ok = request(&e->loop, e->target, GET);
    assert_ok_reply(ok);
    /* the server goes; every slow client sees its connection end */
    sv_metrics_server_close(e->s);
    e->s = NULL;
    client *cs[] = {&silent[0], &silent[1], &silent[2], &half};
    run_until_done(&e->loop, cs, 4);
    for (int i = 0; i < 4; i++) {
        client_join(cs[i]);
        assert_int_equal(cs[i]->reply_len, 0);
        client_free(cs[i]);
    }
}

/* More connections than the endpoint takes: MHD stops accepting at its
 * limit, and must start again once they are gone (it only does so at the
 * start of a run, which the server has to give it). */
static void test_connection_limit(void **state) {
    ENV();
    for (int round = 0; round < 3; round++) {
        int fds[48];
        for (int i = 0; i < 48; i++) {
            fds[i] = connect_to(e->target);
            assert_true(fds[i] >= 0);
        }
        run_for(&e->loop, 100);
        for (int i = 0; i < 48; i++)
            close(fds[i]);
        _cleanup_free_ char *r = request(&e->loop, e->target, GET);
        assert_ok_reply(r);
    }
}

/* Texts made later on the loop (as when QEMU answers): several scrapes at
 * once each get theirs. */
static void test_concurrent_async(void **state) {
    ENV();
    e->f.delay_ms = 100;
    client c[5];
    client *cs[5];
    for (int i = 0; i < 5; i++) {
        client_start(&c[i], e->target, GET);
        cs[i] = &c[i];
    }
    run_until_done(&e->loop, cs, 5);
    for (int i = 0; i < 5; i++) {
        client_join(&c[i]);
        assert_ok_reply(c[i].reply);
        client_free(&c[i]);
    }
    assert_int_equal(e->f.started, 5);
    assert_int_equal(e->f.answered, 5);
    assert_int_equal(e->f.cancelled, 0);
}

static void test_source_fails(void **state) {
    ENV();
    e->f.fail = -EIO;
    _cleanup_free_ char *r = request(&e->loop, e->target, GET);
    assert_status(r, "HTTP/1.1 503 ");
    assert_non_null(strstr(r, "metrics unavailable"));
}

/* The daemon stops while a text is being made: it is cancelled and the
 * client's connection ends without an answer. */
static void test_close_while_waiting(void **state) {
    ENV();
    e->f.delay_ms = 60000;
    client c;
    client_start(&c, e->target, GET);
    uv_timer_t tick;
    uv_timer_init(&e->loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    uint64_t deadline = uv_now(&e->loop) + qv_test_timeout_ms(10000);
    while (e->f.started == 0) {
        assert_true(uv_now(&e->loop) < deadline);
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&tick, NULL);
    sv_metrics_server_close(e->s);
    e->s = NULL;
    assert_int_equal(e->f.cancelled, 1);
    client *cs[] = {&c};
    run_until_done(&e->loop, cs, 1);
    client_join(&c);
    assert_null(c.reply_len ? strstr(c.reply, "200 OK") : NULL);
    client_free(&c);
}

/* Between scrapes nothing is armed: no timer, so the daemon sleeps. */
static void count_timers(uv_handle_t *h, void *arg) {
    if (h->type == UV_TIMER && uv_is_active(h))
        (*(int *)arg)++;
}

static void test_idle_arms_nothing(void **state) {
    ENV();
    int timers = 0;
    uv_walk(&e->loop, count_timers, &timers);
    assert_int_equal(timers, 0);
    e->f.delay_ms = 20;
    for (int i = 0; i < 3; i++) {
        _cleanup_free_ char *r = request(&e->loop, e->target, GET);
        assert_ok_reply(r);
    }
    run_for(&e->loop, 50); /* MHD finishes closing */
    timers = 0;
    uv_walk(&e->loop, count_timers, &timers);
    assert_int_equal(timers, 0);
}

static void test_tcp_in_use(void **state) {
    ENV();
    sv_metrics_source src = {.start = fake_start, .cancel = fake_cancel, .userdata = &e->f};
    sv_metrics_server *other = NULL;
    qv_error err = {0};
    assert_int_equal(sv_metrics_server_new(&e->loop, e->target, (gid_t)-1, &src, &other, &err), -EADDRINUSE);
    assert_null(other);
    assert_non_null(strstr(err.msg, "in use"));
    assert_non_null(strstr(err.msg, e->target));
    /* the first still serves */
    _cleanup_free_ char *r = request(&e->loop, e->target, GET);
    assert_ok_reply(r);
}

static void test_unix_socket(void **state) {
    ENV();
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-metrics");
    char path[256];
    snprintf(path, sizeof path, "%s/metrics.sock", dir);
    sv_metrics_source src = {.start = fake_start, .cancel = fake_cancel, .userdata = &e->f};
    qv_error err = {0};
    /* a regular file there is not replaced */
    qv_test_write(dir, "metrics.sock", "precious");
    sv_metrics_server *u = NULL;
    assert_int_equal(sv_metrics_server_new(&e->loop, path, (gid_t)-1, &src, &u, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "not a socket"));
    unlink(path);
    /* a stale socket is */
    int stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    assert_int_equal(bind(stale, (struct sockaddr *)&sa, sizeof sa), 0);
    close(stale);
    assert_int_equal(sv_metrics_server_new(&e->loop, path, (gid_t)-1, &src, &u, &err), 0);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0660);
    /* a second server on a live socket is refused */
    sv_metrics_server *again = NULL;
    assert_int_equal(sv_metrics_server_new(&e->loop, path, (gid_t)-1, &src, &again, &err), -EADDRINUSE);
    _cleanup_free_ char *r = request(&e->loop, path, GET);
    assert_ok_reply(r);
    sv_metrics_server_close(u);
    uv_run(&e->loop, UV_RUN_NOWAIT);
    assert_int_equal(lstat(path, &st), -1); /* removed at close */
    qv_test_rm_rf(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_refusals, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_slow_clients, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_connection_limit, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_async, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_source_fails, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_close_while_waiting, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_idle_arms_nothing, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_in_use, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket, env_setup, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
