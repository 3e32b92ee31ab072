/* The control protocol's messages (docs/protocol.md): what the daemon's
 * server (ctl/server.h) and the CLI's blocking client (ctl/client.h) both
 * speak.  Newline-delimited JSON over a unix stream socket:
 *
 *   request:  {"id": 7, "method": "ping", "params": {…}}
 *   reply:    {"id": 7, "result": {…}}
 *          or {"id": 7, "error": {"code": "ENOENT", "message": "no VM 'x'"}}
 *   interim:  {"id": 7, "progress": {"percent": 42.5}}   (to "progress": true)
 *
 * Error codes travel by name (qv_errno_name(), qv_errno_from_name()), so
 * both ends agree regardless of numbering.  A request may carry file
 * descriptors (SCM_RIGHTS with its first bytes, "fds": N in the request).
 *
 * Pure functions on jansson values: no sockets, no state.  Called by
 * ctl/server.c and ctl/client.c (and tests). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* The most file descriptors one connection holds at once (one request's);
 * the most one request may carry. */
#define SV_CTL_MAX_FDS 8

/* A request line, as the server reads it.  msg is a new reference (NULL when
 * the line is not JSON) that the caller releases in every case; the other
 * members are borrowed from it. */
typedef struct sv_ctl_request {
    json_t *msg;
    json_t *id;         /* a number or a string; NULL when the request has no usable one */
    const char *method;
    json_t *params;     /* the params object, or NULL when absent or null */
    bool progress;      /* "progress": true */
} sv_ctl_request;

/* Parses and checks one request line (without its '\n') that came with n_fds
 * descriptors.  0 on success; -EBADMSG when it is not JSON (or has duplicate
 * keys), -EINVAL when it is not a valid request: err->msg is then what the
 * error reply says, and ret->id (possibly NULL: "id": null) whom it goes to. */
int sv_ctl_request_parse(const char *line, size_t len, size_t n_fds, sv_ctl_request *ret, qv_error *err);

/* The request {"id", "method", "params"} (params borrowed, NULL: null), with
 * "progress": true when progress and "fds": n_fds when there are any.  A new
 * reference, NULL when out of memory. */
json_t *sv_ctl_msg_request(json_int_t id, const char *method, json_t *params, bool progress, size_t n_fds);
/* The reply {"id", "result"} (id borrowed; result stolen, NULL means {}).  A
 * new reference, NULL when out of memory. */
json_t *sv_ctl_msg_result(json_t *id, json_t *result);
/* The reply {"id", "error": {"code", "message"}} (id borrowed, NULL: null;
 * code: errno or QV_E*, either sign).  A new reference, NULL when out of memory. */
json_t *sv_ctl_msg_error(json_t *id, int code, const char *message);
/* The interim message {"id", "progress"} (both borrowed).  A new reference,
 * NULL when out of memory. */
json_t *sv_ctl_msg_progress(json_t *id, json_t *progress);

/* What a message the client reads is, for its request id. */
typedef enum sv_ctl_msg_kind {
    SV_CTL_MSG_OTHER,    /* not for this request: ignored */
    SV_CTL_MSG_PROGRESS, /* an interim progress message */
    SV_CTL_MSG_REPLY,    /* the reply: "result" or "error" */
    SV_CTL_MSG_REFUSED,  /* an error with "id": null: the server refused the connection or its framing */
} sv_ctl_msg_kind;
sv_ctl_msg_kind sv_ctl_msg_kind_of(json_t *msg, json_int_t id);

/* The outcome of a reply (or refusal; borrowed): 0 with *ret_result (if
 * non-NULL) a new reference to "result" (json null when absent), or the
 * error's negative code with err->msg the server's message. */
int sv_ctl_msg_outcome(json_t *reply, json_t **ret_result, qv_error *err);

/* msg (borrowed) dumped with flags as one line: malloc'd, ending in '\n' in
 * the place of the terminating NUL (not a C string); *ret_len counts the
 * '\n'.  NULL when out of memory. */
char *sv_ctl_msg_line(json_t *msg, size_t flags, size_t *ret_len);
