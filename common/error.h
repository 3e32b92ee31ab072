/* One error convention for all of qvisor (see docs/conventions.md).
 *
 * Fallible functions return 0 (or a non-negative value) on success and a
 * negative errno on failure.  Where a human must read the reason, the
 * function also takes a `qv_error *err` (may be NULL) and fills in a message.
 * qvisor-private codes start at QV_ERRNO_BASE, above every Linux errno. */
#pragma once

#include <errno.h>
#include <stdarg.h>

enum {
    QV_ERRNO_BASE = 4096,
    QV_ECONFIG = QV_ERRNO_BASE, /* the node config is invalid (exit 78) */
    QV_ECAPACITY,               /* admission refused: node or pool capacity (exit 75) */
    QV_ERRNO_END,
};

typedef struct qv_error {
    int code;        /* positive errno or QV_E*, 0 when unset */
    char msg[1024];  /* human readable, no trailing newline */
} qv_error;

/* Sets err (if non-NULL) and returns -code, so callers can write
 * `return qv_error_set(err, EINVAL, "bad name '%s'", name);`.
 * A negative code is accepted and treated as its absolute value. */
int qv_error_set(qv_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int qv_error_setv(qv_error *err, int code, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/* Prepends "context: " to an existing message (keeps the code). */
void qv_error_prefix(qv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* strerror() that also knows the QV_E* codes; accepts negative values. */
const char *qv_strerror(int code);

/* Stable symbolic name ("ENOENT", "ECONFIG") for the wire protocol, and back.
 * Unknown numbers give "EIO"; unknown names give EIO. */
const char *qv_errno_name(int code);
int qv_errno_from_name(const char *name);

/* Maps an error code (either sign) to the documented CLI exit code. */
int qv_exit_code_for_errno(int code);

/* The exit codes (sysexits.h values), documented in README and --help. */
enum {
    QV_EXIT_OK = 0,
    QV_EXIT_FAILED = 1,
    QV_EXIT_FORCED = 3, /* vm stop/restart: stopped, but only by force (quit or signals) */
    QV_EXIT_USAGE = 64,
    QV_EXIT_DATAERR = 65,
    QV_EXIT_NOINPUT = 66,
    QV_EXIT_UNAVAILABLE = 69,
    QV_EXIT_CANTCREAT = 73,
    QV_EXIT_TEMPFAIL = 75,
    QV_EXIT_NOPERM = 77,
    QV_EXIT_CONFIG = 78,
};
