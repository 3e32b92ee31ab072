#include "qmptest.h"

#include "util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- loop ---- */

void tloop_init(tloop *t) {
    *t = (tloop){0};
    assert_int_equal(uv_loop_init(&t->loop), 0);
    assert_int_equal(uv_timer_init(&t->loop, &t->watchdog), 0);
}

static void noop_timer(uv_timer_t *h) {
    (void)h;
}

bool tloop_wait(tloop *t, const int *var, int target, uint64_t timeout_ms) {
    uint64_t deadline = qv_now_ms() + qv_test_timeout_ms(timeout_ms);
    while (*var < target) {
        if (qv_now_ms() >= deadline)
            return false;
        /* Wakes the loop now and then so the deadline is checked. */
        uv_timer_start(&t->watchdog, noop_timer, 20, 0);
        uv_run(&t->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&t->watchdog);
    return true;
}

void tloop_run_for(tloop *t, uint64_t ms) {
    uint64_t deadline = qv_now_ms() + ms;
    while (qv_now_ms() < deadline) {
        uv_timer_start(&t->watchdog, noop_timer, 5, 0);
        uv_run(&t->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&t->watchdog);
}

static void count_handle(uv_handle_t *h, void *arg) {
    int *n = arg;
    fprintf(stderr, "# handle left open: %s%s\n", uv_handle_type_name(uv_handle_get_type(h)),
            uv_is_closing(h) ? " (closing)" : "");
    (*n)++;
}

void tloop_finish(tloop *t) {
    uv_close((uv_handle_t *)&t->watchdog, NULL);
    uint64_t deadline = qv_now_ms() + qv_test_timeout_ms(5000);
    while (uv_run(&t->loop, UV_RUN_NOWAIT) != 0 && qv_now_ms() < deadline)
        usleep(1000);
    int n = 0;
    uv_walk(&t->loop, count_handle, &n);
    assert_int_equal(n, 0);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* ---- fake peer ---- */

typedef struct peer_write_req {
    uv_write_t req;
    peer *p;
    char data[];
} peer_write_req;

static int peer_line(const char *line, size_t len, void *userdata) {
    peer *p = userdata;
    /* The guest-agent client prefixes its sync request with 0xFF. */
    while (len > 0 && (unsigned char)line[0] == 0xFF) {
        p->ff_pending++;
        p->ff_total++;
        line++;
        len--;
    }
    json_error_t jerr;
    json_t *msg = json_loadb(line, len, 0, &jerr);
    if (!msg)
        fail_msg("peer got invalid JSON: %.*s (%s)", (int)len, line, jerr.text);
    json_array_append(p->received, msg);
    int ff = p->ff_pending;
    p->ff_pending = 0;
    p->n_received++;
    const char *cmd = json_string_value(json_object_get(msg, "execute"));
    if (p->auto_caps && cmd && strcmp(cmd, "qmp_capabilities") == 0)
        peer_writef(p, "{\"return\": {}, \"id\": %lld}\r\n",
                    (long long)json_integer_value(json_object_get(msg, "id")));
    else if (p->on_msg)
        p->on_msg(p, msg, ff, p->userdata);
    json_decref(msg);
    return 0;
}

static void peer_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    buf->base = malloc(suggested);
    if (!buf->base)
        abort();
    buf->len = suggested;
}

static void peer_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    peer *p = s->data;
    if (nread > 0) {
        assert_int_equal(qv_linebuf_feed(&p->lb, buf->base, (size_t)nread, peer_line, p), 0);
    } else if (nread < 0) {
        uv_read_stop(s);
    }
    free(buf->base);
}

void peer_init_fd(peer *p, tloop *t, int fd) {
    *p = (peer){.t = t, .auto_caps = true, .received = json_array(), .open = true};
    qv_linebuf_init(&p->lb, 64 * 1024 * 1024);
    assert_int_equal(uv_pipe_init(&t->loop, &p->pipe, 0), 0);
    assert_int_equal(uv_pipe_open(&p->pipe, fd), 0);
    assert_int_equal(uv_timer_init(&t->loop, &p->slow), 0);
    p->pipe.data = p;
    p->slow.data = p;
    assert_int_equal(uv_read_start((uv_stream_t *)&p->pipe, peer_alloc, peer_read), 0);
}

void peer_init(peer *p, tloop *t, int *client_fd) {
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    peer_init_fd(p, t, sv[1]);
    *client_fd = sv[0];
}

static void peer_write_cb(uv_write_t *req, int status) {
    peer_write_req *w = (peer_write_req *)req;
    (void)status;
    w->p->writes_pending--;
    free(w);
}

void peer_write(peer *p, const void *data, size_t len) {
    if (!p->open)
        return;
    peer_write_req *w = malloc(sizeof *w + len);
    assert_non_null(w);
    w->p = p;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    p->writes_pending++;
    assert_int_equal(uv_write(&w->req, (uv_stream_t *)&p->pipe, &b, 1, peer_write_cb), 0);
}

void peer_writes(peer *p, const char *s) {
    peer_write(p, s, strlen(s));
}

void peer_writef(peer *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s;
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    peer_writes(p, s);
    free(s);
}

static void peer_shutdown_cb(uv_shutdown_t *req, int status) {
    (void)status;
    free(req);
}

static void peer_do_eof(peer *p) {
    uv_shutdown_t *req = malloc(sizeof *req);
    assert_non_null(req);
    assert_int_equal(uv_shutdown(req, (uv_stream_t *)&p->pipe, peer_shutdown_cb), 0);
}

static void peer_slow_tick(uv_timer_t *h) {
    peer *p = h->data;
    if (p->slow_pos < p->slow_len) {
        peer_write(p, p->slow_buf + p->slow_pos, 1);
        p->slow_pos++;
    }
    if (p->slow_pos < p->slow_len) {
        uv_timer_start(&p->slow, peer_slow_tick, 0, 0);
        return;
    }
    free(p->slow_buf);
    p->slow_buf = NULL;
    p->slow_len = p->slow_pos = 0;
    if (p->eof_after_slow)
        peer_do_eof(p);
}

void peer_write_slowly(peer *p, const char *s) {
    size_t n = strlen(s);
    char *b = realloc(p->slow_buf, p->slow_len + n);
    assert_non_null(b);
    memcpy(b + p->slow_len, s, n);
    p->slow_buf = b;
    p->slow_len += n;
    uv_timer_start(&p->slow, peer_slow_tick, 0, 0);
}

void peer_eof(peer *p) {
    if (p->slow_buf)
        p->eof_after_slow = true;
    else
        peer_do_eof(p);
}

void peer_close(peer *p) {
    if (p->open) {
        p->open = false;
        uv_close((uv_handle_t *)&p->pipe, NULL);
        uv_close((uv_handle_t *)&p->slow, NULL);
    }
    free(p->slow_buf);
    p->slow_buf = NULL;
    qv_linebuf_free(&p->lb);
    json_decref(p->received);
    p->received = NULL;
}

int64_t peer_id(peer *p, int n) {
    json_t *m = json_array_get(p->received, (size_t)n);
    assert_non_null(m);
    json_t *id = json_object_get(m, "id");
    assert_true(json_is_integer(id));
    return json_integer_value(id);
}

const char *peer_command(peer *p, int n) {
    json_t *m = json_array_get(p->received, (size_t)n);
    assert_non_null(m);
    const char *s = json_string_value(json_object_get(m, "execute"));
    assert_non_null(s);
    return s;
}

/* ---- reply recorder ---- */

void reply_init(reply *r, tloop *t) {
    *r = (reply){.t = t, .status = 1};
}

void reply_done(reply *r) {
    json_decref(r->result);
    r->result = NULL;
}

static void reply_record(reply *r, int status, json_t *result, const qmp_error *err) {
    r->calls++;
    r->t->completed++;
    r->seq = ++r->t->seq;
    r->status = status;
    json_decref(r->result);
    r->result = json_incref(result);
    if (err) {
        snprintf(r->error_class, sizeof r->error_class, "%s", err->error_class);
        snprintf(r->desc, sizeof r->desc, "%s", err->desc);
    }
}

void reply_cb(qmp_conn *c, int status, json_t *result, const qmp_error *err, void *userdata) {
    (void)c;
    reply_record(userdata, status, result, err);
}

void qga_reply_cb_rec(qga_conn *c, int status, json_t *result, const qmp_error *err, void *userdata) {
    (void)c;
    reply_record(userdata, status, result, err);
}

/* ---- processes ---- */

char *find_program(const char *name) {
    const char *path = getenv("PATH");
    char *dirs;
    assert_true(asprintf(&dirs, "%s:/usr/sbin:/sbin:/usr/bin:/bin", path ? path : "") >= 0);
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *full;
        assert_true(asprintf(&full, "%s/%s", *d ? d : ".", name) >= 0);
        if (access(full, X_OK) == 0) {
            free(dirs);
            return full;
        }
        free(full);
    }
    free(dirs);
    return NULL;
}

