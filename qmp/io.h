/* Header of io.c: what the QMP and guest-agent clients share below the
 * protocol: a stream wrapper with deferred freeing, a deadline heap, the
 * connection base both clients embed (request queue, deadlines, life cycle)
 * and message helpers.  Internal to qmp/ (qmp__ names) and independent of
 * both clients: nothing here needs qmp.h or qga.h.  qmp.c and qga.c include
 * it through qmp-internal.h. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "linebuf.h"

/* Statuses the shared code reports.  qmp.h publishes the same values as
 * QMP_EDISCONNECTED, QMP_ETIMEDOUT and QMP_ECANCELED; qmp-internal.h checks
 * that they agree. */
#define QMP__EDISCONNECTED (-ECONNRESET)
#define QMP__ETIMEDOUT (-ETIMEDOUT)
#define QMP__ECANCELED (-ECANCELED)

#define qmp__container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Generic function pointer: user callbacks of different types are stored
 * as this and cast back to their real type before the call. */
typedef void (*qmp__fn)(void);

/* ---- Deadline heap: O(log n) insert and removal, one timer per client ---- */

typedef struct qmp__tnode qmp__tnode;

struct qmp__tnode {
    uint64_t deadline; /* uv_now() milliseconds */
    uint64_t seq;      /* ties keep insertion order */
    size_t idx;        /* position in the heap, SIZE_MAX when not queued */
    /* A connection's own node (not a request's deadline) sets this: the
     * connection base calls it once the deadline passed, after taking the
     * node off the heap. */
    void (*fire)(qmp__tnode *node);
};

typedef struct qmp__timeq {
    qmp__tnode **v;
    size_t n;
    size_t cap;
    uint64_t seq;
} qmp__timeq;

/* Not queued, no fire. */
void qmp__tnode_init(qmp__tnode *node);
int qmp__timeq_push(qmp__timeq *q, qmp__tnode *node, uint64_t deadline);
/* Removes node if it is queued; no-op otherwise. */
void qmp__timeq_remove(qmp__timeq *q, qmp__tnode *node);
qmp__tnode *qmp__timeq_top(const qmp__timeq *q);
void qmp__timeq_free(qmp__timeq *q);

/* ---- Stream wrapper ----
 *
 * Owns a uv_pipe_t and a uv_timer_t.  The owner embeds it, gets its events
 * through ops, and calls qmp__io_release() when the user is done with it;
 * ops->on_free runs once the owner released it and both handles are closed,
 * never earlier, so the owner's memory stays valid while callbacks unwind. */

typedef struct qmp__io qmp__io;

typedef struct qmp__io_ops {
    void (*on_connect)(qmp__io *io, int status);
    void (*on_data)(qmp__io *io, const char *buf, size_t len);
    /* UV_EOF or another negative read error. */
    void (*on_read_error)(qmp__io *io, int status);
    /* A write failed (not cancelled by a close). */
    void (*on_write_error)(qmp__io *io, int status);
    void (*on_timer)(qmp__io *io);
    void (*on_free)(qmp__io *io);
} qmp__io_ops;

/* Called when one write finished: 0, a negative error, or UV_ECANCELED when
 * the stream was closed first. */
typedef void (*qmp__write_done)(qmp__io *io, int status, uint64_t tag);

struct qmp__io {
    uv_loop_t *loop;
    const qmp__io_ops *ops;
    uv_pipe_t pipe;
    uv_timer_t timer;
    uv_connect_t connect_req;
    int open_handles;
    bool shut;     /* handles are closing or closed */
    bool released; /* the owner is done with it */
    bool timer_armed;
    uint64_t timer_deadline;
};

/* Initialises both handles.  On failure the owner frees itself directly
 * if io->open_handles is 0, else it calls qmp__io_release() and frees in
 * on_free. */
int qmp__io_init(qmp__io *io, uv_loop_t *loop, const qmp__io_ops *ops);
int qmp__io_connect(qmp__io *io, const char *path);
int qmp__io_open(qmp__io *io, int fd);
int qmp__io_start_read(qmp__io *io);
void qmp__io_stop_read(qmp__io *io);
/* Writes [0xFF if ff_prefix] data "\n"; takes ownership of data (malloc'd)
 * in every case.  done may be NULL. */
