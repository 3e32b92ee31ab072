/* The daemon's control socket server (see server.h and docs/protocol.md). */
#include "ctl/server.h"
#include "ctl/ctl-internal.h"

#include "cleanup.h"
#include "linebuf.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A client that does not read its replies is dropped past this much queued output. */
#define CTL_MAX_WRITE_QUEUE (16u << 20)
#define CTL_READ_CHUNK 8192
#define CTL_PROGRESS_INTERVAL_MS 100
#define CTL_PROGRESS_REPEAT_MS 1000
#define CTL_LINE_TIMEOUT_MS 5000
#define CTL_IDLE_TIMEOUT_MS 60000
/* supplementary groups looked at when authorising a peer (NGROUPS_MAX is 65536) */
#define CTL_MAX_PEER_GROUPS 65536

typedef struct ctl_client ctl_client;

struct sv_ctl_server {
    uv_loop_t *loop;
    uv_pipe_t listener;
    char *path;
    sv_ctl_options opts;
    ctl_client *clients;
    size_t n_clients;
    int refs; /* the listener handle + one per client still allocated */
    bool closing;
};

struct ctl_client {
    uv_pipe_t pipe;   /* replies go out here; requests are not read through it, */
    uv_poll_t poll;   /* but with recvmsg() on rfd when this says it is readable */
    int rfd;          /* a duplicate of the socket, for poll and recvmsg */
    bool polling;     /* poll is initialised */
    uv_timer_t timer; /* line and idle timeouts */
    sv_ctl_server *server;
    ctl_client *prev, *next;
    qv_linebuf lb;
    sv_ctl_peer peer;
    int refs; /* the (two or three) handles + one per request and per write in flight */
    unsigned requests; /* requests in flight */
    uint64_t line_started; /* loop time of the first byte of the partial line, or 0 */
    bool closing;
    bool close_after_write;
    /* a streaming reply is on its way: no more requests; once it is out the
     * connection goes to stream_fn (docs/protocol.md, "Streams") */
    bool streaming;
    sv_ctl_stream_fn stream_fn;
    void *stream_userdata;
    /* Descriptors (SCM_RIGHTS) belong to the request line they came with:
     * the kernel ends a read after the bytes that carried them, so they are
     * the line's whose '\n' is at or after the last byte of that read
     * (pend_end[i] - 1, offsets in the byte stream).  At most SV_CTL_MAX_FDS
     * are held at once, pending here or by requests in flight. */
    int pend_fds[SV_CTL_MAX_FDS];
    uint64_t pend_end[SV_CTL_MAX_FDS];
    size_t n_pend;
    size_t fds_held;      /* pending + those of requests in flight */
    uint64_t rx_off;      /* stream offset of the chunk being fed */
    const char *chunk;    /* the chunk being fed, for line offsets */
    size_t chunk_len;
    char rbuf[CTL_READ_CHUNK];
};

struct sv_ctl_req {
    ctl_client *client;
    json_t *id;
    bool wants_progress;    /* the request said "progress": true */
    json_t *last_progress;  /* the value last sent, or NULL */
    uint64_t last_progress_ms;
    int fds[SV_CTL_MAX_FDS]; /* those the line came with; -1 once taken */
    size_t n_fds;
};

typedef struct ctl_write {
    uv_write_t w;
    ctl_client *client;
    char *data;
} ctl_write;

static void server_unref(sv_ctl_server *s) {
    if (--s->refs > 0)
        return;
    free(s->path);
    free(s);
}

static void client_unref(ctl_client *c) {
    if (--c->refs > 0)
        return;
    qv_linebuf_free(&c->lb);
    sv_ctl_server *s = c->server;
    free(c);
    server_unref(s);
}

static void on_client_closed(uv_handle_t *h) {
    client_unref(h->data);
}

static void on_poll_closed(uv_handle_t *h) {
    ctl_client *c = h->data;
    qv_closep(&c->rfd);
    client_unref(c);
}

