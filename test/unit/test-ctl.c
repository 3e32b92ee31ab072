/* Control protocol framing against the real server on a private loop,
 * driven by raw sockets and by the blocking client (ctl/client.h): partial
 * reads, pipelining, oversized requests, garbage, client limits,
 * asynchronous replies, progress messages, and a clean close with no handle
 * left.  The messages on their own: test-ctl-protocol.c. */
#include "testlib.h"

#include "ctl/client.h"
#include "ctl/server.h"
#include "util.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <unistd.h>

/* Short enough for quick tests, long enough that back-to-back calls fall
 * inside them even on a loaded machine. */
#define PROGRESS_INTERVAL_MS 200
#define PROGRESS_REPEAT_MS 600

typedef struct fixture {
    uv_loop_t loop;
    sv_ctl_server *server;
    char *dir;
    char path[256];
    sv_ctl_req *held; /* a request answered later */
    int handled;
    int stream_fd; /* a connection handed over by "stream", or -1 */
} fixture;

static void on_stream(int fd, const sv_ctl_peer *peer, void *userdata) {
    (void)peer;
    fixture *f = userdata;
    f->stream_fd = fd;
}

static void handler(sv_ctl_req *req, const char *method, json_t *params, void *userdata) {
    fixture *f = userdata;
    f->handled++;
    if (strcmp(method, "echo") == 0)
        sv_ctl_reply(req, json_pack("{s:O}", "params", params));
    else if (strcmp(method, "stream") == 0)
        sv_ctl_reply_stream(req, NULL, on_stream, f);
    else if (strcmp(method, "later") == 0 && !f->held)
        f->held = req;
    else if (strcmp(method, "fstat") == 0) { /* the inode of the file "a_fd" names */
        int fd = -1;
        qv_error err = {0};
        int r = sv_ctl_req_take_fd(req, params, "a_fd", &fd, &err);
        struct stat st;
        if (r < 0)
            sv_ctl_reply_qv_error(req, &err);
        else if (r == 0 || fstat(fd, &st) < 0)
            sv_ctl_reply_error(req, EINVAL, "no a_fd");
        else
            sv_ctl_reply(req, json_pack("{s:I, s:b}", "ino", (json_int_t)st.st_ino, "cloexec",
                                        (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0));
        if (fd >= 0)
            close(fd);
    } else if (strcmp(method, "big") == 0) { /* one reply larger than the 16 MiB write queue bound */
        size_t n = 24u << 20;
        char *text = malloc(n + 1);
        assert_non_null(text);
        memset(text, 'x', n);
        text[n] = '\0';
        sv_ctl_reply(req, json_pack("{s:s}", "data", text));
        free(text);
    } else if (strcmp(method, "whoami") == 0)
        sv_ctl_reply(req, json_pack("{s:i, s:b}", "uid", (int)sv_ctl_req_peer(req)->uid, "may_write",
                                    sv_ctl_req_peer(req)->may_write));
    else
        sv_ctl_reply_error(req, ENOENT, "no method %s", method);
}

/* Short timeouts for the tests of timeouts (scaled for slow builds). */
#define LINE_TIMEOUT_MS 150
#define IDLE_TIMEOUT_MS 400

static int setup_with(void **state, unsigned line_timeout_ms, unsigned idle_timeout_ms, size_t reserved) {
    fixture *f = calloc(1, sizeof *f);
    f->stream_fd = -1;
    f->dir = qv_test_mkdtemp("qv-ctl");
    snprintf(f->path, sizeof f->path, "%s/ctl.sock", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    sv_ctl_options o = {
        .path = f->path, .mode = 0660, .group = (gid_t)-1, .max_request = 1024, .max_clients = 4,
        .reserved_clients = reserved, .line_timeout_ms = line_timeout_ms, .idle_timeout_ms = idle_timeout_ms,
        .handler = handler, .userdata = f, .progress_interval_ms = PROGRESS_INTERVAL_MS,
        .progress_repeat_ms = PROGRESS_REPEAT_MS,
    };
    qv_error err = {0};
    assert_int_equal(sv_ctl_server_new(&f->loop, &o, &f->server, &err), 0);
    *state = f;
    return 0;
}

static int setup(void **state) {
    return setup_with(state, 0, 0, 0);
}

static int setup_short(void **state) {
    return setup_with(state, (unsigned)qv_test_timeout_ms(LINE_TIMEOUT_MS), (unsigned)qv_test_timeout_ms(IDLE_TIMEOUT_MS),
                      1);
}

static int teardown(void **state) {
    fixture *f = *state;
    sv_ctl_server_close(f->server);
    if (f->held)
        sv_ctl_reply(f->held, NULL); /* discarded: the server is closing */
    if (f->stream_fd >= 0)
        close(f->stream_fd);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0); /* no handle left behind */
    struct stat st;
    assert_int_equal(stat(f->path, &st), -1); /* socket file removed */
    qv_test_rm_rf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static int connect_to(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void send_str(int fd, const char *s) {
    assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* Runs the loop until fd has n complete lines to read (or EOF); returns
 * them concatenated, NUL-terminated, without reading past them. */
static char *read_lines(fixture *f, int fd, int n, bool *eof) {
    static char buf[1 << 16];
    size_t len = 0;
    int lines = 0;
    *eof = false;
    uint64_t deadline_ms = qv_test_timeout_ms(5000);
    for (uint64_t waited = 0; lines < n && waited < deadline_ms; waited++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1) <= 0)
            continue;
        ssize_t got = read(fd, buf + len, 1);
        if (got <= 0) {
            *eof = true;
            break;
        }
        if (buf[len] == '\n')
            lines++;
        len++;
    }
    buf[len] = '\0';
    return buf;
}

static json_t *one_reply(fixture *f, int fd) {
    bool eof;
    char *s = read_lines(f, fd, 1, &eof);
    json_t *j = json_loads(s, 0, NULL);
    if (!j)
        fail_msg("no JSON reply, got '%s'%s", s, eof ? " (EOF)" : "");
    return j;
}

static void test_partial_writes_and_pipelining(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    const char *req = "{\"id\":1,\"method\":\"echo\",\"params\":{\"x\":\"y\"}}\n{\"id\":\"two\",\"method\":\"echo\"}\n";
    for (const char *p = req; *p; p++) {
        assert_int_equal(write(fd, p, 1), 1);
        uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    json_t *a = one_reply(f, fd), *b = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(a, "id")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(a, "result"), "params"), "x")), "y");
    assert_string_equal(json_string_value(json_object_get(b, "id")), "two");
    assert_non_null(json_object_get(json_object_get(b, "result"), "params"));
    json_decref(a);
    json_decref(b);
    close(fd);
}

