/* The metrics endpoint: HTTP on metrics.listen, served by libmicrohttpd
 * (loaded on first use, common/dlib.h) on the daemon's own loop.
 *
 * MHD runs without threads of its own: its epoll fd is watched with a
 * uv_poll and its timeout with a uv_timer, both re-armed after every
 * MHD_run(), so all of it happens on the loop and nothing is shared with
 * another thread.  A GET /metrics suspends its connection
 * (MHD_suspend_connection) and starts the text through `source`; the
 * text comes back later on the loop (after QEMU and the agents answered,
 * within the scrape's deadline) and the connection is resumed with it.
 * No request waits on I/O to QEMU inside a callback, and nothing is armed
 * while no connection is open: an idle daemon is not woken.  Every
 * response says "Connection: close", so no kept-alive connection needs a
 * timer between scrapes.
 *
 * Bounds: 32 connections at once, 32 KiB of memory each (a longer request
 * head is refused with 431), 10 s without progress closes a connection. */
#pragma once

#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#include "error.h"

/* The text was made (status 0; text taken by the callee) or could not be
 * (a negative errno, text NULL). */
typedef void (*sv_metrics_text_fn)(int status, char *text, size_t len, void *done_data);

/* Where the text comes from (scrape.h in the daemon; a fake in tests).
 * start calls done exactly once, maybe before it returns, unless its
 * handle is cancelled; it returns the handle while it waits, else NULL. */
typedef struct sv_metrics_source {
    void *(*start)(void *userdata, sv_metrics_text_fn done, void *done_data);
    void (*cancel)(void *handle);
    void *userdata;
} sv_metrics_source;

typedef struct sv_metrics_server sv_metrics_server;

/* Listens on `listen` (metrics.listen: common/listenaddr.h).  A unix
 * socket is made like the control socket: a stale one is replaced, any
 * other file refused (-EEXIST), mode 0660 with `group` ((gid_t)-1: the
 * daemon's).  -EADDRINUSE when something listens there already,
 * -EOPNOTSUPP when libmicrohttpd cannot be loaded; err says which. */
int sv_metrics_server_new(uv_loop_t *loop, const char *listen, gid_t group, const sv_metrics_source *source,
                          sv_metrics_server **ret, qv_error *err);
/* Stops listening: texts still being made are cancelled and their
 * requests answered 503; every connection is closed.  Frees the server
 * once the loop closed its handles.  NULL is a no-op. */
void sv_metrics_server_close(sv_metrics_server *s);
