/* QMP client: the supervisor's only channel into a running QEMU.
 *
 * An asynchronous client on a libuv stream (AF_UNIX socket).  It reads the
 * greeting, negotiates `qmp_capabilities`, matches replies to commands by
 * `id`, delivers events, and turns every failure of the peer (EOF, garbage,
 * oversized input, stalls) into a status for each caller.  docs/qmp.md has
 * the design.
 *
 * Error convention: fallible functions return 0 or a negative errno.
 * Completion callbacks get an int status:
 *
 *   0                  success
 *   QMP_ECOMMAND       QEMU answered with an error reply; `err` carries the
 *                      error class and description
 *   QMP_ETIMEDOUT      the command's timeout elapsed; a late reply is dropped
 *   QMP_EPROTO         the peer broke the protocol (invalid JSON or UTF-8, a
 *                      message over QMP_MAX_MESSAGE, a bad greeting); the
 *                      connection is closed
 *   QMP_EDISCONNECTED  the peer closed the connection (EOF or reset)
 *   QMP_ECANCELED      qmp_close() was called while the command was pending
 *   QMP_EBADREPLY      a typed helper got a reply of an unexpected shape (the
 *                      connection stays up)
 *   other negative     the errno of a failed connect (-ENOENT,
 *                      -ECONNREFUSED, ...) or of a failed write
 *
 * Callbacks are never called from inside the function that registered them
 * (qmp_send() and the helpers return first), except that qmp_close()
 * completes every pending command with QMP_ECANCELED before it returns.
 * After qmp_close() returns, no callback of that connection runs again.
 *
 * As in every libuv program, the process must ignore SIGPIPE: a QEMU that
 * went away mid-write is then reported as a disconnect, not a signal.
 *
 * Ownership of JSON values: every json_t handed to a callback is borrowed
 * and valid only during the call; json_incref() it to keep it.  Every
 * json_t passed in (command arguments) is borrowed too: the caller keeps its
 * reference, the library serialises it before returning.  Strings in
 * callback structs (qmp_error, qmp_run_status, qmp_vcpu) live as long as the
 * call. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <uv.h>

/* Longest message accepted from the peer, without its newline (libvirt's
 * cap).  A longer one is a protocol error. */
#define QMP_MAX_MESSAGE (10u * 1024u * 1024u)

/* Events delivered per connection and second at most.  QEMU rate-limits
 * its chatty events itself (RTC_CHANGE, WATCHDOG… once a second); a QEMU
 * that sends more (a guest that controls it, STOP/RESUME in a loop) is not
 * read for the rest of that second, so a flood costs bounded CPU and the
 * rest waits in the socket (replies too: commands may time out). */
#define QMP_EVENTS_PER_SECOND 500u

#define QMP_ECOMMAND (-EREMOTEIO)
#define QMP_ETIMEDOUT (-ETIMEDOUT)
#define QMP_EPROTO (-EPROTO)
#define QMP_EDISCONNECTED (-ECONNRESET)
#define QMP_ECANCELED (-ECANCELED)
#define QMP_EBADREPLY (-EBADMSG)

typedef struct qmp_conn qmp_conn;

/* An error reply: {"error": {"class": ..., "desc": ...}}. */
typedef struct qmp_error {
    const char *error_class; /* "GenericError", "CommandNotFound", ... */
    const char *desc;        /* human-readable, from QEMU */
} qmp_error;

/* Event timestamp as QEMU sends it; both -1 when it was missing. */
typedef struct qmp_timestamp {
    int64_t seconds;
    int64_t microseconds;
} qmp_timestamp;

/* Called once when qmp_capabilities succeeded: commands now flow. */
typedef void (*qmp_ready_cb)(qmp_conn *conn, void *userdata);
/* An event.  `data` is NULL when the event has none (borrowed otherwise). */
typedef void (*qmp_event_cb)(qmp_conn *conn, const char *name, json_t *data, const qmp_timestamp *ts,
                             void *userdata);
/* The connection is lost for a reason other than qmp_close(): EOF
 * (QMP_EDISCONNECTED), protocol error (QMP_EPROTO), handshake timeout
 * (QMP_ETIMEDOUT), failed connect or write (negative errno).  Called exactly
 * once, after every pending command was completed with the same status.  The
 * caller must still call qmp_close() to free the connection. */
typedef void (*qmp_disconnect_cb)(qmp_conn *conn, int status, void *userdata);

/* The reply to one command.  On status 0, `result` is the "return" value
 * (borrowed) and `err` is NULL; on QMP_ECOMMAND, `err` is set and `result`
 * is NULL; otherwise both are NULL. */
typedef void (*qmp_reply_cb)(qmp_conn *conn, int status, json_t *result, const qmp_error *err,
                             void *userdata);

typedef struct qmp_options {
    qmp_ready_cb on_ready;           /* may be NULL */
    qmp_event_cb on_event;           /* may be NULL: events are dropped */
    qmp_disconnect_cb on_disconnect; /* may be NULL */
    void *userdata;                  /* passed to the three above */
    /* Greeting plus capabilities negotiation must finish within this time,
     * counted from connect/open; 0 waits for ever.  On expiry the connection
     * fails with QMP_ETIMEDOUT. */
    uint64_t handshake_timeout_ms;
} qmp_options;

/* Creates and listens on an AF_UNIX stream socket at `path` for QEMU's
 * `-chardev socket,fd=N,server=on,wait=off`.  A stale socket file at `path`
 * is removed; any other existing file is -EEXIST.  The socket file gets mode
 * 0600.  *ret_fd is O_CLOEXEC: the spawner maps it into QEMU explicitly.
 * Because the socket listens before QEMU starts, qmp_connect() to `path` can
 * follow at once: the connection waits in the backlog until QEMU accepts. */
