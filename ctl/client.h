/* The CLI's blocking client of the control socket (docs/protocol.md): one
 * connection per call, one request, its progress messages and one reply;
 * descriptors (SCM_RIGHTS) go with the request's first byte, and a streaming
 * method's connection is handed back to the caller.  No event loop: poll()
 * with a deadline.  The messages themselves are ctl/protocol.h's.
 *
 * Called by cmd/ (cmd/cli.c, cmd/cmd-console.c) and tests; the daemon's end
 * is ctl/server.h. */
#pragma once

#include <jansson.h>
#include <signal.h>
#include <stddef.h>

#include "ctl/protocol.h"
#include "error.h"

/* One request, one reply.  On a reply with an error, returns its negative
 * code with err->msg set to the daemon's message.  A missing or refusing
 * socket is -ECONNREFUSED ("daemon not running"), no answer within
 * timeout_ms is -ETIMEDOUT.  *ret_result gets a new reference on success. */
int sv_ctl_call(const char *path, const char *method, json_t *params, int timeout_ms, json_t **ret_result,
                qv_error *err);

/* A streaming method: sends one request, waits for its
 * reply (timeout_ms), and on success hands back the connection (*ret_fd,
 * O_CLOEXEC, blocking) with the bytes that followed the reply line in the
 * same read (*ret_rest, malloc'd, *ret_rest_len may be 0): the start of the
 * stream.  Errors as sv_ctl_call(). */
int sv_ctl_call_stream(const char *path, const char *method, json_t *params, int timeout_ms, json_t **ret_result,
                       int *ret_fd, char **ret_rest, size_t *ret_rest_len, qv_error *err);

/* Called with each progress message's "progress" value (borrowed). */
typedef void (*sv_ctl_progress_fn)(json_t *progress, void *userdata);
/* sv_ctl_call_progress() (on_progress may be NULL) that sends fds (at most
 * SV_CTL_MAX_FDS, borrowed: still the caller's) with the request. */
int sv_ctl_call_fds(const char *path, const char *method, json_t *params, const int *fds, size_t n_fds,
                    int timeout_ms, sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result,
                    qv_error *err);

/* A flag a signal handler sets (NULL: none, the default): once it is
 * non-zero, a call waiting for its reply stops with -EINTR ("interrupted")
 * and closes its connection, which tells the daemon its client went away
 * (a request that can be interrupted stops then: vm.copy_in, vm.clone).
 * The handler must be installed without SA_RESTART. */
void sv_ctl_client_interrupt_on(volatile sig_atomic_t *flag);

/* sv_ctl_call() that opts in to progress messages when on_progress is
 * non-NULL, and then restarts the timeout at each one: timeout_ms becomes
 * the longest silence, not the longest request. */
int sv_ctl_call_progress(const char *path, const char *method, json_t *params, int timeout_ms,
                         sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result, qv_error *err);
