/* A VM's serial log for `vm log` (docs/console.md): where the last N lines
 * begin, with a bound on how much is read to find out, and a stream of the
 * file to a client that can follow it across the VM's restarts (QEMU starts
 * a new serial.log each time; the previous one becomes serial.log.1). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"

/* At most this much of the log is read backwards to find the last lines:
 * `vm log -n 10` of a log of gigabytes without a newline reads 4 MiB. */
#define SV_LOG_TAIL_SCAN (4u << 20)

/* Where the last `lines` lines of the first `size` bytes of fd begin (a
 * final line without '\n' counts as one).  Reads at most max_scan bytes,
 * backwards from size; when that is not enough, *ret_offset is size -
 * max_scan (possibly in the middle of a line) and *ret_cut is true.
 * *ret_scanned (may be NULL) gets the bytes read.  0 or a negative errno. */
int sv_log_tail_offset(int fd, uint64_t size, uint64_t lines, uint64_t max_scan, uint64_t *ret_offset,
                       bool *ret_cut, uint64_t *ret_scanned);

typedef struct sv_logstream sv_logstream;

/* Streams `path` to the client on client_fd (taken): frames of stream.h, the
 * last `lines` lines (lines < 0: all of it), then with follow what is
 * appended, and each new file at path from its beginning (notice
 * {"boot": "new"}); without follow an end frame {"reason": "eof"} once the
 * end is reached.  At most 256 KiB are queued for the client: a slow client
 * slows the reading down, nothing is buffered beyond that.  The stream is
 * linked into *list until it ends. */
int sv_logstream_new(uv_loop_t *loop, int client_fd, const char *vm_name, const char *path, int64_t lines,
                     bool follow, sv_logstream **list, qv_error *err);
/* Ends the streams of one VM (vm_name) or of all (NULL) with
 * {"reason": reason, "message": message}. */
void sv_logstream_end(sv_logstream **list, const char *vm_name, const char *reason, const char *message);

/* A running VM's serial.log is kept under SV_SERIAL_LOG_MAX: QEMU appends
 * to it (logappend=on), and when a write takes it past the cap the daemon
 * truncates it and writes a line saying so, so a guest that prints without
 * end cannot fill the disk.  The file is watched (inotify), not polled: an
 * idle VM costs no wake-ups. */
#define SV_SERIAL_LOG_MAX (16u << 20)

typedef struct sv_serial_cap sv_serial_cap;

/* Watches dir/serial.log (opened relative to dir, never through a symlink;
 * it must exist).  max: the cap in bytes. */
int sv_serial_cap_start(uv_loop_t *loop, const char *dir, const char *vm_name, uint64_t max, sv_serial_cap **ret,
                        qv_error *err);
/* Stops watching and frees (NULL is fine). */
void sv_serial_cap_stop(sv_serial_cap *cap);