static void close_fds(int *fds, size_t n) {
    for (size_t i = 0; i < n; i++)
        qv_closep(&fds[i]);
}

/* Stops reading requests (a stream, a framing error, a close). */
static void client_stop_reading(ctl_client *c) {
    if (uv_is_active((uv_handle_t *)&c->poll))
        uv_poll_stop(&c->poll);
}

static void client_close(ctl_client *c) {
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->timer, on_client_closed);
    if (c->polling)
        uv_close((uv_handle_t *)&c->poll, on_poll_closed);
    close_fds(c->pend_fds, c->n_pend);
    c->fds_held -= c->n_pend;
    c->n_pend = 0;
    if (c->stream_fn) { /* the handover never happened */
        sv_ctl_stream_fn fn = c->stream_fn;
        c->stream_fn = NULL;
        fn(-1, &c->peer, c->stream_userdata);
    }
    sv_ctl_server *s = c->server;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_clients--;
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void on_timeout(uv_timer_t *t) {
    ctl_client *c = t->data;
    log_debug("control client pid %d: %s; closing it", (int)c->peer.pid,
              c->line_started ? "request line not finished in time" : "idle");
    client_close(c);
}

/* Arms the timer for what the connection is doing now: finishing a line,
 * waiting for a request, or (a request in flight, or a stream) nothing. */
static void client_rearm(ctl_client *c) {
    if (c->closing)
        return;
    const sv_ctl_options *o = &c->server->opts;
    uint64_t now = uv_now(c->server->loop);
    if (c->streaming || c->stream_fn) {
        uv_timer_stop(&c->timer);
    } else if (qv_linebuf_pending(&c->lb) > 0) {
        if (!c->line_started)
            c->line_started = now;
        uint64_t end = c->line_started + o->line_timeout_ms;
        uv_timer_start(&c->timer, on_timeout, end > now ? end - now : 0, 0);
    } else {
        c->line_started = 0;
        if (c->requests == 0)
            uv_timer_start(&c->timer, on_timeout, o->idle_timeout_ms, 0);
        else
            uv_timer_stop(&c->timer);
    }
}

/* The streaming reply is out: the socket goes to its new owner (a
 * duplicate, so that closing the handle here does not end the connection). */
static void hand_over(ctl_client *c) {
    sv_ctl_stream_fn fn = c->stream_fn;
    void *userdata = c->stream_userdata;
    c->stream_fn = NULL;
    uv_os_fd_t fd;
    int dup = -1;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0)
        dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    sv_ctl_peer peer = c->peer;
    client_close(c);
    fn(dup, &peer, userdata);
}

static void on_write_done(uv_write_t *w, int status) {
    ctl_write *cw = (ctl_write *)w;
    ctl_client *c = cw->client;
    free(cw->data);
    free(cw);
    if (!c->closing) {
        if (status < 0)
            client_close(c);
        else if (c->stream_fn && uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) == 0)
            hand_over(c);
        else if (c->close_after_write && uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) == 0)
            client_close(c);
    }
    client_unref(c);
}

/* Sends one JSON message (reference stolen) as a line, dumped with flags
 * (JSON_COMPACT plus any others). */
static void client_send_flags(ctl_client *c, json_t *msg, size_t flags) {
    if (c->closing || !msg) {
        json_decref(msg);
        return;
    }
    size_t len;
    char *text = sv_ctl_msg_line(msg, flags, &len);
    json_decref(msg);
    ctl_write *cw = calloc(1, sizeof *cw);
    if (!text || !cw) {
        free(text);
        free(cw);
        client_close(c);
        return;
    }
    cw->data = text;
    cw->client = c;
    /* A client that has not read what it was sent before is dropped; the
     * bound is on what was queued before this message, so that one large
     * reply (vm.exec_status: up to 2 x 16 MiB of output) still goes whole. */
    size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
    uv_buf_t buf = uv_buf_init(text, (unsigned)len);
    c->refs++;
    int r = uv_write(&cw->w, (uv_stream_t *)&c->pipe, &buf, 1, on_write_done);
    if (r < 0) {
        c->refs--;
        free(text);
        free(cw);
        client_close(c);
        return;
    }
    if (queued > CTL_MAX_WRITE_QUEUE) {
        log_debug("control client pid %d does not read its replies; dropping it", (int)c->peer.pid);
        client_close(c);
    }
}