static void test_garbage_keeps_connection(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"meth\n");          /* truncated JSON */
    send_str(fd, "\xff\xfe\x01garbage\n");        /* not UTF-8, not JSON */
    send_str(fd, "[1,2]\n");                      /* not an object */
    send_str(fd, "{\"id\":[1],\"method\":\"x\"}\n"); /* bad id */
    send_str(fd, "{\"id\":5,\"method\":7}\n");    /* bad method */
    send_str(fd, "{\"id\":6,\"method\":\"echo\",\"params\":3}\n");
    send_str(fd, "{\"id\":7,\"id\":8,\"method\":\"echo\"}\n"); /* duplicate key */
    send_str(fd, "{\"id\":11,\"method\":\"echo\",\"progress\":\"yes\"}\n"); /* not a boolean */
    send_str(fd, "\n   \n");                      /* blank lines are ignored */
    send_str(fd, "{\"id\":9,\"method\":\"nope\"}\n");
    send_str(fd, "{\"id\":10,\"method\":\"echo\"}\n");
    const char *codes[] = {"EBADMSG", "EBADMSG", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EBADMSG", "EINVAL", "ENOENT"};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        json_t *r = one_reply(f, fd);
        json_t *e = json_object_get(r, "error");
        assert_non_null(e);
        assert_string_equal(json_string_value(json_object_get(e, "code")), codes[i]);
        assert_non_null(json_string_value(json_object_get(e, "message")));
        json_decref(r);
    }
    json_t *ok = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(ok, "id")), 10);
    assert_non_null(json_object_get(ok, "result"));
    json_decref(ok);
    assert_int_equal(f->handled, 2);
    close(fd);
}

