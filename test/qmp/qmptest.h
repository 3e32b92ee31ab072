/* Helpers for the qmp/ tests: a loop with a watchdog, a scripted fake peer
 * on the other end of a socketpair, reply recorders, and spawning of real
 * QEMU / qemu-ga with a listening socket as fd 3. */
#pragma once

#include "testlib.h"

#include "linebuf.h"
#include "qmp/qga.h"
#include "qmp/qmp.h"

#include <stdbool.h>
#include <sys/types.h>

/* ---- loop ---- */

typedef struct tloop {
    uv_loop_t loop;
    uv_timer_t watchdog;
    int seq;       /* global order of recorded callbacks */
    int completed; /* reply recorders called so far */
} tloop;

void tloop_init(tloop *t);
/* Runs until *var >= target or the (scaled) timeout passes; returns whether
 * the condition was met. */
bool tloop_wait(tloop *t, const int *var, int target, uint64_t timeout_ms);
/* Runs the loop for about ms milliseconds (not scaled). */
void tloop_run_for(tloop *t, uint64_t ms);
/* Closes the watchdog, runs until no handle is left, and asserts that the
 * loop closes cleanly. */
void tloop_finish(tloop *t);

/* ---- fake peer ---- */

typedef struct peer peer;
/* Called for every line the client wrote, parsed; msg is borrowed.
 * `ff` counts 0xFF bytes that preceded the line. */
typedef void (*peer_msg_cb)(peer *p, json_t *msg, int ff, void *userdata);

struct peer {
    tloop *t;
    uv_pipe_t pipe;
    uv_timer_t slow;
    qv_linebuf lb;
    bool open;
    bool auto_caps;   /* answer qmp_capabilities with success */
    int ff_pending;   /* 0xFF bytes seen since the last line */
    int ff_total;
    int n_received;
    json_t *received; /* array of every parsed line */
    peer_msg_cb on_msg;
    void *userdata;
    char *slow_buf; /* bytes still to write one at a time */
    size_t slow_len, slow_pos;
    bool eof_after_slow;
    int writes_pending;
};

/* Creates the pair: *client_fd is for the client under test. */
void peer_init(peer *p, tloop *t, int *client_fd);
/* Serves on an already connected socket (taken over). */
void peer_init_fd(peer *p, tloop *t, int fd);
void peer_write(peer *p, const void *data, size_t len);
void peer_writes(peer *p, const char *s);
void peer_writef(peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes one byte per loop iteration (queued after earlier slow data). */
void peer_write_slowly(peer *p, const char *s);
/* Half-closes after everything queued was written: the client sees EOF. */
void peer_eof(peer *p);
/* Closes the peer's handles. */
void peer_close(peer *p);
/* The id of the n-th received message (0-based); asserts it exists. */
int64_t peer_id(peer *p, int n);
const char *peer_command(peer *p, int n);

#define QMP_TEST_GREETING                                                                              \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": "   \
    "\"Debian 1:7.2\"}, \"capabilities\": [\"oob\"]}}\r\n"

/* ---- reply recorder ---- */

typedef struct reply {
    tloop *t;
    int calls;
    int seq;
    int status;
    json_t *result; /* owned copy */
    char error_class[64];
    char desc[256];
} reply;

void reply_init(reply *r, tloop *t);
void reply_done(reply *r);
void reply_cb(qmp_conn *c, int status, json_t *result, const qmp_error *err, void *userdata);
void qga_reply_cb_rec(qga_conn *c, int status, json_t *result, const qmp_error *err, void *userdata);

/* ---- processes ---- */

/* Full path of an executable from PATH, /usr/sbin or /sbin; NULL if none.
 * Caller frees. */
char *find_program(const char *name);
/* fork+exec argv with fd3 as fd 3 (may be -1), stdin from /dev/null and
 * stdout/stderr to log_path (or /dev/null).  With listen_fds, sets
 * LISTEN_FDS=1 and LISTEN_PID for systemd-style socket activation. */
pid_t spawn_with_fd3(char *const argv[], int fd3, bool listen_fds, const char *log_path);
/* Waits up to timeout_ms (scaled) for pid; SIGKILLs it after that.  Returns
 * the wait status, or -1 if it had to be killed. */
int wait_pid(pid_t pid, uint64_t timeout_ms);
/* Runs argv and returns its stdout (caller frees), NULL on failure. */
char *run_capture(char *const argv[]);