static void client_send(ctl_client *c, json_t *msg) {
    client_send_flags(c, msg, JSON_COMPACT);
}

static void client_send_error(ctl_client *c, json_t *id, int code, const char *message) {
    client_send(c, sv_ctl_msg_error(id, code, message));
}

/* ---- requests ---------------------------------------------------------- */

const sv_ctl_peer *sv_ctl_req_peer(const sv_ctl_req *req) {
    return &req->client->peer;
}

/* Frees req and what it holds (descriptors not taken are closed). */
static void req_free(sv_ctl_req *req) {
    ctl_client *c = req->client;
    close_fds(req->fds, req->n_fds);
    c->fds_held -= req->n_fds;
    json_decref(req->id);
    json_decref(req->last_progress);
    free(req);
    c->requests--;
}

int sv_ctl_req_take_fd(sv_ctl_req *req, json_t *params, const char *key, int *ret_fd, qv_error *err) {
    json_t *v = json_object_get(params, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (size_t)json_integer_value(v) >= req->n_fds)
        return qv_error_set(err, EINVAL, "\"%s\" must be the index of a file descriptor sent with the request (%zu sent)",
                            key, req->n_fds);
    size_t i = (size_t)json_integer_value(v);
    if (req->fds[i] < 0)
        return qv_error_set(err, EINVAL, "\"%s\": file descriptor %zu is named twice", key, i);
    *ret_fd = TAKE_FD(req->fds[i]);
    return 1;
}

static void req_finish(sv_ctl_req *req, json_t *msg) {
    ctl_client *c = req->client;
    if (!c->closing && !c->server->closing && !c->streaming)
        client_send(c, msg);
    else
        json_decref(msg);
    req_free(req);
    client_rearm(c);
    client_unref(c);
}

void sv_ctl_reply(sv_ctl_req *req, json_t *result) {
    req_finish(req, sv_ctl_msg_result(req->id, result));
}

void sv_ctl_reply_stream(sv_ctl_req *req, json_t *result, sv_ctl_stream_fn on_stream, void *userdata) {
    ctl_client *c = req->client;
    if (c->closing || c->server->closing || c->streaming) {
        json_decref(result);
        req_free(req);
        on_stream(-1, &c->peer, userdata);
        client_unref(c);
        return;
    }
    c->refs++; /* the reply below may close the client */
    client_stop_reading(c);
    uv_timer_stop(&c->timer); /* a stream is not a request: no timeout */
    c->stream_fn = on_stream;
    c->stream_userdata = userdata;
    req_finish(req, sv_ctl_msg_result(req->id, result));
    c->streaming = true; /* after the reply: nothing else goes out */
    client_unref(c);
}

void sv_ctl_reply_error(sv_ctl_req *req, int code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    req_finish(req, sv_ctl_msg_error(req->id, code, msg));
}

void sv_ctl_reply_qv_error(sv_ctl_req *req, const qv_error *err) {
    sv_ctl_reply_error(req, err->code ? err->code : EIO, "%s", err->msg);
}

bool sv_ctl_req_client_gone(const sv_ctl_req *req) {
    return req->client->closing || req->client->server->closing;
}

bool sv_ctl_req_wants_progress(const sv_ctl_req *req) {
    return req->wants_progress && !req->client->closing && !req->client->server->closing;
}

