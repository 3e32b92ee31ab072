/* Guest-agent (qemu-guest-agent) client.
 *
 * Same framing as QMP (qmp.h) but no greeting and no session: replies left
 * over from an earlier client (or from a command of ours that timed out) may
 * be waiting in the channel.  Before each exchange series, that is whenever
 * the client starts working after being idle and after any timeout or
 * garbage, it resynchronises: it sends a 0xFF byte (which resets the agent's
 * JSON parser) and `guest-sync-delimited` with a random id, skips every byte
 * up to the agent's 0xFF marker and every stale reply, and goes on once the
 * reply carrying its id arrives.
 *
 * Commands run one at a time, in the order sent.  Status codes, callback
 * rules and JSON ownership are those of qmp.h (QMP_E*); in addition a reply
 * the client cannot parse fails only the command in flight (QMP_EPROTO) and
 * forces a resync; the connection stays up.  A timeout (QMP_ETIMEDOUT) runs
 * from qga_send() and covers the resync too. */
#pragma once

#include "qmp.h"

typedef struct qga_conn qga_conn;

/* Lost connection: EOF (QMP_EDISCONNECTED), failed connect or write.
 * Called exactly once, after every pending command was completed. */
typedef void (*qga_disconnect_cb)(qga_conn *conn, int status, void *userdata);

/* Like qmp_reply_cb. */
typedef void (*qga_reply_cb)(qga_conn *conn, int status, json_t *result, const qmp_error *err,
                             void *userdata);

typedef struct qga_options {
    qga_disconnect_cb on_disconnect; /* may be NULL */
    void *userdata;
} qga_options;

/* Connects to the agent's socket (the chardev of the virtserialport
 * org.qemu.guest_agent.0, or `qemu-ga -m unix-listen`).  As qmp_connect(). */
int qga_connect(uv_loop_t *loop, const char *path, const qga_options *opts, qga_conn **ret_conn);
/* As qmp_open_fd(): owns fd on success only. */
int qga_open_fd(uv_loop_t *loop, int fd, const qga_options *opts, qga_conn **ret_conn);
/* As qmp_close(): pending commands complete with QMP_ECANCELED first. */
void qga_close(qga_conn *conn);

/* Queues {"execute": command, "arguments": args, "id": N}.  As qmp_send(). */
int qga_send(qga_conn *conn, const char *command, json_t *args, uint64_t timeout_ms, qga_reply_cb cb,
             void *userdata);

/* guest-ping. */
int qga_ping(qga_conn *conn, uint64_t timeout_ms, qga_reply_cb cb, void *userdata);

/* guest-info: the agent's version; `result` is the whole reply (borrowed),
 * with "supported_commands". */
typedef void (*qga_info_cb)(qga_conn *conn, int status, const char *version, json_t *result,
                            const qmp_error *err, void *userdata);
int qga_info(qga_conn *conn, uint64_t timeout_ms, qga_info_cb cb, void *userdata);

/* guest-network-get-interfaces, parsed.  Everything is borrowed for the
 * duration of the callback.
 *
 * The agent is the guest's (a compromised guest says what it likes), so the
 * reply is checked before anyone sees it, and refused whole (QMP_EBADREPLY)
 * when anything is off: addresses must parse (inet_pton) and are handed on
 * re-formatted by inet_ntop, prefixes in range, interface names printable
 * ASCII of at most QGA_MAX_IFNAME bytes, MACs hex octets and colons, at most
 * QGA_MAX_INTERFACES interfaces of at most QGA_MAX_ADDRESSES addresses. */
#define QGA_MAX_IFNAME 64
#define QGA_MAX_INTERFACES 256
#define QGA_MAX_ADDRESSES 64

typedef struct qga_ip_address {
    int family;            /* AF_INET or AF_INET6 */
    char address[46];      /* "192.0.2.2", "fe80::1": inet_ntop's form (INET6_ADDRSTRLEN) */
    unsigned prefix;       /* 0..32 or 0..128 */
} qga_ip_address;

