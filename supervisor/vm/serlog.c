/* Serial log tail and stream (see serlog.h). */
#include "supervisor/vm/serlog.h"
#include "supervisor/vm/layout.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "ctl/fsink.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TAIL_CHUNK 65536
#define STREAM_CHUNK 65536
#define STREAM_QUEUE_MAX (256u << 10)
#define FOLLOW_POLL_MS 250

int sv_log_tail_offset(int fd, uint64_t size, uint64_t lines, uint64_t max_scan, uint64_t *ret_offset,
                       bool *ret_cut, uint64_t *ret_scanned) {
    uint64_t pos = size, scanned = 0, found = 0;
    bool first = true;
    char buf[TAIL_CHUNK];
    if (lines == 0) {
        *ret_offset = size;
        *ret_cut = false;
        if (ret_scanned)
            *ret_scanned = 0;
        return 0;
    }
    while (pos > 0 && scanned < max_scan) {
        size_t n = pos < sizeof buf ? (size_t)pos : sizeof buf;
        if (n > max_scan - scanned)
            n = (size_t)(max_scan - scanned);
        ssize_t got = pread(fd, buf, n, (off_t)(pos - n));
        if (got < 0)
            return -errno;
        if ((size_t)got != n)
            return -EIO; /* shrank under us */
        scanned += n;
        for (size_t i = n; i-- > 0;) {
            if (buf[i] != '\n')
                continue;
            if (first && pos - n + i == size - 1) { /* the last line's own end */
                first = false;
                continue;
            }
            if (++found == lines) {
                *ret_offset = pos - n + i + 1;
                *ret_cut = false;
                if (ret_scanned)
                    *ret_scanned = scanned;
                return 0;
            }
        }
        first = false;
        pos -= n;
    }
    *ret_offset = pos;
    *ret_cut = pos > 0;
    if (ret_scanned)
        *ret_scanned = scanned;
    return 0;
}

struct sv_logstream {
    sv_logstream *next, **list;
    sv_fsink *sink;
    uv_timer_t timer;
    char *vm_name, *path;
    int fd; /* the file being read, -1 before it exists */
    dev_t dev;
    ino_t ino;
    uint64_t offset;
    int64_t lines; /* still to apply to the first file; < 0 all */
    bool follow, ended;
    int open; /* the sink + the timer */
};

static void stream_put(sv_logstream *ls) {
    if (--ls->open > 0)
        return;
    if (ls->fd >= 0)
        close(ls->fd);
    free(ls->vm_name);
    free(ls->path);
    free(ls);
}

static void on_timer_closed(uv_handle_t *h) {
    stream_put(h->data);
}

static void stream_end(sv_logstream *ls, json_t *end) {
    if (ls->ended) {
        json_decref(end);
        return;
    }
    ls->ended = true;
    for (sv_logstream **p = ls->list; *p; p = &(*p)->next)
        if (*p == ls) {
            *p = ls->next;
            break;
        }
    uv_close((uv_handle_t *)&ls->timer, on_timer_closed);
    if (ls->sink)
        sv_fsink_end(ls->sink, end);
    else
        json_decref(end);
}

/* Opens the file at path if it is not the one being read: 1 when it
 * replaced the one being read (a new boot), 2 when it is the first, 0 when
 * nothing changed, -errno. */
