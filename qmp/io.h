/* Header of io.c: what the QMP and guest-agent clients share below the
 * protocol, a stream wrapper with deferred freeing, a deadline heap and
 * message helpers.  Internal to qmp/ (qmp__ names) and independent of both
 * clients: nothing here needs qmp.h or qga.h.  qmp.c and qga.c include it
 * through qmp-internal.h. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

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

typedef struct qmp__tnode {
    uint64_t deadline; /* uv_now() milliseconds */
    uint64_t seq;      /* ties keep insertion order */
    size_t idx;        /* position in the heap, SIZE_MAX when not queued */
} qmp__tnode;

typedef struct qmp__timeq {
    qmp__tnode **v;
    size_t n;
    size_t cap;
    uint64_t seq;
} qmp__timeq;

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
    char rbuf[8 * 1024]; /* one read; lines longer than this are reassembled by the line buffer */
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

/* ---- Message helpers ---- */

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
/* Maps a stream error to the status reported to callers (EOF, reset and
 * broken pipe are QMP__EDISCONNECTED). */
int qmp__map_stream_error(int uv_status);
/* A random id for guest-sync-delimited (1 .. 2^53-1). */
uint64_t qmp__random_id(void);