typedef struct qga_interface {
    const char *name; /* printable ASCII, 1..QGA_MAX_IFNAME bytes */
    const char *mac; /* "52:54:00:12:34:56"; NULL when the agent gave none */
    const qga_ip_address *addrs;
    size_t n_addrs;
} qga_interface;

typedef void (*qga_interfaces_cb)(qga_conn *conn, int status, const qga_interface *ifaces, size_t n_ifaces,
                                  const qmp_error *err, void *userdata);
int qga_network_get_interfaces(qga_conn *conn, uint64_t timeout_ms, qga_interfaces_cb cb, void *userdata);

/* guest-shutdown, mode "powerdown", "reboot" or "halt" (NULL: the agent's
 * default, powerdown).  The agent sends no reply on success, so `cb` gets 0
 * once the request was written; whether the guest stops must be watched
 * elsewhere (QMP SHUTDOWN event, process exit).  An error the agent might
 * send is skipped by the next resync. */
int qga_shutdown(qga_conn *conn, const char *mode, uint64_t timeout_ms, qga_reply_cb cb, void *userdata);

/* ---- guest-exec and guest-file-*: the replies, checked ----
 *
 * Pure functions over a reply's "return" value (borrowed; the strings they
 * hand out point into it).  The agent is the guest's, so every field is
 * checked and a reply that is off in any way is refused whole
 * (QMP_EBADREPLY): ids and handles positive integers, exit codes 0..255,
 * signals 1..127, never both, base64 strict and within the bounds below,
 * counts that agree with the data. */

/* qemu-ga keeps at most this much of a command's stdout and of its stderr
 * (GUEST_EXEC_MAX_OUTPUT in QEMU's qga/commands.c) and discards the rest,
 * saying so with out-truncated / err-truncated. */
#define QGA_EXEC_MAX_OUTPUT (16u << 20)
/* The longest reply to guest-exec-status or guest-file-read: both outputs
 * at their maximum, base64 (2 x 21.3 MiB), and room for the rest.  Only
 * while one of those is in flight; every other reply, and whatever the
 * agent sends unasked, is held to QMP_MAX_MESSAGE, so a guest cannot make
 * the daemon keep 48 MiB per VM that nobody asked for (the line buffer is
 * released after a long line, linebuf.c). */
#define QGA_MAX_MESSAGE (48u << 20)

/* guest-exec: {"pid": N}. */
int qga_parse_exec(json_t *result, int64_t *ret_pid);

typedef struct qga_exec_output {
    const char *b64; /* NULL when the agent sent none */
    size_t b64_len;
    size_t len;      /* decoded length, <= QGA_EXEC_MAX_OUTPUT */
    bool truncated;  /* the agent discarded what came after */
} qga_exec_output;

typedef struct qga_exec_status {
    bool exited;
    int exitcode; /* 0..255, or -1 */
    int signal;   /* 1..127 when a signal ended it, or -1 */
    qga_exec_output out, err;
} qga_exec_status;

/* guest-exec-status: {"exited": B, "exitcode"?, "signal"?, "out-data"?,
 * "err-data"?, "out-truncated"?, "err-truncated"?}.  An exited process has
 * exactly one of exitcode and signal; one still running has neither and
 * no output (qemu-ga hands the output over at the end, all at once). */
int qga_parse_exec_status(json_t *result, qga_exec_status *ret);

/* guest-file-open: the handle, a positive integer. */
int qga_parse_file_open(json_t *result, int64_t *ret_handle);

typedef struct qga_file_chunk {
    const char *b64;
    size_t b64_len;
    size_t count; /* decoded length, <= the count asked for */
    bool eof;
} qga_file_chunk;

/* guest-file-read of at most `asked` bytes: {"count", "buf-b64", "eof"}. */
int qga_parse_file_read(json_t *result, size_t asked, qga_file_chunk *ret);
/* guest-file-write of `sent` bytes: {"count", "eof"}; *ret_count <= sent. */
int qga_parse_file_write(json_t *result, size_t sent, size_t *ret_count);
