/* The metrics endpoint on libmicrohttpd, driven by the daemon's loop (see
 * http.h for the design). */
#include "supervisor/metrics/http.h"

#include "cleanup.h"
#include "dlib.h"
#include "listenaddr.h"
#include "log.h"
#include "supervisor/metrics/expo.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define HTTP_MAX_CONNECTIONS 32u
#define HTTP_CONNECTION_MEMORY (32u * 1024u)
#define HTTP_TIMEOUT_S 10u
#define HTTP_BACKLOG 64

/* libmicrohttpd and what it needs (gnutls and six more) would be mapped by
 * every `qvisor` process if linked; only a daemon with metrics.listen
 * loads it. */
#define MHD_FUNCTIONS(X, s) \
    X(s, MHD_start_daemon) X(s, MHD_stop_daemon) X(s, MHD_run) X(s, MHD_get_timeout) \
    X(s, MHD_get_daemon_info) X(s, MHD_suspend_connection) X(s, MHD_resume_connection) \
    X(s, MHD_create_response_from_buffer) X(s, MHD_add_response_header) X(s, MHD_queue_response) \
    X(s, MHD_destroy_response)
QV_DLIB_DEFINE(M, MHD_FUNCTIONS, "libmicrohttpd.so.12", "metrics.listen (the metrics endpoint)");

/* One GET /metrics, from MHD's first call until its completion. */
typedef enum req_state {
    REQ_NEW,     /* suspended; its text not asked for yet */
    REQ_WAITING, /* suspended; the source is making the text */
    REQ_READY,   /* resumed with the text (or its failure) */
} req_state;

typedef struct mreq {
    sv_metrics_server *s;
    struct MHD_Connection *conn;
    req_state state;
    void *job;    /* the source's handle while REQ_WAITING */
    int status;
    char *text;
    size_t len;
    struct mreq *next;
} mreq;

struct sv_metrics_server {
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;   /* MHD's epoll fd */
    uv_timer_t timer; /* MHD's timeout, or 0 to run again at once */
    unsigned handles; /* open uv handles; freed when the last has closed */
    bool closing;
    bool in_drive;    /* inside drive(): arming waits for its end */
    bool kick;        /* MHD must run again soon (a request to start or resume) */
    char *unix_path;  /* the socket file to remove at close, NULL for TCP */
    sv_metrics_source src;
    mreq *reqs;
};

/* ---- MHD on the loop ---------------------------------------------------------- */

static void drive(sv_metrics_server *s);

static void on_timer(uv_timer_t *t) {
    drive(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    drive(p->data);
}

/* The timer for MHD's next deadline; none while MHD has no connection. */
static void arm(sv_metrics_server *s) {
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (s->kick)
        ms = 0;
    else if (M.MHD_get_timeout(s->mhd, &ms) != MHD_YES) {
        uv_timer_stop(&s->timer);
        return;
    }
    uv_timer_start(&s->timer, on_timer, (uint64_t)ms, 0);
}

static void on_text(int status, char *text, size_t len, void *done_data) {
    mreq *m = done_data;
    m->job = NULL;
    m->status = status;
    m->text = text;
    m->len = len;
    m->state = REQ_READY;
    M.MHD_resume_connection(m->conn);
    m->s->kick = true;
    if (!m->s->in_drive)
        arm(m->s);
}

/* Requests MHD suspended during the last run get their text started here,
 * outside MHD's callbacks (the source may answer at once). */
static void start_new(sv_metrics_server *s) {
    for (mreq *m = s->reqs; m; m = m->next)
        if (m->state == REQ_NEW) {
            m->state = REQ_WAITING;
            m->job = s->src.start(s->src.userdata, on_text, m);
        }
}

static unsigned connections(sv_metrics_server *s) {
    const union MHD_DaemonInfo *i = M.MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return i ? i->num_connections : 0;
}

static void drive(sv_metrics_server *s) {
    if (s->closing)
        return;
    s->in_drive = true;
    s->kick = false;
    unsigned before = connections(s);
    M.MHD_run(s->mhd);
    /* At its connection limit MHD takes the listening socket out of its
     * epoll set, and puts it back only at the start of a run: after a run
     * that closed connections nothing else would wake it, and connections
     * would wait in the backlog for good.  So run again. */
    if (connections(s) < before)
        s->kick = true;
    start_new(s);
    s->in_drive = false;
    arm(s);
}

/* ---- requests ---------------------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned code, const char *type, char *body, size_t len,
                               bool owned) {
    struct MHD_Response *r =
        M.MHD_create_response_from_buffer(len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    M.MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    /* no kept-alive connection (and no timer) between scrapes */
    M.MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        M.MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result q = M.MHD_queue_response(conn, code, r);
    M.MHD_destroy_response(r);
    return q;
}