static void test_oversized_request_is_refused_and_closed(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    char big[3000];
    memset(big, 'a', sizeof big);
    assert_int_equal(write(fd, big, sizeof big), (ssize_t)sizeof big); /* no newline: still over the limit */
    json_t *r = one_reply(f, fd);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "code")), "EMSGSIZE");
    assert_true(json_is_null(json_object_get(r, "id")));
    json_decref(r);
    bool eof;
    read_lines(f, fd, 1, &eof);
    assert_true(eof);
    assert_int_equal(f->handled, 0);
    close(fd);
    /* the server still answers others */
    fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"echo\"}\n");
    r = one_reply(f, fd);
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    close(fd);
}

static void test_max_clients(void **state) {
    fixture *f = *state;
    int fds[5];
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_to(f->path);
        uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    fds[4] = connect_to(f->path);
    json_t *r = one_reply(f, fds[4]);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "code")), "EAGAIN");
    json_decref(r);
    for (int i = 0; i < 5; i++)
        close(fds[i]);
    for (int i = 0; i < 50 && sv_ctl_server_clients(f->server) > 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(sv_ctl_server_clients(f->server), 0);
}

static void test_async_reply_and_vanished_client(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"later\"}\n{\"id\":2,\"method\":\"echo\"}\n");
    json_t *r = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 2); /* out of order is fine */
    json_decref(r);
    assert_non_null(f->held);
    sv_ctl_reply(f->held, json_pack("{s:b}", "late", 1));
    f->held = NULL;
    r = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    json_decref(r);

    /* a client that leaves before its answer: the reply is dropped safely */
    send_str(fd, "{\"id\":3,\"method\":\"later\"}\n");
    for (int i = 0; i < 100 && !f->held; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_non_null(f->held);
    close(fd);
    for (int i = 0; i < 50 && sv_ctl_server_clients(f->server) > 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    sv_ctl_reply(f->held, NULL);
    f->held = NULL;
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Runs the loop until the handler holds a request. */
static sv_ctl_req *wait_held(fixture *f) {
    for (int i = 0; i < 2000 && !f->held; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_non_null(f->held);
    sv_ctl_req *req = f->held;
    f->held = NULL;
    return req;
}

static json_t *percent(double p) {
    return json_pack("{s:f}", "percent", p);
}

static void sleep_ms(unsigned ms) {
    usleep(ms * 1000u);
}

static void test_progress_to_opted_in_client(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":\"imp\",\"method\":\"later\",\"progress\":true}\n");
    sv_ctl_req *req = wait_held(f);
    assert_true(sv_ctl_req_wants_progress(req));

    sv_ctl_progress(req, percent(10)); /* the first value goes out at once */
    sv_ctl_progress(req, percent(20)); /* too soon after it: dropped */
    sv_ctl_progress(req, percent(30)); /* likewise */
    sleep_ms(PROGRESS_INTERVAL_MS + 20);
    sv_ctl_progress(req, percent(42.1)); /* changed, interval passed: sent */
    sleep_ms(PROGRESS_INTERVAL_MS + 20);
    sv_ctl_progress(req, percent(42.1)); /* unchanged, before the repeat time: dropped */
    sv_ctl_progress(req, NULL);          /* nothing: ignored */
    sleep_ms(PROGRESS_REPEAT_MS);
    sv_ctl_progress(req, percent(42.1)); /* unchanged but a repeat is due: sent */
    sv_ctl_reply(req, json_pack("{s:b}", "done", 1));

    bool eof;
    char *s = read_lines(f, fd, 4, &eof);
    assert_false(eof);
    assert_string_equal(s, "{\"id\":\"imp\",\"progress\":{\"percent\":10.0}}\n"
                           "{\"id\":\"imp\",\"progress\":{\"percent\":42.1}}\n"
                           "{\"id\":\"imp\",\"progress\":{\"percent\":42.1}}\n"
                           "{\"id\":\"imp\",\"result\":{\"done\":true}}\n");
    /* nothing else follows the reply */
    send_str(fd, "{\"id\":2,\"method\":\"echo\"}\n");
    json_t *r = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 2);
    json_decref(r);
    close(fd);
}

static void test_no_progress_unless_asked(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"later\",\"progress\":false}\n");
    sv_ctl_req *req = wait_held(f);
    assert_false(sv_ctl_req_wants_progress(req));
    sv_ctl_progress(req, percent(10));
    sleep_ms(PROGRESS_INTERVAL_MS + 20);
    sv_ctl_progress(req, percent(50));
    sv_ctl_reply(req, NULL);
    send_str(fd, "{\"id\":2,\"method\":\"echo\"}\n");
    json_t *a = one_reply(f, fd), *b = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(a, "id")), 1);
    assert_non_null(json_object_get(a, "result"));
    assert_int_equal(json_integer_value(json_object_get(b, "id")), 2);
    json_decref(a);
    json_decref(b);

    /* an opted-in client that left: progress and the reply are dropped safely */
    send_str(fd, "{\"id\":3,\"method\":\"later\",\"progress\":true}\n");
    req = wait_held(f);
    sv_ctl_progress(req, percent(1));
    close(fd);
    for (int i = 0; i < 50 && sv_ctl_server_clients(f->server) > 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(sv_ctl_server_clients(f->server), 0);
    assert_false(sv_ctl_req_wants_progress(req));
    sv_ctl_progress(req, percent(2));
    sv_ctl_reply(req, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void test_peer_credentials(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"whoami\"}\n");
    json_t *r = one_reply(f, fd);
    json_t *res = json_object_get(r, "result");
    assert_int_equal(json_integer_value(json_object_get(res, "uid")), (int)getuid());
    assert_true(json_is_true(json_object_get(res, "may_write"))); /* same user as the server */
    json_decref(r);
    close(fd);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
}

/* The blocking client against the server, run from a thread so the loop can serve. */
typedef struct {
    const char *path;
    const char *method;
    int r;
    qv_error err;
    json_t *result;
} call_args;

static void *call_thread(void *p) {
    call_args *a = p;
    a->r = sv_ctl_call(a->path, a->method, NULL, 2000, &a->result, &a->err);
    return NULL;
}

static void run_call(fixture *f, call_args *a) {
    pthread_t t;
    volatile int done = 0;
    (void)done;
    pthread_create(&t, NULL, call_thread, a);
    for (int i = 0; i < 3000; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (pthread_tryjoin_np(t, NULL) == 0)
            return;
        usleep(1000);
    }
    pthread_join(t, NULL);
}

static void test_blocking_client(void **state) {
    fixture *f = *state;
    call_args a = {.path = f->path, .method = "echo"};
    run_call(f, &a);
    assert_int_equal(a.r, 0);
    assert_non_null(json_object_get(a.result, "params"));
    json_decref(a.result);

    call_args b = {.path = f->path, .method = "missing"};
    run_call(f, &b);
    assert_int_equal(b.r, -ENOENT);
    assert_string_equal(b.err.msg, "no method missing");

    /* a reply larger than the queue bound still goes out whole (vm.exec_status
     * carries up to 2 x 16 MiB of a command's output) */
    call_args c = {.path = f->path, .method = "big"};
    run_call(f, &c);
    assert_int_equal(c.r, 0);
    assert_int_equal(json_string_length(json_object_get(c.result, "data")), 24u << 20);
    json_decref(c.result);

    qv_error err = {0};
    char nowhere[300];
    snprintf(nowhere, sizeof nowhere, "%s/none.sock", f->dir);
    assert_int_equal(sv_ctl_call(nowhere, "echo", NULL, 100, NULL, &err), -ECONNREFUSED);
}

typedef struct {
    const char *path;
    int timeout_ms;
    int r;
    qv_error err;
    json_t *result;
    int progress_calls;
    double last_percent;
} progress_call_args;

static void count_progress(json_t *progress, void *userdata) {
    progress_call_args *a = userdata;
    a->progress_calls++;
    a->last_percent = json_number_value(json_object_get(progress, "percent"));
}

static void *progress_call_thread(void *p) {
    progress_call_args *a = p;
    a->r = sv_ctl_call_progress(a->path, "later", NULL, a->timeout_ms, count_progress, a, &a->result, &a->err);
    return NULL;
}

/* Progress restarts the blocking client's timeout: a request lasting several
 * timeouts succeeds while progress keeps coming. */
static void test_blocking_client_progress_resets_timeout(void **state) {
    fixture *f = *state;
    int timeout = (int)qv_test_timeout_ms(PROGRESS_INTERVAL_MS * 3);
    progress_call_args a = {.path = f->path, .timeout_ms = timeout};
    pthread_t t;
    pthread_create(&t, NULL, progress_call_thread, &a);
    sv_ctl_req *req = wait_held(f);
    assert_true(sv_ctl_req_wants_progress(req));
    uint64_t start = qv_now_ms();
    for (int pct = 0; qv_now_ms() - start < (uint64_t)timeout * 2; pct++) {
        sv_ctl_progress(req, percent(pct));
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(5000);
    }
    sv_ctl_progress(req, percent(99.5));
    uv_run(&f->loop, UV_RUN_NOWAIT);
    sleep_ms(PROGRESS_INTERVAL_MS + 20);
    sv_ctl_progress(req, percent(99.5)); /* the interval passed, the value did not change: dropped */
    sv_ctl_reply(req, json_pack("{s:b}", "done", 1));
    for (int i = 0; i < 3000 && pthread_tryjoin_np(t, NULL) != 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(a.r, 0);
    assert_true(json_is_true(json_object_get(a.result, "done")));
    json_decref(a.result);
    assert_true(a.progress_calls >= 5);
    assert_true(a.progress_calls <= 2 * timeout / PROGRESS_INTERVAL_MS + 3);

    /* progress, then silence: the timeout says so */
    progress_call_args b = {.path = f->path, .timeout_ms = (int)qv_test_timeout_ms(300)};
    pthread_create(&t, NULL, progress_call_thread, &b);
    req = wait_held(f);
    sv_ctl_progress(req, percent(5));
    for (int i = 0; i < 10000 && pthread_tryjoin_np(t, NULL) != 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(b.r, -ETIMEDOUT);
    assert_int_equal(b.progress_calls, 1);
    assert_non_null(strstr(b.err.msg, "reported progress, then nothing"));
    for (int i = 0; i < 50 && sv_ctl_server_clients(f->server) > 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT); /* the server sees the client go */
        usleep(1000);
    }
    sv_ctl_reply(req, NULL);
}

static void test_stale_socket_replaced_live_one_refused(void **state) {
    fixture *f = *state;
    qv_error err = {0};
    sv_ctl_server *second = NULL;
    sv_ctl_options o = {.path = f->path, .mode = 0600, .group = (gid_t)-1, .max_request = 1024,
                        .max_clients = 4, .handler = handler, .userdata = f};
    assert_int_equal(sv_ctl_server_new(&f->loop, &o, &second, &err), -EADDRINUSE);

    char stale[300];
    snprintf(stale, sizeof stale, "%s/stale.sock", f->dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, stale);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd); /* bound, never listened, owner gone: stale */
    o.path = stale;
    assert_int_equal(sv_ctl_server_new(&f->loop, &o, &second, &err), 0);
    sv_ctl_server_close(second);

    char plain[300];
    snprintf(plain, sizeof plain, "%s/plain", f->dir);
    qv_test_write(f->dir, "plain", "data");
    o.path = plain;
    assert_int_equal(sv_ctl_server_new(&f->loop, &o, &second, &err), -EEXIST);
}

/* Runs the loop until fd reads EOF (true) or for at most ms (false);
 * bytes read are dropped. */
static bool wait_eof(fixture *f, int fd, uint64_t ms) {
    uint64_t end = qv_now_ms() + ms;
    while (qv_now_ms() < end) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1) <= 0)
            continue;
        char b[256];
        if (read(fd, b, sizeof b) <= 0)
            return true;
    }
    return false;
}