int qmp_listen_socket(const char *path, int *ret_fd);

/* Connects to the monitor socket at `path`, asynchronously.  Commands may be
 * sent at once: they are held until the handshake is done (their timeouts
 * run from qmp_send()).  A failed connect is reported through on_disconnect.
 * Returns 0 and sets *ret_conn, or a negative errno (-ENAMETOOLONG, ...). */
int qmp_connect(uv_loop_t *loop, const char *path, const qmp_options *opts, qmp_conn **ret_conn);

/* The same over an already connected stream socket `fd` (socketpair, or an
 * accepted connection).  On success the connection owns fd (and sets
 * FD_CLOEXEC on it); on failure fd is left to the caller. */
int qmp_open_fd(uv_loop_t *loop, int fd, const qmp_options *opts, qmp_conn **ret_conn);

/* Closes the connection and releases it.  Every pending command completes
 * with QMP_ECANCELED before this returns; on_disconnect is not called.  Safe
 * from inside any callback of this connection; memory is freed once libuv
 * has closed the handles, so the loop must run on.  NULL is accepted. */
void qmp_close(qmp_conn *conn);

/* Sends {"execute": command, "arguments": args, "id": N}.  `args` is a JSON
 * object or NULL, borrowed.  `timeout_ms` 0 means no timeout.  `cb` (may be
 * NULL) is called exactly once if this returns 0, never if it fails.
 * Returns -ENOTCONN once the connection failed or is closing, -EINVAL for a
 * bad command or arguments, -ENOMEM. */
int qmp_send(qmp_conn *conn, const char *command, json_t *args, uint64_t timeout_ms, qmp_reply_cb cb,
             void *userdata);

/* The greeting's QEMU version; -ENODATA before the greeting or when it
 * carried none. */
int qmp_version(qmp_conn *conn, int *ret_major, int *ret_minor, int *ret_micro);
/* Why the connection failed, in words ("invalid JSON (or not an object):
 * '...'", "a message over 10485760 bytes", "the peer closed the connection
 * while negotiating capabilities", ...); "" while it has not.  Valid until
 * qmp_close(). */
const char *qmp_failure(const qmp_conn *c);
/* The greeting object ({"QMP": ...}), borrowed; NULL before it arrived. */
json_t *qmp_greeting(qmp_conn *conn);
/* True between on_ready and the connection's failure or close. */
bool qmp_is_ready(qmp_conn *conn);

/* ---- Helpers for the commands the supervisor uses ---- */

/* query-status: `status` is QEMU's run state ("prelaunch", "paused",
 * "running", "shutdown", ...). */
typedef struct qmp_run_status {
    bool running;
    const char *status;
} qmp_run_status;
typedef void (*qmp_status_cb)(qmp_conn *conn, int status, const qmp_run_status *st, const qmp_error *err,
                              void *userdata);
int qmp_query_status(qmp_conn *conn, uint64_t timeout_ms, qmp_status_cb cb, void *userdata);

/* query-cpus-fast: one entry per vCPU, in QEMU's order.  thread_id is the
 * host thread (a task under /proc/QEMU_PID/task/) to pin. */
typedef struct qmp_vcpu {
    int64_t cpu_index;
    pid_t thread_id;
    const char *qom_path; /* NULL if absent */
    const char *target;   /* NULL if absent */
} qmp_vcpu;
typedef void (*qmp_cpus_cb)(qmp_conn *conn, int status, const qmp_vcpu *cpus, size_t n_cpus,
                            const qmp_error *err, void *userdata);
int qmp_query_cpus_fast(qmp_conn *conn, uint64_t timeout_ms, qmp_cpus_cb cb, void *userdata);

/* query-blockstats: I/O counters of each block backend QEMU has, in QEMU's
 * order.  `device` names it: the backend's node name ("disk0"), else its
 * device name, else its qdev path.  The reply is QEMU's and so the guest's
 * to shape: it is refused whole (QMP_EBADREPLY) unless it is an array of at
 * most QMP_BLOCKSTATS_MAX objects, each named by 1..QMP_BLOCK_NAME_MAX
 * printable ASCII characters (no space, quote or backslash) and carrying
 * `stats` with the four counters as non-negative integers. */
#define QMP_BLOCKSTATS_MAX 64
#define QMP_BLOCK_NAME_MAX 127
typedef struct qmp_blockstats {
    const char *device;
    uint64_t rd_bytes, wr_bytes, rd_operations, wr_operations;
} qmp_blockstats;
typedef void (*qmp_blockstats_cb)(qmp_conn *conn, int status, const qmp_blockstats *stats, size_t n,
                                  const qmp_error *err, void *userdata);
int qmp_query_blockstats(qmp_conn *conn, uint64_t timeout_ms, qmp_blockstats_cb cb, void *userdata);

/* Commands without a meaningful result.  Note QEMU's semantics: an ACPI
 * system_powerdown sent to a paused VM is queued until it resumes; quit
 * replies, emits SHUTDOWN and then closes the connection (EOF). */
int qmp_cont(qmp_conn *conn, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata);
int qmp_stop(qmp_conn *conn, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata);
int qmp_system_powerdown(qmp_conn *conn, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata);
int qmp_system_reset(qmp_conn *conn, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata);
int qmp_quit(qmp_conn *conn, uint64_t timeout_ms, qmp_reply_cb cb, void *userdata);
