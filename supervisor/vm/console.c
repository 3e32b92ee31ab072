/* Serial-console relay (see console.h). */
#include "supervisor/vm/console.h"

#include "ctl/fsink.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define QEMU_READ_CHUNK 16384

struct sv_relay {
    sv_fsink *client;
    uv_pipe_t qemu;
    uv_timer_t timer; /* QEMU's EOF grace, then the flush of the input at the end */
    sv_relay_limits lim;
    sv_relay_end_fn on_end;
    void *userdata;
    int open; /* the sink + the two handles */
    bool ending, qemu_closing, input_held;
    uint64_t flush_deadline; /* ending: the input is given this long to be read by QEMU */
    uint64_t dropped, dropped_unreported;
    char rbuf[QEMU_READ_CHUNK];
};

typedef struct qemu_write {
    uv_write_t w;
    sv_relay *r;
    char data[];
} qemu_write;

static void relay_put(sv_relay *r) {
    if (--r->open > 0)
        return;
    if (r->on_end)
        r->on_end(r->userdata);
    free(r);
}

static void on_handle_closed(uv_handle_t *h) {
    relay_put(h->data);
}

static void qemu_close(sv_relay *r) {
    if (r->qemu_closing)
        return;
    r->qemu_closing = true;
    uv_close((uv_handle_t *)&r->qemu, on_handle_closed);
    uv_close((uv_handle_t *)&r->timer, on_handle_closed);
}

static size_t qemu_queued(const sv_relay *r) {
    return uv_stream_get_write_queue_size((const uv_stream_t *)&r->qemu);
}

static void qemu_flush_close(sv_relay *r);

static void on_qemu_write(uv_write_t *w, int status) {
    qemu_write *qw = (qemu_write *)w;
    sv_relay *r = qw->r;
    free(qw);
    if (r->qemu_closing)
        return;
    if (status < 0) {
        sv_relay_end(r, json_pack("{s:s, s:s}", "reason", "closed", "message", "the console connection to QEMU failed"));
        qemu_close(r);
        return;
    }
    if (r->ending) {
        qemu_flush_close(r);
        return;
    }
    if (r->input_held && qemu_queued(r) <= r->lim.in_resume) {
        r->input_held = false;
        sv_fsink_pause_input(r->client, false);
    }
}

/* client -> QEMU */
static void on_client_input(sv_fsink *s, const char *data, size_t len, void *userdata) {
    sv_relay *r = userdata;
    if (r->ending)
        return;
    qemu_write *qw = malloc(sizeof *qw + len);
    if (!qw) {
        sv_relay_end(r, json_pack("{s:s, s:s}", "reason", "error", "message", "out of memory"));
        return;
    }
    qw->r = r;
    memcpy(qw->data, data, len);
    uv_buf_t b = uv_buf_init(qw->data, (unsigned)len);
    if (uv_write(&qw->w, (uv_stream_t *)&r->qemu, &b, 1, on_qemu_write) < 0) {
        free(qw);
        sv_relay_end(r, json_pack("{s:s, s:s}", "reason", "closed", "message", "the console connection to QEMU failed"));
        return;
    }
    if (qemu_queued(r) > r->lim.in_max) {
        r->input_held = true;
        sv_fsink_pause_input(s, true);
    }
}

static void on_client_input_end(sv_fsink *s, int status, void *userdata) {
    (void)s;
    sv_relay *r = userdata;
    /* detached (or, without a terminal, the end of its input): the end
     * frame tells a client that still reads that it is over */
    sv_relay_end(r, status == 0 ? json_pack("{s:s}", "reason", "detached") : NULL);
}

/* the client read some: tell it what it missed once it has caught up */
static void on_client_drain(sv_fsink *s, void *userdata) {
    sv_relay *r = userdata;
    if (r->dropped_unreported && sv_fsink_queued(s) <= r->lim.out_resume) {
        sv_fsink_send_json(s, QV_FRAME_NOTICE, json_pack("{s:I}", "dropped", (json_int_t)r->dropped_unreported));
        r->dropped_unreported = 0;
    }
}

void sv_relay_end(sv_relay *r, json_t *end);

static void on_client_closed(void *userdata) {
    sv_relay *r = userdata;
    r->client = NULL;
    sv_relay_end(r, NULL); /* a write to the client failed: it is gone */
    relay_put(r);
}

