/* Control socket: newline-delimited JSON requests and replies over a unix
 * socket (docs/protocol.md).
 *
 *   request:  {"id": 7, "method": "ping", "params": {…}}
 *   reply:    {"id": 7, "result": {…}}
 *          or {"id": 7, "error": {"code": "ENOENT", "message": "no VM 'x'"}}
 *
 * The server frames, parses and authenticates (SO_PEERCRED); the handler
 * decides what each method does and may answer later (asynchronously). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

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
/* Replies with result (reference stolen; NULL means {}), frees req. */
void sv_ctl_reply(sv_ctl_req *req, json_t *result);
/* Replies with an error (code: errno or QV_E*, either sign), frees req. */
void sv_ctl_reply_error(sv_ctl_req *req, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void sv_ctl_reply_qv_error(sv_ctl_req *req, const qv_error *err);

/* Blocking client used by the CLI: one request, one reply.  On a reply with
 * an error, returns its negative code with err->msg set to the daemon's
 * message.  A missing or refusing socket is -ECONNREFUSED ("daemon not
 * running"), no answer within timeout_ms is -ETIMEDOUT.  *ret_result gets a
 * new reference on success. */
int sv_ctl_call(const char *path, const char *method, json_t *params, int timeout_ms, json_t **ret_result,
                qv_error *err);
