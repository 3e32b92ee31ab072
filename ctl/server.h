/* The daemon's end of the control socket (docs/protocol.md; the messages
 * are ctl/protocol.h's), on the daemon's libuv loop.  Called by
 * supervisor/daemon.c, which owns the server, and by the methods in
 * supervisor/api/, which answer requests; the CLI's end is ctl/client.h.
 *
 * A long request may report progress first, to clients that asked for it
 * with "progress": true in the request (sv_ctl_progress()).
 *
 * The server frames, parses and authenticates (SO_PEERCRED, SO_PEERGROUPS,
 * both taken when the connection is accepted); the handler decides what each
 * method does and may answer later (asynchronously).
 *
 * A connection may not hold a slot for nothing: a request line must be
 * complete within line_timeout_ms of its first byte, and a connection with
 * no request in flight is closed after idle_timeout_ms without one.  A
 * connection handed over as a stream (sv_ctl_reply_stream) is no longer the
 * server's and has no timeout.  reserved_clients slots above max_clients
 * are kept for root and the daemon's own user, so that a flood of other
 * users' connections cannot lock them out.
 *
 * A request may carry file descriptors (SCM_RIGHTS, sent with its first
 * bytes; "fds": N in the request says how many): files a client opened with
 * its own rights, so that the daemon never opens a path a client named.
 * The request names them by index in its params ("kernel_fd": 0), and the
 * handler takes them with sv_ctl_req_take_fd().  A connection holds at most
 * SV_CTL_MAX_FDS at once; one that sends more is refused and closed, and
 * descriptors a request did not announce, or that its handler did not take,
 * are closed. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

#include "ctl/protocol.h"
#include "error.h"

typedef struct sv_ctl_server sv_ctl_server;
typedef struct sv_ctl_req sv_ctl_req;

typedef struct sv_ctl_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    bool may_write; /* root, the daemon's own user, or a member of the socket group */
} sv_ctl_peer;

/* Called once per well-formed request.  The handler owns req until it calls
 * one of the sv_ctl_reply*() functions exactly once (now or later); params
 * is borrowed for the duration of the call (never NULL: {} when absent). */
typedef void (*sv_ctl_handler)(sv_ctl_req *req, const char *method, json_t *params, void *userdata);

typedef struct sv_ctl_options {
    const char *path;
    mode_t mode;          /* socket file mode, e.g. 0660 */
    gid_t group;          /* (gid_t)-1: keep the creator's group */
    size_t max_request;   /* longest request line */
    size_t max_clients;   /* connections at once */
    size_t reserved_clients;   /* more, for root and the server's own user only */
    unsigned line_timeout_ms;  /* a started request line must end within this (0: 5 s) */
    unsigned idle_timeout_ms;  /* a connection with nothing in flight lives this long (0: 60 s) */
    unsigned progress_interval_ms; /* least time between progress messages (0: 100 ms) */
    unsigned progress_repeat_ms;   /* an unchanged value is sent again after this (0: 1000 ms) */
    sv_ctl_handler handler;
    void *userdata;
} sv_ctl_options;

/* Binds and listens.  An existing file at path is replaced only when nothing
 * answers on it (a stale socket); a live one is -EADDRINUSE. */
int sv_ctl_server_new(uv_loop_t *loop, const sv_ctl_options *opts, sv_ctl_server **ret, qv_error *err);
/* Stops listening, drops every connection, removes the socket file.  The
 * memory goes once libuv has closed the handles; requests still held by the
 * handler stay valid and their replies are discarded. */
void sv_ctl_server_close(sv_ctl_server *s);
/* Connections currently open (for tests and status). */
size_t sv_ctl_server_clients(const sv_ctl_server *s);

const sv_ctl_peer *sv_ctl_req_peer(const sv_ctl_req *req);

/* Takes the descriptor that params[key] names (its index among those sent
 * with the request): 1 with *ret_fd (O_CLOEXEC, the caller owns it), 0 when
 * params has no key, -EINVAL (err set) when it names none or one already
 * taken.  Call it from the handler, before replying; descriptors not taken
 * are closed with the reply.  The caller checks what the file is. */
int sv_ctl_req_take_fd(sv_ctl_req *req, json_t *params, const char *key, int *ret_fd, qv_error *err);
/* Replies with result (reference stolen; NULL means {}), frees req. */
void sv_ctl_reply(sv_ctl_req *req, json_t *result);
/* Replies with an error (code: errno or QV_E*, either sign), frees req. */
void sv_ctl_reply_error(sv_ctl_req *req, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void sv_ctl_reply_qv_error(sv_ctl_req *req, const qv_error *err);

/* Called once the reply of a streaming request is written: fd is the
 * connection's socket (a new descriptor, O_CLOEXEC; the callee owns it and
 * speaks docs/protocol.md's "Streams" on it), or -1 when the client went away
 * or the server closed first.  peer is borrowed for the call. */
typedef void (*sv_ctl_stream_fn)(int fd, const sv_ctl_peer *peer, void *userdata);
/* Replies with result (reference stolen; NULL means {}) and hands the
 * connection over: the server reads no further request from it, and once the
 * reply is out calls on_stream (exactly once) and forgets the connection.
 * Call it from the handler itself, before it returns, so that no byte after
 * the request line is taken for a request (clients send nothing after a
 * streaming request until its reply).  Replies to other requests still in
 * flight on that connection are dropped.  Frees req. */
void sv_ctl_reply_stream(sv_ctl_req *req, json_t *result, sv_ctl_stream_fn on_stream, void *userdata);

/* True once the request's client has closed its connection (or the server
 * is closing): its reply would be discarded, so work that can be
 * interrupted (vm clone) may stop. */
bool sv_ctl_req_client_gone(const sv_ctl_req *req);
/* True when the client asked for progress messages ("progress": true) and
 * is still connected: work that has to set up reporting may skip it otherwise. */
bool sv_ctl_req_wants_progress(const sv_ctl_req *req);
/* Reports progress of a request not yet answered: sends {"id", "progress"}
 * (progress: an object, reference stolen) ahead of the reply.  Call it as
 * often as convenient — whenever the value may have changed, and every
 * second or so while the work goes on.  What goes out is rate-limited: a
 * changed value at most once per progress_interval_ms, the same value again
 * only after progress_repeat_ms (a keepalive, so the client's timeout can
 * count from the last message).  A no-op when the client did not opt in or
 * has gone. */
void sv_ctl_progress(sv_ctl_req *req, json_t *progress);