pid_t spawn_with_fd3(char *const argv[], int fd3, bool listen_fds, const char *log_path) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid > 0)
        return pid;

    /* Child: single-threaded test process, so plain libc is fine here. */
    int high = -1;
    if (fd3 >= 0)
        high = fcntl(fd3, F_DUPFD_CLOEXEC, 100);
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || out < 0 || (fd3 >= 0 && high < 0))
        _exit(127);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    if (high >= 0)
        dup2(high, 3); /* dup2 clears FD_CLOEXEC on the new fd */
    if (listen_fds) {
        char pidbuf[32];
        snprintf(pidbuf, sizeof pidbuf, "%d", (int)getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", pidbuf, 1);
    }
    execv(argv[0], argv);
    _exit(127);
}

int wait_pid(pid_t pid, uint64_t timeout_ms) {
    uint64_t deadline = qv_now_ms() + qv_test_timeout_ms(timeout_ms);
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        if (qv_now_ms() >= deadline)
            break;
        usleep(2000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

char *run_capture(char *const argv[]) {
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return NULL;
    pid_t pid = fork();
    if (pid < 0)
        return NULL;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        dup2(devnull, 0);
        dup2(pfd[1], 1);
        dup2(devnull, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    for (;;) {
        if (len + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        ssize_t n = read(pfd[0], buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