/* Half a request line, then nothing: dropped after the line timeout, while
 * it would still be within the idle timeout. */
static void test_half_line_is_dropped(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":");
    uint64_t t0 = qv_now_ms();
    assert_true(wait_eof(f, fd, qv_test_timeout_ms(5000)));
    assert_true(qv_now_ms() - t0 < qv_test_timeout_ms(IDLE_TIMEOUT_MS));
    close(fd);
    /* a line that trickles in, each byte in time, still has one deadline */
    fd = connect_to(f->path);
    t0 = qv_now_ms();
    bool eof = false;
    for (int i = 0; i < 200 && !eof; i++) {
        send_str(fd, " ");
        eof = wait_eof(f, fd, 20);
    }
    assert_true(eof);
    assert_true(qv_now_ms() - t0 < qv_test_timeout_ms(IDLE_TIMEOUT_MS));
    close(fd);
}

/* A connection that never sends anything is closed; so is one whose
 * requests are answered and that then says nothing more. */
static void test_idle_connection_is_closed(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    assert_true(wait_eof(f, fd, qv_test_timeout_ms(5000)));
    close(fd);
    assert_int_equal(sv_ctl_server_clients(f->server), 0);

    fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"echo\"}\n");
    json_t *r = one_reply(f, fd);
    json_decref(r);
    assert_true(wait_eof(f, fd, qv_test_timeout_ms(5000)));
    close(fd);
}