static int reopen(sv_logstream *ls) {
    struct stat st;
    if (stat(ls->path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (ls->fd >= 0 && st.st_dev == ls->dev && st.st_ino == ls->ino)
        return 0;
    int fd = open(ls->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -errno;
    }
    bool had = ls->fd >= 0;
    if (had)
        close(ls->fd);
    ls->fd = fd;
    ls->dev = st.st_dev;
    ls->ino = st.st_ino;
    ls->offset = 0;
    if (ls->lines >= 0) {
        bool cut = false;
        int r = sv_log_tail_offset(fd, (uint64_t)st.st_size, (uint64_t)ls->lines, SV_LOG_TAIL_SCAN, &ls->offset,
                                   &cut, NULL);
        if (r < 0)
            return r;
        if (cut)
            sv_fsink_send_json(ls->sink, QV_FRAME_NOTICE,
                               json_pack("{s:I, s:I}", "skipped", (json_int_t)ls->offset, "scan_limit",
                                         (json_int_t)SV_LOG_TAIL_SCAN));
        ls->lines = -1; /* later files (new boots) come whole */
    }
    return had ? 1 : 2;
}

/* Sends what there is to send, as far as the client keeps up. */
static void pump(sv_logstream *ls) {
    char buf[STREAM_CHUNK];
    while (!ls->ended && sv_fsink_queued(ls->sink) < STREAM_QUEUE_MAX) {
        ssize_t n = ls->fd >= 0 ? pread(ls->fd, buf, sizeof buf, (off_t)ls->offset) : 0;
        if (n < 0) {
            stream_end(ls, json_pack("{s:s, s:s, s:s}", "reason", "error", "code", "EIO", "message", strerror(errno)));
            return;
        }
        if (n > 0) {
            if (sv_fsink_send(ls->sink, QV_FRAME_DATA, buf, (size_t)n) < 0)
                return; /* the sink is closing; its on_closed ends us */
            ls->offset += (uint64_t)n;
            continue;
        }
        /* at the end of this file: a new one may have replaced it (a new
         * boot), or this one may have been truncated */
        if (ls->follow) {
            int r = reopen(ls);
            if (r < 0) {
                stream_end(ls, json_pack("{s:s, s:s, s:s}", "reason", "error", "code", "EIO", "message",
                                         strerror(-r)));
                return;
            }
            if (r == 1)
                sv_fsink_send_json(ls->sink, QV_FRAME_NOTICE, json_pack("{s:s}", "boot", "new"));
            if (r > 0)
                continue;
            struct stat st;
            if (ls->fd >= 0 && fstat(ls->fd, &st) == 0 && (uint64_t)st.st_size < ls->offset) {
                ls->offset = 0;
                continue;
            }
            return; /* the timer looks again */
        }
        stream_end(ls, json_pack("{s:s}", "reason", "eof"));
        return;
    }
}

static void on_poll(uv_timer_t *t) {
    pump(t->data);
}

static void on_drain(sv_fsink *s, void *userdata) {
    (void)s;
    pump(userdata);
}

static void on_input_end(sv_fsink *s, int status, void *userdata) {
    (void)s;
    (void)status;
    stream_end(userdata, NULL); /* the client is gone (Ctrl-C) */
}

static void on_sink_closed(void *userdata) {
    sv_logstream *ls = userdata;
    ls->sink = NULL;
    stream_end(ls, NULL);
    stream_put(ls);
}

int sv_logstream_new(uv_loop_t *loop, int client_fd, const char *vm_name, const char *path, int64_t lines,
                     bool follow, sv_logstream **list, qv_error *err) {
    sv_logstream *ls = calloc(1, sizeof *ls);
    if (ls) {
        ls->vm_name = strdup(vm_name);
        ls->path = strdup(path);
    }
    if (!ls || !ls->vm_name || !ls->path) {
        if (ls) {
            free(ls->vm_name);
            free(ls->path);
        }
        free(ls);
        close(client_fd);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    ls->fd = -1;
    ls->lines = lines;
    ls->follow = follow;
    static const sv_fsink_cbs cbs = {.on_input_end = on_input_end, .on_drain = on_drain, .on_closed = on_sink_closed};
    int r = sv_fsink_new(loop, client_fd, &cbs, ls, &ls->sink);
    if (r < 0) {
        free(ls->vm_name);
        free(ls->path);
        free(ls);
        return qv_error_set(err, -r, "cannot use the client connection: %s", uv_strerror(r));
    }
    uv_timer_init(loop, &ls->timer);
    ls->timer.data = ls;
    ls->open = 2;
    ls->list = list;
    ls->next = *list;
    *list = ls;
    r = reopen(ls);
    if (r < 0) {
        stream_end(ls, json_pack("{s:s, s:s, s:s}", "reason", "error", "code", "EIO", "message", strerror(-r)));
        return 0;
    }
    if (follow)
        uv_timer_start(&ls->timer, on_poll, FOLLOW_POLL_MS, FOLLOW_POLL_MS);
    pump(ls);
    return 0;
}

void sv_logstream_end(sv_logstream **list, const char *vm_name, const char *reason, const char *message) {
    sv_logstream *ls = *list;
    while (ls) {
        sv_logstream *next = ls->next;
        if (!vm_name || strcmp(vm_name, ls->vm_name) == 0)
            stream_end(ls, json_pack("{s:s, s:s}", "reason", reason, "message", message));
        ls = next;
    }
}

/* ---- the cap on serial.log ------------------------------------------------ */

struct sv_serial_cap {
    uv_fs_event_t watch;
    int fd; /* serial.log, O_WRONLY | O_APPEND: fstat, ftruncate, the note */
    uint64_t max;
    uint64_t truncations;
    char vm_name[64];
};

static void serial_cap_closed(uv_handle_t *h) {
    sv_serial_cap *cap = h->data;
    if (cap->fd >= 0)
        close(cap->fd);
    free(cap);
}

static void on_serial_change(uv_fs_event_t *w, const char *filename, int events, int status) {
    (void)filename;
    (void)events;
    sv_serial_cap *cap = w->data;
    struct stat st;
    if (status < 0 || fstat(cap->fd, &st) < 0 || (uint64_t)st.st_size <= cap->max)
        return;
    if (ftruncate(cap->fd, 0) < 0) {
        log_warning("VM %s: serial.log is over %llu bytes and cannot be truncated: %s", cap->vm_name,
                    (unsigned long long)cap->max, strerror(errno));
        return;
    }
    cap->truncations++;
    char stamp[64];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S%z", localtime_r(&now, &tm));
    dprintf(cap->fd, "\n---- qvisor: serial.log reached %llu bytes at %s; what came before was dropped ----\n",
            (unsigned long long)st.st_size, stamp);
    if (cap->truncations == 1 || cap->truncations % 100 == 0)
        log_warning("VM %s: serial.log went over %llu bytes and was emptied (%llu times since QEMU started)",
                    cap->vm_name, (unsigned long long)cap->max, (unsigned long long)cap->truncations);
}

int sv_serial_cap_start(uv_loop_t *loop, const char *dir, const char *vm_name, uint64_t max, sv_serial_cap **ret,
                        qv_error *err) {
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return qv_error_set(err, errno, "%s: %s", dir, strerror(errno));
    int fd = qv_open_regular_at(dfd, SV_VM_SERIAL_LOG, O_WRONLY | O_APPEND | O_NOCTTY, 0640);
    if (fd < 0)
        return qv_error_set(err, -fd, "%s/serial.log: %s", dir, strerror(-fd));
    sv_serial_cap *cap = calloc(1, sizeof *cap);
    if (!cap) {
        close(fd);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    cap->fd = fd;
    cap->max = max;
    snprintf(cap->vm_name, sizeof cap->vm_name, "%s", vm_name);
    int r = uv_fs_event_init(loop, &cap->watch);
    if (r < 0) {
        close(fd);
        free(cap);
        return qv_error_set(err, -r, "cannot watch %s/serial.log: %s", dir, uv_strerror(r));
    }
    cap->watch.data = cap;
    char path[PATH_MAX];
    sv_layout_instance_file(dir, SV_VM_SERIAL_LOG, path, sizeof path);
    r = uv_fs_event_start(&cap->watch, on_serial_change, path, 0);
    if (r < 0) {
        uv_close((uv_handle_t *)&cap->watch, serial_cap_closed);
        return qv_error_set(err, -r, "cannot watch %s: %s", path, uv_strerror(r));
    }
    on_serial_change(&cap->watch, NULL, 0, 0); /* already over it (a re-adopted VM) */
    *ret = cap;
    return 0;
}

void sv_serial_cap_stop(sv_serial_cap *cap) {
    if (!cap)
        return;
    uv_fs_event_stop(&cap->watch);
    uv_close((uv_handle_t *)&cap->watch, serial_cap_closed);
}
