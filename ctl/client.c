/* The CLI's blocking client of the control socket (see client.h and
 * docs/protocol.md). */
#include "ctl/client.h"
#include "ctl/ctl-internal.h"

#include "cleanup.h"
#include "fileio.h"
#include "linebuf.h"
#include "util.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The longest reply line read. */
#define CTL_MAX_REPLY (64u << 20)

typedef struct call_state {
    json_int_t id;
    json_t *reply;
    sv_ctl_progress_fn on_progress;
    void *userdata;
    bool heard; /* a progress message arrived since the last read */
    const char *chunk; /* the bytes being fed, and once the reply came: */
    size_t chunk_len;
    size_t rest_at;    /* where the bytes after the reply line begin in chunk */
} call_state;

static int on_reply_line(const char *line, size_t len, void *userdata) {
    call_state *st = userdata;
    json_t *msg = json_loadb(line, len, 0, NULL);
    if (!msg)
        return -EPROTO;
    switch (sv_ctl_msg_kind_of(msg, st->id)) {
    case SV_CTL_MSG_PROGRESS:
        st->heard = true;
        if (st->on_progress)
            st->on_progress(json_object_get(msg, "progress"), st->userdata);
        json_decref(msg);
        return 0;
    case SV_CTL_MSG_REPLY:
        st->reply = msg;
        st->rest_at = sv_ctl__newline_at(st->chunk, st->chunk_len, line, len) + 1;
        return 1;
    case SV_CTL_MSG_REFUSED:
        st->reply = msg; /* the daemon refused the connection or the framing */
        return 1;
    case SV_CTL_MSG_OTHER:
        break;
    }
    json_decref(msg);
    return 0;
}

int sv_ctl_call(const char *path, const char *method, json_t *params, int timeout_ms, json_t **ret_result,
                qv_error *err) {
    return sv_ctl_call_progress(path, method, params, timeout_ms, NULL, NULL, ret_result, err);
}

static volatile sig_atomic_t *interrupt_flag;

void sv_ctl_client_interrupt_on(volatile sig_atomic_t *flag) {
    interrupt_flag = flag;
}

/* Writes the request line, the descriptors (SCM_RIGHTS) with its first
 * byte so that they arrive with it. */
static int send_request(int fd, const char *line, size_t len, const int *fds, size_t n_fds) {
    if (n_fds == 0)
        return qv_write_all(fd, line, len);
    sv_ctl__fd_control control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {.iov_base = (void *)line, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * n_fds)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    if (!cm) /* never: n_fds > 0 */
        return -EINVAL;
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    return qv_write_all(fd, line + n, len - (size_t)n);
}

/* One request; with ret_fd the connection is kept and handed back with the
 * bytes after the reply line (a stream). */