int qmp__io_write_line(qmp__io *io, bool ff_prefix, char *data, size_t len, qmp__write_done done,
                       uint64_t tag);
/* Arms the timer for an absolute uv_now() deadline (0: disarm). */
void qmp__io_timer_at(qmp__io *io, uint64_t deadline);
/* Stops reading, closes both handles (idempotent). */
void qmp__io_shutdown(qmp__io *io);
/* The owner is done; frees through on_free once the handles are closed. */
void qmp__io_release(qmp__io *io);
/* uv_now() after refreshing the loop time. */
uint64_t qmp__io_now(qmp__io *io);
/* Maps a stream error to the status reported to callers (EOF, reset and
 * broken pipe are QMP__EDISCONNECTED). */
int qmp__map_stream_error(int uv_status);

/* ---- Connection base ----
 *
 * What a QMP and a guest-agent connection have in common: the stream, one
 * line buffer, the requests in send order (optionally also by id) with
 * their deadlines behind the stream's timer, and the life cycle: create,
 * connect or open an fd, fail once (every request completes, then the
 * user's on_disconnect), close (requests complete with QMP__ECANCELED, no
 * on_disconnect), free once libuv closed the handles.
 *
 * A client's struct has the qmp__conn as its first member; the base
 * allocates and frees the whole struct (ops->size).  The client gets its
 * events through qmp__conn_ops and keeps its protocol: when to write a
 * request's line, how to read replies, its own timer nodes (qmp__tnode
 * with fire).  Request callbacks never run from inside qmp__conn_submit();
 * the client may also report a failure it found where no callback may run
 * with qmp__conn_defer_fail(). */

typedef struct qmp__conn qmp__conn;
typedef struct qmp__req qmp__req;
struct qmp_error; /* qmp.h */

/* Calls the user's callback of a request: the client's typed dispatchers
 * turn the result into what the user's callback type wants. */
typedef void (*qmp__req_dispatch)(qmp__conn *conn, qmp__req *req, int status, json_t *result,
                                  const struct qmp_error *err);

struct qmp__req {
    uint64_t id;
    qmp__tnode tnode;      /* its deadline, if it has one */
    qmp__req *prev, *next; /* send order */
    qmp__req *hnext;       /* hash chain (ops->by_id) */
    char *line;            /* serialised command, until the client writes it */
    size_t line_len;
    bool no_reply; /* the client's: done once written (guest-shutdown) */
    bool fast;     /* the client's: its reply may take a fast path (qmp.c) */
    bool large;    /* the client's: its reply may be up to ops->max_message (qga.c) */
    qmp__req_dispatch dispatch;
    qmp__fn cb;
    void *userdata;
};

typedef struct qmp__conn_ops {
    size_t size;          /* of the client's struct; the qmp__conn comes first */
    size_t max_message;   /* longest line accepted (the line buffer's limit) */
    bool by_id;           /* keep a hash table by id for qmp__conn_find() */
    /* May be NULL.  Sets up the client's own fields (the struct is zeroed)
     * from opts, what the public constructor got (may be NULL). */
    void (*init)(qmp__conn *conn, const void *opts);
    /* May be NULL.  The start was issued: after the connect request is
     * queued, before an fd is taken over (so that a failure leaves it to
     * the caller).  A negative return aborts the start. */
    int (*on_start)(qmp__conn *conn);
    /* Bytes read from the stream. */
    void (*on_data)(qmp__conn *conn, const char *buf, size_t len);
    /* May be NULL.  The connection may send now: after a connect finished
     * and reading started, and after the timer handled what was due. */
    void (*kick)(qmp__conn *conn);
    /* May be NULL.  req is about to complete with QMP__ETIMEDOUT. */
    void (*on_timeout)(qmp__conn *conn, qmp__req *req);
    /* May be NULL.  The connection fails with status, before the stream is
     * shut and the requests completed; conn->dead is still false. */
    void (*on_fail)(qmp__conn *conn, int status);
    /* The user's on_disconnect: runs once, after every request completed,
     * unless the user closed the connection first. */
    void (*on_disconnect)(qmp__conn *conn, int status);
    /* May be NULL.  Releases the client's own resources; the base frees
     * the struct itself afterwards. */
    void (*on_free)(qmp__conn *conn);
} qmp__conn_ops;