void sv_ctl_progress(sv_ctl_req *req, json_t *progress) {
    if (!progress)
        return;
    if (!sv_ctl_req_wants_progress(req)) {
        json_decref(progress);
        return;
    }
    const sv_ctl_options *o = &req->client->server->opts;
    uint64_t now = qv_now_ms();
    if (req->last_progress) {
        bool changed = !json_equal(req->last_progress, progress);
        uint64_t since = now - req->last_progress_ms;
        if (since < (changed ? o->progress_interval_ms : o->progress_repeat_ms)) {
            json_decref(progress);
            return;
        }
    }
    json_decref(req->last_progress);
    req->last_progress = progress; /* the message below holds its own reference */
    req->last_progress_ms = now;
    /* percentages like 42.1 as written, not 42.100000000000001 */
    client_send_flags(req->client, sv_ctl_msg_progress(req->id, progress),
                      JSON_COMPACT | JSON_REAL_PRECISION(12));
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

/* Moves the pending descriptors that belong to the line whose '\n' is at
 * stream offset nl_off into fds (room for SV_CTL_MAX_FDS); returns how many. */
static size_t take_line_fds(ctl_client *c, uint64_t nl_off, int *fds) {
    size_t n = 0;
    while (n < c->n_pend && c->pend_end[n] - 1 <= nl_off) {
        fds[n] = c->pend_fds[n];
        n++;
    }
    memmove(c->pend_fds, c->pend_fds + n, (c->n_pend - n) * sizeof *c->pend_fds);
    memmove(c->pend_end, c->pend_end + n, (c->n_pend - n) * sizeof *c->pend_end);
    c->n_pend -= n;
    return n;
}

/* One request line.  Returns non-zero to stop reading this client. */
static int on_line(const char *line, size_t len, void *userdata) {
    ctl_client *c = userdata;
    if (c->closing)
        return 1;
    c->line_started = 0; /* a partial line after this one starts its own clock */

    uint64_t nl_off = c->rx_off + sv_ctl__newline_at(c->chunk, c->chunk_len, line, len);
    int fds[SV_CTL_MAX_FDS];
    size_t n_fds = take_line_fds(c, nl_off, fds);
    sv_ctl_request rq = {0};
    if (blank(line, len)) {
        if (n_fds)
            client_send_error(c, NULL, EINVAL, "file descriptors sent with an empty line");
        goto refuse;
    }
    qv_error err = {0};
    if (sv_ctl_request_parse(line, len, n_fds, &rq, &err) < 0) {
        client_send_error(c, rq.id, err.code, err.msg);
        goto refuse;
    }

    sv_ctl_req *req = calloc(1, sizeof *req);
    if (!req) {
        json_decref(rq.msg);
        close_fds(fds, n_fds);
        c->fds_held -= n_fds;
        return 1;
    }
    req->client = c;
    req->id = json_incref(rq.id);
    req->wants_progress = rq.progress;
    memcpy(req->fds, fds, n_fds * sizeof *fds);
    req->n_fds = n_fds;
    c->refs++;
    c->requests++;
    json_t *p = rq.params ? json_incref(rq.params) : json_object();
    sv_ctl_server *s = c->server;
    s->opts.handler(req, rq.method, p, s->opts.userdata);
    json_decref(p);
    json_decref(rq.msg);
    return c->closing || c->streaming ? 1 : 0;

refuse:
    json_decref(rq.msg);
    close_fds(fds, n_fds);
    c->fds_held -= n_fds;
    return 0;
}

/* Refuses a client that sent more descriptors than it may hold: they are
 * closed, it gets an error and the connection ends. */
static void too_many_fds(ctl_client *c) {
    close_fds(c->pend_fds, c->n_pend);
    c->fds_held -= c->n_pend;
    c->n_pend = 0;
    client_stop_reading(c);
    c->close_after_write = true;
    char why[128];
    snprintf(why, sizeof why, "too many file descriptors (at most %d at once, sent with the request that names them)",
             SV_CTL_MAX_FDS);
    client_send_error(c, NULL, EINVAL, why);
}

/* The descriptors of one read (SCM_RIGHTS): held until their line is
 * complete.  Returns false when the client was refused. */
static bool receive_fds(ctl_client *c, struct msghdr *mh, uint64_t end) {
    bool truncated = mh->msg_flags & MSG_CTRUNC; /* the kernel closed the rest */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(cm);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof fd, sizeof fd);
            if (c->fds_held >= SV_CTL_MAX_FDS) {
                close(fd);
                truncated = true;
                continue;
            }
            c->pend_fds[c->n_pend] = fd;
            c->pend_end[c->n_pend++] = end;
            c->fds_held++;
        }
    }
    if (truncated) {
        log_debug("control client pid %d sent too many file descriptors; dropping it", (int)c->peer.pid);
        too_many_fds(c);
        return false;
    }
    return true;
}