static void on_qemu_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    sv_relay *r = h->data;
    *buf = uv_buf_init(r->rbuf, sizeof r->rbuf);
}

static void on_eof_grace(uv_timer_t *t) {
    sv_relay *r = t->data;
    sv_relay_end(r, json_pack("{s:s, s:s}", "reason", "closed", "message", "QEMU closed the console"));
}

/* QEMU -> client: never stops reading (a stalled read would stall the guest) */
static void on_qemu_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    sv_relay *r = st->data;
    if (nread == 0 || r->ending)
        return;
    if (nread < 0) {
        /* QEMU exits (the engine ends us with the reason) or closed the
         * chardev: wait a little for the first */
        uv_read_stop(st);
        uv_timer_start(&r->timer, on_eof_grace, r->lim.eof_grace_ms, 0);
        return;
    }
    size_t n = (size_t)nread;
    if (!r->client)
        return;
    if (r->dropped_unreported || sv_fsink_queued(r->client) + n > r->lim.out_max) {
        r->dropped += n;
        r->dropped_unreported += n;
        return;
    }
    sv_fsink_send(r->client, QV_FRAME_DATA, buf->base, n);
}

int sv_relay_new(uv_loop_t *loop, int client_fd, int qemu_fd, const sv_relay_limits *lim, sv_relay_end_fn on_end,
                 void *userdata, sv_relay **ret) {
    sv_relay *r = calloc(1, sizeof *r);
    if (!r) {
        close(client_fd);
        close(qemu_fd);
        return -ENOMEM;
    }
    r->lim = *lim;
    uv_pipe_init(loop, &r->qemu, 0);
    uv_timer_init(loop, &r->timer);
    r->qemu.data = r->timer.data = r;
    int e = uv_pipe_open(&r->qemu, qemu_fd);
    if (e < 0)
        close(qemu_fd);
    else
        e = uv_read_start((uv_stream_t *)&r->qemu, on_qemu_alloc, on_qemu_read);
    static const sv_fsink_cbs cbs = {
        .on_input = on_client_input,
        .on_input_end = on_client_input_end,
        .on_drain = on_client_drain,
        .on_closed = on_client_closed,
    };
    r->open = 3;
    if (e == 0)
        e = sv_fsink_new(loop, client_fd, &cbs, r, &r->client);
    else
        close(client_fd);
    if (e < 0) {
        /* nothing to tell anyone: free once the handles are closed */
        r->ending = true;
        if (r->client)
            sv_fsink_end(r->client, NULL);
        else
            r->open--;
        qemu_close(r);
        return e;
    }
    r->on_end = on_end;
    r->userdata = userdata;
    *ret = r;
    return 0;
}

static void on_flush_timer(uv_timer_t *t) {
    qemu_flush_close(t->data);
}

/* Closes the connection to QEMU once the input is not only written but read
 * by QEMU (SIOCOUTQ: what the peer has not read yet; QEMU drops what it has
 * not read when it sees the hang-up), or at flush_deadline. */
static void qemu_flush_close(sv_relay *r) {
    if (r->qemu_closing)
        return;
    uv_os_fd_t fd;
    int unread = 0;
    if (uv_fileno((uv_handle_t *)&r->qemu, &fd) == 0 && ioctl(fd, SIOCOUTQ, &unread) < 0)
        unread = 0;
    if ((qemu_queued(r) == 0 && unread == 0) || uv_now(r->timer.loop) >= r->flush_deadline) {
        qemu_close(r);
        return;
    }
    uv_timer_stop(&r->timer);
    uv_timer_start(&r->timer, on_flush_timer, 20, 0);
}

void sv_relay_end(sv_relay *r, json_t *end) {
    if (r->ending) {
        json_decref(end);
        return;
    }
    r->ending = true;
    if (!r->qemu_closing)
        uv_read_stop((uv_stream_t *)&r->qemu);
    if (r->client)
        sv_fsink_end(r->client, end);
    else
        json_decref(end);
    if (r->qemu_closing)
        return;
    r->flush_deadline = uv_now(r->timer.loop) + SV_FSINK_LINGER_MS;
    qemu_flush_close(r);
}

uint64_t sv_relay_dropped(const sv_relay *r) {
    return r->dropped;
}