/* A request in flight keeps its connection past the idle timeout, and the
 * idle clock starts again once it is answered. */
static void test_request_in_flight_is_not_idle(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"later\"}\n");
    sv_ctl_req *req = wait_held(f);
    assert_false(wait_eof(f, fd, 3 * qv_test_timeout_ms(IDLE_TIMEOUT_MS)));
    sv_ctl_reply(req, NULL);
    json_t *r = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    json_decref(r);
    assert_true(wait_eof(f, fd, qv_test_timeout_ms(5000)));
    close(fd);
}

/* A stream handed over is not a request: no timeout cuts it. */
static void test_stream_has_no_timeout(void **state) {
    fixture *f = *state;
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"stream\"}\n");
    json_t *r = one_reply(f, fd);
    json_decref(r);
    for (int i = 0; i < 100 && f->stream_fd < 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_true(f->stream_fd >= 0);
    assert_false(wait_eof(f, fd, 3 * qv_test_timeout_ms(IDLE_TIMEOUT_MS)));
    send_str(f->stream_fd, "still here\n");
    bool eof;
    assert_string_equal(read_lines(f, fd, 1, &eof), "still here\n");
    close(fd);
}

/* Other users' connections fill max_clients: root still gets in, on a
 * reserved slot, and only as many times as there are reserved slots. */