#define TEXT_PLAIN "text/plain; charset=utf-8"

static enum MHD_Result respond_static(struct MHD_Connection *conn, unsigned code, const char *body) {
    return respond(conn, code, TEXT_PLAIN, (char *)body, strlen(body), false);
}

/* The second call, after the resume: the text or why there is none. */
static enum MHD_Result respond_ready(mreq *m) {
    if (m->status == 0 && m->text)
        return respond(m->conn, MHD_HTTP_OK, SV_EXPO_CONTENT_TYPE, TAKE_PTR(m->text), m->len, true);
    char *msg = NULL;
    int n = asprintf(&msg, "metrics unavailable: %s\n",
                     m->status == -ECANCELED ? "the daemon is stopping" : strerror(-m->status));
    if (n < 0)
        return respond_static(m->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "metrics unavailable\n");
    return respond(m->conn, MHD_HTTP_SERVICE_UNAVAILABLE, TEXT_PLAIN, msg, (size_t)n, true);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    (void)version;
    (void)upload_data;
    sv_metrics_server *s = cls;
    mreq *m = *con_cls;
    if (m) {
        if (*upload_data_size) {
            *upload_data_size = 0; /* a body is read and ignored */
            return MHD_YES;
        }
        return m->state == REQ_READY ? respond_ready(m) : MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return respond_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/") == 0)
        return respond_static(conn, MHD_HTTP_OK, "qvisor: Prometheus metrics at /metrics\n");
    if (strcmp(url, "/metrics") != 0)
        return respond_static(conn, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n");
    if (!(m = calloc(1, sizeof *m)))
        return MHD_NO;
    *m = (mreq){.s = s, .conn = conn, .state = REQ_NEW, .next = s->reqs};
    s->reqs = m;
    *con_cls = m;
    M.MHD_suspend_connection(conn);
    s->kick = true;
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    (void)toe;
    sv_metrics_server *s = cls;
    mreq *m = *con_cls;
    if (!m)
        return;
    for (mreq **pp = &s->reqs; *pp; pp = &(*pp)->next)
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    if (m->job)
        s->src.cancel(m->job);
    free(m->text);
    free(m);
    *con_cls = NULL;
}

/* MHD's own messages (a malformed request, a client gone) are for debugging. */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    if (qv_log_get_level() < QV_LOG_DEBUG)
        return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_debug("metrics: http: %s", msg);
}

/* ---- the listening socket ----------------------------------------------------- */

/* 1 if something accepts connections at the unix socket sa. */
static bool unix_alive(const struct sockaddr_un *sa) {
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    return fd >= 0 && connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0;
}

/* A stale socket file is removed; anything else there is refused. */
static int unix_prepare(const char *path, const struct sockaddr_un *sa, qv_error *err) {
    struct stat st;
    if (lstat(path, &st) < 0)
        return 0;
    if (!S_ISSOCK(st.st_mode))
        return qv_error_set(err, EEXIST, "metrics.listen: %s exists and is not a socket; refusing to replace it",
                            path);
    if (unix_alive(sa))
        return qv_error_set(err, EADDRINUSE, "metrics.listen: something already listens on %s", path);
    unlink(path);
    return 0;
}

static int bind_unix(int fd, const qv_listen_addr *a, gid_t group, qv_error *err) {
    const struct sockaddr_un *sa = (const struct sockaddr_un *)&a->sa;
    int r = unix_prepare(sa->sun_path, sa, err);
    if (r < 0)
        return r;
    mode_t old = umask(0077); /* never reachable with wider permissions than asked for */
    r = bind(fd, (const struct sockaddr *)&a->sa, a->len) < 0 ? -errno : 0;
    umask(old);
    if (r == 0 && group != (gid_t)-1 && chown(sa->sun_path, (uid_t)-1, group) < 0)
        r = -errno;
    if (r == 0 && chmod(sa->sun_path, 0660) < 0)
        r = -errno;
    if (r < 0)
        return qv_error_set(err, -r, "metrics.listen: cannot listen on %s: %s", sa->sun_path, strerror(-r));
    return 0;
}

static int bind_inet(int fd, const qv_listen_addr *a, const char *text, qv_error *err) {
    int on = 1;
    /* a restarted daemon gets its port back while old connections linger */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (a->family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
    if (bind(fd, (const struct sockaddr *)&a->sa, a->len) == 0)
        return 0;
    int e = errno;
    if (e == EADDRINUSE)
        return qv_error_set(err, EADDRINUSE,
                            "metrics.listen %s: the address is in use (another program, or another qvisor daemon, "
                            "listens there)",
                            text);
    if (e == EADDRNOTAVAIL)
        return qv_error_set(err, e, "metrics.listen %s: no such address on this node", text);
    return qv_error_set(err, e, "metrics.listen %s: cannot bind: %s", text, strerror(e));
}

static int open_listener(const char *text, gid_t group, int *ret_fd, qv_error *err) {
    qv_listen_addr a;
    char why[256];
    if (qv_listen_addr_parse(text, &a, why, sizeof why) < 0)
        return qv_error_set(err, QV_ECONFIG, "metrics.listen: %s", why);
    _cleanup_close_ int fd = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return qv_error_set(err, errno, "metrics.listen: socket: %s", strerror(errno));
    int r = a.family == AF_UNIX ? bind_unix(fd, &a, group, err) : bind_inet(fd, &a, text, err);
    if (r < 0)
        return r;
    if (listen(fd, HTTP_BACKLOG) < 0) {
        r = qv_error_set(err, errno, "metrics.listen %s: listen: %s", text, strerror(errno));
        if (a.family == AF_UNIX)
            unlink(text);
        return r;
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/* ---- life cycle -------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
    sv_metrics_server *s = h->data;
    if (--s->handles == 0) {
        free(s->unix_path);
        free(s);
    }
}

static struct MHD_Daemon *start_mhd(sv_metrics_server *s, int fd) {
    return M.MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                              on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET,
                              (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONNECTION_MEMORY,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED,
                              on_completed, s, MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_END);
}

/* MHD, its epoll fd on a uv_poll, and the timer.  On failure what was
 * started stays for sv_metrics_server_close(); s->mhd NULL: MHD did not
 * start. */
static int start_loop(sv_metrics_server *s, int fd, qv_error *err) {
    if (!(s->mhd = start_mhd(s, fd)))
        return qv_error_set(err, EIO, "metrics.listen: libmicrohttpd did not start");
    const union MHD_DaemonInfo *info = M.MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    int r = info ? uv_poll_init(s->loop, &s->poll, info->epoll_fd) : UV_EINVAL;
    if (r < 0)
        return qv_error_set(err, -r, "metrics.listen: cannot watch libmicrohttpd: %s", uv_strerror(r));
    s->poll.data = s;
    uv_timer_init(s->loop, &s->timer);
    s->timer.data = s;
    s->handles = 2;
    r = uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (r < 0)
        return qv_error_set(err, -r, "metrics.listen: cannot watch libmicrohttpd: %s", uv_strerror(r));
    arm(s);
    return 0;
}

int sv_metrics_server_new(uv_loop_t *loop, const char *listen, gid_t group, const sv_metrics_source *source,
                          sv_metrics_server **ret, qv_error *err) {
    int r = qv_dlib_load(&M_lib, err);
    if (r < 0)
        return r;
    int fd;
    if ((r = open_listener(listen, group, &fd, err)) < 0)
        return r;
    sv_metrics_server *s = calloc(1, sizeof *s);
    char *path = listen[0] == '/' ? strdup(listen) : NULL;
    if (!s || (listen[0] == '/' && !path)) {
        free(s);
        free(path);
        close(fd);
        if (listen[0] == '/')
            unlink(listen);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    *s = (sv_metrics_server){.loop = loop, .src = *source, .unix_path = path};
    if ((r = start_loop(s, fd, err)) < 0) {
        /* a started MHD owns fd; one that failed to start may have closed
         * it or not, depending on where it failed (single-threaded here) */
        if (!s->mhd && fcntl(fd, F_GETFD) >= 0)
            close(fd);
        sv_metrics_server_close(s);
        return r;
    }
    *ret = s;
    return 0;
}

void sv_metrics_server_close(sv_metrics_server *s) {
    if (!s || s->closing)
        return;
    /* MHD must not be stopped with a suspended connection: every one is
     * resumed, its text cancelled and 503 queued */
    for (mreq *m = s->reqs; m; m = m->next) {
        if (m->state == REQ_READY)
            continue;
        if (m->job)
            s->src.cancel(m->job);
        m->job = NULL;
        m->status = -ECANCELED;
        m->state = REQ_READY;
        M.MHD_resume_connection(m->conn);
    }
    s->closing = true;
    if (s->mhd)
        M.MHD_stop_daemon(s->mhd); /* closes every connection and the listening socket */
    s->mhd = NULL;
    if (s->unix_path)
        unlink(s->unix_path);
    if (s->handles == 0) {
        free(s->unix_path);
        free(s);
        return;
    }
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
}