static void on_poll(uv_poll_t *h, int status, int events) {
    (void)events;
    ctl_client *c = h->data;
    if (c->closing || c->streaming)
        return;
    if (status < 0) {
        client_close(c);
        return;
    }
    sv_ctl__fd_control control;
    struct iovec iov = {.iov_base = c->rbuf, .iov_len = sizeof c->rbuf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = sizeof control.buf};
    ssize_t nread = recvmsg(c->rfd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (nread < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (nread <= 0) { /* descriptors come with at least one byte: none here */
        client_close(c);
        return;
    }
    c->refs++; /* the handler may close the client while we are in here */
    if (receive_fds(c, &mh, c->rx_off + (uint64_t)nread)) {
        c->chunk = c->rbuf;
        c->chunk_len = (size_t)nread;
        int r = qv_linebuf_feed(&c->lb, c->rbuf, (size_t)nread, on_line, c);
        c->chunk = NULL;
        c->chunk_len = 0;
        c->rx_off += (uint64_t)nread;
        if (r == -EMSGSIZE && !c->closing) {
            char why[128];
            snprintf(why, sizeof why, "request larger than %zu bytes", c->lb.max_line);
            client_stop_reading(c);
            c->close_after_write = true;
            client_send_error(c, NULL, EMSGSIZE, why);
        } else if (r < 0 && !c->closing) {
            client_close(c);
        }
    }
    client_rearm(c);
    client_unref(c);
}

/* True if gid is the peer's primary group or one of its supplementary
 * groups, as the kernel recorded them when the peer connected
 * (SO_PEERGROUPS): never looked up again later, when the pid may belong to
 * another process. */
static bool peer_in_group(int fd, const sv_ctl_peer *p, gid_t gid) {
    if (p->gid == gid)
        return true;
    gid_t small[64];
    _cleanup_free_ gid_t *big = NULL;
    gid_t *groups = small;
    socklen_t len = sizeof small;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
        if (errno != ERANGE || len > CTL_MAX_PEER_GROUPS * sizeof(gid_t) || !(big = malloc(len)))
            return false;
        groups = big;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
            return false;
    }
    for (size_t i = 0; i < len / sizeof(gid_t); i++)
        if (groups[i] == gid)
            return true;
    return false;
}

static void on_connection(uv_stream_t *listener, int status) {
    sv_ctl_server *s = listener->data;
    if (status < 0 || s->closing)
        return;
    ctl_client *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->rfd = -1;
    if (uv_pipe_init(s->loop, &c->pipe, 0) < 0) {
        free(c);
        return;
    }
    uv_timer_init(s->loop, &c->timer);
    c->pipe.data = c;
    c->timer.data = c;
    c->poll.data = c;
    c->server = s;
    c->refs = 2;
    s->refs++;
    qv_linebuf_init(&c->lb, s->opts.max_request);
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->n_clients++;

    /* requests are read with recvmsg() (a plain read() discards the
     * descriptors a request may carry) on a duplicate of the socket that a
     * uv_poll_t watches: libuv keeps one watcher per descriptor number */
    uv_os_fd_t fd;
    if (uv_accept(listener, (uv_stream_t *)&c->pipe) < 0 || uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 ||
        (c->rfd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0 || uv_poll_init(s->loop, &c->poll, c->rfd) < 0) {
        qv_closep(&c->rfd);
        client_close(c);
        return;
    }
    c->refs++;
    c->polling = true;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        client_close(c);
        return;
    }
    c->peer = (sv_ctl_peer){.pid = cred.pid, .uid = cred.uid, .gid = cred.gid};
    bool privileged = cred.uid == 0 || cred.uid == geteuid();
    c->peer.may_write = privileged || (s->opts.group != (gid_t)-1 && peer_in_group(fd, &c->peer, s->opts.group));

    if (s->n_clients > s->opts.max_clients + (privileged ? s->opts.reserved_clients : 0)) {
        c->close_after_write = true;
        client_send_error(c, NULL, EAGAIN, "too many control connections; try again");
        return;
    }
    if (uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_poll) < 0)
        client_close(c);
    else
        client_rearm(c);
}