static void test_reserved_slot_for_root(void **state) {
    fixture *f = *state;
    if (geteuid() != 0)
        skip();
    assert_int_equal(chmod(f->dir, 0755), 0);
    assert_int_equal(chmod(f->path, 0666), 0);
    int ready[2], hold[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(hold), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(hold[1]);
        close(ready[0]);
        if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
            _exit(1);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, f->path);
        for (int i = 0; i < 4; i++) {
            int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (connect(c, (struct sockaddr *)&sa, sizeof sa) < 0)
                _exit(2);
        }
        char b = 'x';
        if (write(ready[1], &b, 1) != 1)
            _exit(1);
        (void)read(hold[0], &b, 1); /* until the parent is done */
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    char b;
    if (read(ready[0], &b, 1) != 1) {
        int status;
        waitpid(pid, &status, 0);
        fail_msg("the unprivileged client could not connect (status %d)", status);
    }
    for (int i = 0; i < 1000 && sv_ctl_server_clients(f->server) < 4; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(sv_ctl_server_clients(f->server), 4);
    int fd = connect_to(f->path);
    send_str(fd, "{\"id\":1,\"method\":\"whoami\"}\n");
    json_t *r = one_reply(f, fd);
    json_t *res = json_object_get(r, "result");
    if (!res)
        fail_msg("root was refused: %s", json_dumps(r, 0));
    assert_int_equal(json_integer_value(json_object_get(res, "uid")), 0);
    json_decref(r);
    int fd2 = connect_to(f->path); /* past the one reserved slot */
    r = one_reply(f, fd2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "code")), "EAGAIN");
    json_decref(r);
    close(fd);
    close(fd2);
    close(hold[1]);
    close(ready[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Descriptors open in this process (the server's side runs here). */
static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Sends text with n copies of fd attached to its first byte. */
static void send_with_fds(int sock, const char *text, int fd, size_t n) {
    size_t space = CMSG_SPACE(sizeof(int) * n);
    char *control = calloc(1, space);
    struct iovec iov = {.iov_base = (void *)text, .iov_len = strlen(text)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = space};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
    for (size_t i = 0; i < n; i++)
        memcpy(CMSG_DATA(cm) + i * sizeof(int), &fd, sizeof(int));
    assert_int_equal(sendmsg(sock, &mh, 0), (ssize_t)strlen(text));
    free(control);
}

static void test_fds_go_with_their_request(void **state) {
    fixture *f = *state;
    int base = count_fds();
    int file = open(f->path, O_PATH | O_CLOEXEC); /* any file will do: the socket's */
    struct stat st;
    assert_int_equal(fstat(file, &st), 0);
    int fd = connect_to(f->path);
    /* a request before, split by the descriptors of the next: each line gets its own */
    send_str(fd, "{\"id\":1,\"method\":\"echo\"");
    send_with_fds(fd, "}\n{\"id\":2,\"method\":\"fstat\",\"fds\":2,", file, 2);
    send_str(fd, "\"params\":{\"a_fd\":1}}\n");
    json_t *a = one_reply(f, fd), *b = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(a, "id")), 1);
    assert_non_null(json_object_get(a, "result"));
    json_t *res = json_object_get(b, "result");
    assert_int_equal(json_integer_value(json_object_get(res, "ino")), (json_int_t)st.st_ino);
    assert_true(json_is_true(json_object_get(res, "cloexec")));
    json_decref(a);
    json_decref(b);
    /* descriptors sent with a request that does not announce them */
    send_with_fds(fd, "{\"id\":3,\"method\":\"echo\"}\n", file, 3);
    a = one_reply(f, fd);
    assert_int_equal(json_integer_value(json_object_get(a, "id")), 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(a, "error"), "code")), "EINVAL");
    json_decref(a);
    /* an index that was not sent */
    send_with_fds(fd, "{\"id\":4,\"method\":\"fstat\",\"fds\":1,\"params\":{\"a_fd\":1}}\n", file, 1);
    a = one_reply(f, fd);
    assert_string_equal(json_string_value(json_object_get(json_object_get(a, "error"), "code")), "EINVAL");
    json_decref(a);
    /* none left open on the server's side: the one not taken went with the reply */
    close(fd);
    for (int i = 0; i < 50 && count_fds() != base + 1; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(count_fds(), base + 1);
    close(file);
}