struct qmp__conn {
    qmp__io io;
    const qmp__conn_ops *ops;
    bool connected;        /* the connect finished (or an fd was opened) */
    bool dead;             /* failed or closed: no more I/O, no callbacks but close's */
    bool closed;           /* the user closed it */
    bool disconnect_fired; /* ops->on_disconnect ran */
    int deferred_fail;     /* reported from the timer (qmp__conn_defer_fail) */
    qv_linebuf lb;
    uint64_t next_id;
    qmp__req *head, *tail;
    size_t n_reqs;
    qmp__req **buckets; /* ops->by_id */
    size_t n_buckets;   /* power of two */
    qmp__timeq timeq;
};

/* The body of the clients' connect and open_fd: allocates ops->size zeroed
 * bytes with the base in front, runs ops->init(opts), then connects to path
 * (connect) or takes over fd (!connect; owned by the connection on success,
 * the caller's on failure, except when reading could not start, which
 * closes it with the handle).  -EINVAL without a loop or a path, -ENOMEM,
 * or the error of the connect or the fd; on failure nothing is left and
 * nothing was reported. */
int qmp__conn_start(uv_loop_t *loop, const qmp__conn_ops *ops, const void *opts, bool connect, const char *path,
                    int fd, qmp__conn **ret);
/* Fails the connection once: ops->on_fail, stream shut, every request
 * completed with status in send order, then ops->on_disconnect (unless
 * closed).  No-op once dead. */
void qmp__conn_fail(qmp__conn *conn, int status);
/* Reports status from the timer on the next loop pass (the first one
 * wins); the client stops sending meanwhile. */
void qmp__conn_defer_fail(qmp__conn *conn, int status);
/* The user's close: requests complete with QMP__ECANCELED, ops->on_disconnect
 * does not run, memory goes once libuv closed the handles.  Once only. */
void qmp__conn_close(qmp__conn *conn);

/* Queues a request for command (args borrowed, serialised into req->line),
 * with a deadline timeout_ms from now (0: none), and arms the timer if it
 * is the earliest.  -ENOTCONN once dead, -EINVAL, -ENOMEM.  The client
 * writes req->line when it likes; dispatch runs exactly once, from
 * qmp__conn_complete() or when the connection fails or closes. */
int qmp__conn_submit(qmp__conn *conn, const char *command, json_t *args, uint64_t timeout_ms,
                     qmp__req_dispatch dispatch, qmp__fn cb, void *userdata, qmp__req **ret);
/* Takes req off every queue, calls its dispatch, frees it. */
void qmp__conn_complete(qmp__conn *conn, qmp__req *req, int status, json_t *result,
                        const struct qmp_error *err);
/* Takes req off every queue and frees it without a callback (its submit
 * is being undone). */
void qmp__conn_discard(qmp__conn *conn, qmp__req *req);
/* The request with this id; NULL if none (ops->by_id only). */
qmp__req *qmp__conn_find(const qmp__conn *conn, uint64_t id);
/* Arms the timer for the earliest deadline (or a deferred failure). */
void qmp__conn_rearm(qmp__conn *conn);

/* ---- Message helpers (msg.c) ---- */

/* Serialises {"execute": command, "arguments": args, "id": id} compactly
 * (no newline).  Returns 0 and a malloc'd string, -EINVAL, -ENOMEM. */
int qmp__build_command(const char *command, json_t *args, uint64_t id, char **ret, size_t *ret_len);
/* True if the line holds only JSON white space. */
bool qmp__blank(const char *line, size_t len);
/* Parses a line into a JSON object; NULL for invalid JSON, invalid UTF-8 or
 * anything but an object. */
json_t *qmp__parse_object(const char *line, size_t len);
/* Reads an "id" member that is a non-negative integer; false otherwise. */
bool qmp__get_id(json_t *msg, uint64_t *ret);
/* A random id for guest-sync-delimited (1 .. 2^53-1). */
uint64_t qmp__random_id(void);
