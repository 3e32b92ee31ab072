#include "run.h"

#include "cleanup.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define RUN_CAPTURE_MAX (4u << 20)

extern char **environ;

typedef struct capture {
    char *buf;
    size_t len, cap;
} capture;

static void capture_add(capture *c, const char *data, size_t n) {
    if (c->len + n > RUN_CAPTURE_MAX)
        n = RUN_CAPTURE_MAX - c->len;
    if (n == 0)
        return;
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + n + 1)
            cap *= 2;
        char *b = realloc(c->buf, cap);
        if (!b)
            return;
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    c->buf[c->len] = '\0';
}

static char *capture_take(capture *c) {
    if (!c->buf)
        return strdup("");
    return TAKE_PTR(c->buf);
}

static int run(char *const argv[], int timeout_ms, int cancel_fd, qv_run_output_fn on_out, void *userdata,
               qv_run_result *ret, bool *ret_timed_out) {
    *ret = (qv_run_result){0};
    *ret_timed_out = false;
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(err, O_CLOEXEC) < 0) {
        int e = -errno;
        close(out[0]);
        close(out[1]);
        return e;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    /* nothing else, even an fd a library opened without O_CLOEXEC on
     * another thread (libnftables' netlink socket does, for a moment) */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(out[1]);
    close(err[1]);
    if (r != 0) {
        close(out[0]);
        close(err[0]);
        return -r;
    }

    capture co = {0}, ce = {0};
    struct pollfd p[3] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN},
                          {.fd = cancel_fd, .events = POLLIN}};
    uint64_t deadline = timeout_ms > 0 ? qv_now_ms() + (uint64_t)timeout_ms : 0;
    int open_fds = 2, result = 0;
    char buf[65536];
    while (open_fds > 0) {
        int wait = -1;
        if (deadline) {
            uint64_t now = qv_now_ms();
            if (now >= deadline) {
                kill(pid, SIGKILL);
                *ret_timed_out = true;
                break;
            }
            wait = (int)(deadline - now);
        }
        int n = poll(p, cancel_fd >= 0 ? 3 : 2, wait);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            kill(pid, SIGKILL);
            result = -errno;
            break;
        }
        if (cancel_fd >= 0 && p[2].revents) {
            kill(pid, SIGKILL);
            result = -ECANCELED;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t got = read(p[i].fd, buf, sizeof buf);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                open_fds--;
                continue;
            }
            capture_add(i == 0 ? &co : &ce, buf, (size_t)got);
            if (i == 0 && on_out)
                on_out(buf, (size_t)got, userdata);
        }
    }
    for (int i = 0; i < 2; i++)
        if (p[i].fd >= 0)
            close(p[i].fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    ret->status = status;
    ret->out = capture_take(&co);
    ret->err = capture_take(&ce);
    free(co.buf);
    free(ce.buf);
    if (result < 0) {
        qv_run_result_free(ret);
        return result;
    }
    return 0;
}

int qv_run(char *const argv[], int timeout_ms, qv_run_output_fn on_out, void *userdata, qv_run_result *ret) {
    bool timed_out;
    int r = run(argv, timeout_ms, -1, on_out, userdata, ret, &timed_out);
    if (r == 0 && timed_out) {
        qv_run_result_free(ret);
        return -ETIMEDOUT;
    }
    return r;
}

int qv_run_bounded(char *const argv[], int timeout_ms, qv_run_output_fn on_out, void *userdata, qv_run_result *ret,
                   bool *ret_timed_out) {
    return run(argv, timeout_ms, -1, on_out, userdata, ret, ret_timed_out);
}

int qv_run_cancellable(char *const argv[], int cancel_fd, qv_run_output_fn on_out, void *userdata,
                       qv_run_result *ret) {
    bool timed_out;
    return run(argv, 0, cancel_fd, on_out, userdata, ret, &timed_out);
}

void qv_run_result_free(qv_run_result *r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

int qv_run_ok(const qv_run_result *r) {
    return WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0;
}

void qv_run_describe(const qv_run_result *r, char *buf, size_t size) {
    if (WIFEXITED(r->status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(r->status));
    else if (WIFSIGNALED(r->status))
        snprintf(buf, size, "killed by signal %d (%s)", WTERMSIG(r->status), strsignal(WTERMSIG(r->status)));
    else
        snprintf(buf, size, "ended with wait status %d", r->status);
}