static void test_too_many_fds_are_refused_and_closed(void **state) {
    fixture *f = *state;
    int base = count_fds();
    int file = open(f->path, O_PATH | O_CLOEXEC);
    for (int round = 0; round < 20; round++) {
        int fd = connect_to(f->path);
        send_with_fds(fd, "{\"id\":1,\"method\":\"fstat\",\"fds\":100,\"params\":{\"a_fd\":0}}\n", file, 100);
        bool eof;
        char *s = read_lines(f, fd, 2, &eof);
        assert_non_null(strstr(s, "too many file descriptors"));
        assert_true(eof); /* and the connection is closed */
        close(fd);
    }
    /* nine, one over the limit, in two messages of one line */
    int fd = connect_to(f->path);
    send_with_fds(fd, "{\"id\":1,", file, 5);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    send_with_fds(fd, "\"method\":\"echo\"}\n", file, 4);
    bool eof;
    char *s = read_lines(f, fd, 2, &eof);
    assert_non_null(strstr(s, "too many file descriptors"));
    close(fd);
    for (int i = 0; i < 50 && count_fds() != base + 1; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(count_fds(), base + 1); /* just `file` */
    close(file);
}

typedef struct {
    const char *path;
    int fd;
    int r;
    qv_error err;
    json_t *result;
} fds_call_args;

static void *fds_call_thread(void *p) {
    fds_call_args *a = p;
    int fds[2] = {a->fd, a->fd};
    json_t *params = json_pack("{s:i}", "a_fd", 1); /* borrowed by the call */
    a->r = sv_ctl_call_fds(a->path, "fstat", params, fds, 2, 2000, NULL, NULL, &a->result, &a->err);
    json_decref(params);
    return NULL;
}

static void test_blocking_client_sends_fds(void **state) {
    fixture *f = *state;
    fds_call_args a = {.path = f->path, .fd = open(f->path, O_PATH | O_CLOEXEC)};
    struct stat st;
    assert_int_equal(fstat(a.fd, &st), 0);
    pthread_t t;
    pthread_create(&t, NULL, fds_call_thread, &a);
    for (int i = 0; i < 3000 && pthread_tryjoin_np(t, NULL) != 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(a.r, 0);
    assert_int_equal(json_integer_value(json_object_get(a.result, "ino")), (json_int_t)st.st_ino);
    json_decref(a.result);
    close(a.fd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_partial_writes_and_pipelining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_keeps_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_request_is_refused_and_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_reply_and_vanished_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_progress_to_opted_in_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_progress_unless_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_credentials, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocking_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fds_go_with_their_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_fds_are_refused_and_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocking_client_sends_fds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocking_client_progress_resets_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_socket_replaced_live_one_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_line_is_dropped, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_idle_connection_is_closed, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_request_in_flight_is_not_idle, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_stream_has_no_timeout, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_reserved_slot_for_root, setup_short, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