/* 1 if something accepts connections at sa, 0 if not. */
static int socket_alive(const struct sockaddr_un *sa) {
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    return connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0;
}

static void on_listener_closed(uv_handle_t *h) {
    server_unref(h->data);
}

int sv_ctl_server_new(uv_loop_t *loop, const sv_ctl_options *opts, sv_ctl_server **ret, qv_error *err) {
    struct sockaddr_un sa;
    if (sv_ctl__sockaddr(opts->path, &sa) < 0)
        return qv_error_set(err, ENAMETOOLONG, "control socket path %s is longer than %zu bytes", opts->path,
                            sizeof sa.sun_path - 1);
    struct stat st;
    if (lstat(opts->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return qv_error_set(err, EEXIST, "%s exists and is not a socket; refusing to replace it", opts->path);
        if (socket_alive(&sa))
            return qv_error_set(err, EADDRINUSE, "another daemon is listening on %s", opts->path);
        unlink(opts->path); /* stale socket of a daemon that died */
    }

    sv_ctl_server *s = calloc(1, sizeof *s);
    if (!s)
        return qv_error_set(err, ENOMEM, "out of memory");
    s->loop = loop;
    s->opts = *opts;
    s->path = strdup(opts->path);
    s->opts.path = s->path;
    if (!s->opts.progress_interval_ms)
        s->opts.progress_interval_ms = CTL_PROGRESS_INTERVAL_MS;
    if (!s->opts.progress_repeat_ms)
        s->opts.progress_repeat_ms = CTL_PROGRESS_REPEAT_MS;
    if (!s->opts.line_timeout_ms)
        s->opts.line_timeout_ms = CTL_LINE_TIMEOUT_MS;
    if (!s->opts.idle_timeout_ms)
        s->opts.idle_timeout_ms = CTL_IDLE_TIMEOUT_MS;
    s->refs = 1;
    if (!s->path) {
        free(s);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    int r = uv_pipe_init(loop, &s->listener, 0);
    if (r < 0) {
        free(s->path);
        free(s);
        return qv_error_set(err, -r, "uv_pipe_init: %s", uv_strerror(r));
    }
    s->listener.data = s;

    /* Bind under a tight umask so the socket is never reachable with wider
     * permissions than asked for, then set owner group and mode. */
    mode_t old = umask(0077);
    r = uv_pipe_bind(&s->listener, s->path);
    umask(old);
    if (r == 0 && opts->group != (gid_t)-1 && chown(s->path, (uid_t)-1, opts->group) < 0)
        r = -errno;
    if (r == 0 && chmod(s->path, opts->mode) < 0)
        r = -errno;
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
    if (r < 0) {
        qv_error_set(err, -r, "cannot listen on %s: %s", s->path, uv_strerror(r));
        unlink(s->path);
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return r;
    }
    *ret = s;
    return 0;
}

void sv_ctl_server_close(sv_ctl_server *s) {
    if (!s || s->closing)
        return;
    s->closing = true;
    unlink(s->path);
    while (s->clients)
        client_close(s->clients);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}

size_t sv_ctl_server_clients(const sv_ctl_server *s) {
    return s->n_clients;
}
