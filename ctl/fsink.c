/* The daemon's end of a framed stream (see fsink.h). */
#include "ctl/fsink.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FSINK_READ_CHUNK 16384

struct sv_fsink {
    uv_pipe_t pipe;
    uv_timer_t linger;
    sv_fsink_cbs cbs;
    void *userdata;
    int open_handles;
    bool ending, closing, input_paused, input_done;
    char rbuf[FSINK_READ_CHUNK];
};

typedef struct fsink_write {
    uv_write_t w;
    sv_fsink *s;
    char data[];
} fsink_write;

static void fsink_handle_closed(uv_handle_t *h) {
    sv_fsink *s = h->data;
    if (--s->open_handles > 0)
        return;
    if (s->cbs.on_closed)
        s->cbs.on_closed(s->userdata);
    free(s);
}

static void fsink_close(sv_fsink *s) {
    if (s->closing)
        return;
    s->closing = s->ending = true;
    uv_close((uv_handle_t *)&s->pipe, fsink_handle_closed);
    uv_close((uv_handle_t *)&s->linger, fsink_handle_closed);
}

static void on_fsink_write(uv_write_t *w, int status) {
    fsink_write *fw = (fsink_write *)w;
    sv_fsink *s = fw->s;
    free(fw);
    if (s->closing)
        return;
    if (status < 0) {
        fsink_close(s);
        return;
    }
    if (s->ending) {
        if (uv_stream_get_write_queue_size((uv_stream_t *)&s->pipe) == 0)
            fsink_close(s);
        return;
    }
    if (s->cbs.on_drain)
        s->cbs.on_drain(s, s->userdata);
}

static void on_fsink_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    sv_fsink *s = h->data;
    *buf = uv_buf_init(s->rbuf, sizeof s->rbuf);
}

static void on_fsink_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    sv_fsink *s = st->data;
    if (nread == 0 || s->closing || s->input_done)
        return;
    if (nread < 0) {
        s->input_done = true;
        uv_read_stop(st);
        if (s->cbs.on_input_end)
            s->cbs.on_input_end(s, nread == UV_EOF ? 0 : (int)nread, s->userdata);
        return;
    }
    if (s->cbs.on_input && !s->ending)
        s->cbs.on_input(s, buf->base, (size_t)nread, s->userdata);
}

int sv_fsink_new(uv_loop_t *loop, int fd, const sv_fsink_cbs *cbs, void *userdata, sv_fsink **ret) {
    sv_fsink *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return -ENOMEM;
    }
    int r = uv_pipe_init(loop, &s->pipe, 0);
    if (r < 0) {
        close(fd);
        free(s);
        return r;
    }
    uv_timer_init(loop, &s->linger);
    s->pipe.data = s->linger.data = s;
    s->open_handles = 2;
    s->cbs = *cbs;
    s->userdata = userdata;
    r = uv_pipe_open(&s->pipe, fd);
    if (r < 0)
        close(fd); /* not adopted by the handle */
    else
        r = uv_read_start((uv_stream_t *)&s->pipe, on_fsink_alloc, on_fsink_read);
    if (r < 0) {
        s->cbs.on_closed = NULL;
        fsink_close(s);
        return r;
    }
    *ret = s;
    return 0;
}

int sv_fsink_send(sv_fsink *s, char type, const void *data, size_t len) {
    if (s->ending)
        return -EPIPE;
    fsink_write *fw = malloc(sizeof *fw + QV_FRAME_HEADER + len);
    if (!fw)
        return -ENOMEM;
    fw->s = s;
    qv_frame_header(fw->data, type, (uint32_t)len);
    if (len)
        memcpy(fw->data + QV_FRAME_HEADER, data, len);
    uv_buf_t b = uv_buf_init(fw->data, (unsigned)(QV_FRAME_HEADER + len));
    int r = uv_write(&fw->w, (uv_stream_t *)&s->pipe, &b, 1, on_fsink_write);
    if (r < 0) {
        free(fw);
        fsink_close(s);
        return r;
    }
    return 0;
}

int sv_fsink_send_json(sv_fsink *s, char type, json_t *obj) {
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!text)
        return -ENOMEM;
    int r = sv_fsink_send(s, type, text, strlen(text));
    free(text);
    return r;
}

size_t sv_fsink_queued(const sv_fsink *s) {
    return uv_stream_get_write_queue_size((const uv_stream_t *)&s->pipe);
}

void sv_fsink_pause_input(sv_fsink *s, bool pause) {
    if (s->closing || s->input_done || pause == s->input_paused)
        return;
    s->input_paused = pause;
    if (pause)
        uv_read_stop((uv_stream_t *)&s->pipe);
    else
        uv_read_start((uv_stream_t *)&s->pipe, on_fsink_alloc, on_fsink_read);
}

static void on_linger(uv_timer_t *t) {
    fsink_close(t->data);
}

void sv_fsink_end(sv_fsink *s, json_t *end) {
    if (s->ending) {
        json_decref(end);
        return;
    }
    if (end)
        sv_fsink_send_json(s, QV_FRAME_END, end);
    if (s->closing)
        return;
    s->ending = true;
    if (!s->input_done)
        uv_read_stop((uv_stream_t *)&s->pipe);
    if (sv_fsink_queued(s) == 0)
        fsink_close(s);
    else
        uv_timer_start(&s->linger, on_linger, SV_FSINK_LINGER_MS, 0);
}
