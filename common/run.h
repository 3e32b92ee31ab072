/* Running helper programs (qemu-img, …) to completion, the only way the
 * product starts a child besides QEMU itself: an argv array, never a shell. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct qv_run_result {
    int status;    /* waitpid() status */
    char *out;     /* stdout, NUL-terminated (truncated at the cap), owned */
    char *err;     /* stderr, likewise */
} qv_run_result;

/* Progress hook: called with each chunk of stdout as it arrives (for tools
 * that print progress, like `qemu-img convert -p`).  May be NULL. */
typedef void (*qv_run_output_fn)(const char *chunk, size_t len, void *userdata);

/* Runs argv[0] (searched in PATH) with stdin from /dev/null, capturing
 * stdout and stderr (up to 4 MiB each), and waits for it.  timeout_ms 0
 * waits for ever; on expiry the child is killed and -ETIMEDOUT returned.
 * Returns 0 when the program ran (whatever its exit status: see
 * qv_run_ok()), -ENOENT when it does not exist, other negative errnos. */
int qv_run(char *const argv[], int timeout_ms, qv_run_output_fn on_out, void *userdata, qv_run_result *ret);
/* Like qv_run(), but running out of time is an outcome, not an error: the
 * child is killed (SIGKILL), 0 is returned with *ret_timed_out true, and
 * *ret holds what it printed until then and its wait status.  For probes
 * whose hung child's last words are the answer. */
int qv_run_bounded(char *const argv[], int timeout_ms, qv_run_output_fn on_out, void *userdata, qv_run_result *ret,
                   bool *ret_timed_out);
/* qv_run() without a timeout that ends early when cancel_fd (an eventfd,
 * a pipe's read end; -1: never) becomes readable: the child is killed
 * (SIGKILL) and reaped, and -ECANCELED returned (nothing in *ret to free).
 * For long copies (`vm clone`) a client may give up on. */
int qv_run_cancellable(char *const argv[], int cancel_fd, qv_run_output_fn on_out, void *userdata,
                       qv_run_result *ret);
void qv_run_result_free(qv_run_result *r);
/* True when the program exited with status 0. */
int qv_run_ok(const qv_run_result *r);
/* "exited with status 3", "killed by signal 9 (Killed)". */
void qv_run_describe(const qv_run_result *r, char *buf, size_t size);