static int ctl_call(const char *path, const char *method, json_t *params, const int *fds, size_t n_fds,
                    int timeout_ms, sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result, int *ret_fd,
                    char **ret_rest, size_t *ret_rest_len, qv_error *err) {
    struct sockaddr_un sa;
    if (n_fds > SV_CTL_MAX_FDS)
        return qv_error_set(err, E2BIG, "at most %d file descriptors go with one request", SV_CTL_MAX_FDS);
    if (sv_ctl__sockaddr(path, &sa) < 0)
        return qv_error_set(err, ENAMETOOLONG, "control socket path %s is too long", path);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qv_error_set(err, errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
            return qv_error_set(err, ECONNREFUSED, "the qvisor daemon is not running (nothing listens on %s)", path);
        if (e == EACCES || e == EPERM)
            return qv_error_set(err, EACCES, "permission denied on %s (ask for the socket group)", path);
        return qv_error_set(err, e, "cannot connect to %s: %s", path, strerror(e));
    }

    static json_int_t next_id;
    call_state st = {.id = ++next_id + (json_int_t)getpid() * 1000, .on_progress = on_progress, .userdata = userdata};
    json_t *req = sv_ctl_msg_request(st.id, method, params, on_progress != NULL, n_fds);
    size_t len = 0;
    _cleanup_free_ char *line = req ? sv_ctl_msg_line(req, JSON_COMPACT, &len) : NULL;
    json_decref(req);
    if (!line)
        return qv_error_set(err, ENOMEM, "out of memory");
    /* If the daemon hangs up while we write (it refuses an oversized request
     * and closes), its reply saying why is still there to read. */
    int write_err = send_request(fd, line, len, fds, n_fds);
    if (write_err < 0)
        shutdown(fd, SHUT_WR);

    qv_linebuf lb;
    qv_linebuf_init(&lb, CTL_MAX_REPLY);
    uint64_t deadline = qv_now_ms() + (uint64_t)timeout_ms;
    char buf[65536];
    int r = 0;
    bool progressed = false;
    while (!st.reply) {
        uint64_t now = qv_now_ms();
        if (now >= deadline) {
            if (progressed)
                r = qv_error_set(err, ETIMEDOUT, "the daemon reported progress, then nothing for %d ms", timeout_ms);
            else
                r = qv_error_set(err, ETIMEDOUT, "no answer from the daemon within %d ms", timeout_ms);
            break;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)(deadline - now));
        /* a signal between the check and poll() is seen at the next message */
        if (interrupt_flag && *interrupt_flag) {
            r = qv_error_set(err, EINTR, "interrupted");
            break;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = qv_error_set(err, errno, "poll: %s", strerror(errno));
            break;
        }
        if (n == 0)
            continue;
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (write_err < 0)
                r = qv_error_set(err, ECONNRESET, "the daemon closed the connection while the request was sent: %s",
                                 strerror(-write_err));
            else
                r = qv_error_set(err, ECONNRESET, "the daemon closed the connection without answering");
            break;
        }
        st.chunk = buf;
        st.chunk_len = (size_t)got;
        int fr = qv_linebuf_feed(&lb, buf, (size_t)got, on_reply_line, &st);
        if (st.reply && ret_rest) {
            size_t rest = (size_t)got - st.rest_at;
            *ret_rest = malloc(rest ? rest : 1);
            if (!*ret_rest) {
                r = qv_error_set(err, ENOMEM, "out of memory");
                break;
            }
            memcpy(*ret_rest, buf + st.rest_at, rest);
            *ret_rest_len = rest;
        }
        if (fr < 0 && !st.reply) {
            r = qv_error_set(err, EPROTO, "malformed reply from the daemon");
            break;
        }
        if (st.heard) { /* the daemon is working on it: wait afresh */
            st.heard = false;
            progressed = true;
            deadline = qv_now_ms() + (uint64_t)timeout_ms;
        }
    }
    qv_linebuf_free(&lb);
    if (r < 0) {
        json_decref(st.reply);
        return r;
    }

    r = sv_ctl_msg_outcome(st.reply, ret_result, err);
    json_decref(st.reply);
    if (r < 0)
        return r;
    if (ret_fd)
        *ret_fd = TAKE_FD(fd);
    return 0;
}

int sv_ctl_call_progress(const char *path, const char *method, json_t *params, int timeout_ms,
                         sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result, qv_error *err) {
    return ctl_call(path, method, params, NULL, 0, timeout_ms, on_progress, userdata, ret_result, NULL, NULL, NULL,
                    err);
}

int sv_ctl_call_fds(const char *path, const char *method, json_t *params, const int *fds, size_t n_fds,
                    int timeout_ms, sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result,
                    qv_error *err) {
    return ctl_call(path, method, params, fds, n_fds, timeout_ms, on_progress, userdata, ret_result, NULL, NULL,
                    NULL, err);
}

int sv_ctl_call_stream(const char *path, const char *method, json_t *params, int timeout_ms, json_t **ret_result,
                       int *ret_fd, char **ret_rest, size_t *ret_rest_len, qv_error *err) {
    char *rest = NULL;
    size_t rest_len = 0;
    int fd = -1;
    int r = ctl_call(path, method, params, NULL, 0, timeout_ms, NULL, NULL, ret_result, &fd, &rest, &rest_len, err);
    if (r < 0) {
        free(rest);
        return r;
    }
    *ret_fd = fd;
    *ret_rest = rest;
    *ret_rest_len = rest_len;
    return 0;
}
