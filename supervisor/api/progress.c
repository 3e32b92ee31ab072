/* qemu-img's progress to a client (progress.h). */
#include "supervisor/api/progress.h"

#include <stdlib.h>

static void on_closed(uv_handle_t *h) {
    sv_api_progress *p = h->data;
    if (--p->open_handles == 0) {
        uv_mutex_destroy(&p->lock);
        p->on_closed(p);
    }
}

/* Loop thread: the newest value to the client (sv_ctl_progress rate-limits). */
static void pass_on(sv_api_progress *p) {
    if (p->req && p->on_tick)
        p->on_tick(p);
    if (!p->req)
        return;
    uv_mutex_lock(&p->lock);
    double percent = p->percent;
    uv_mutex_unlock(&p->lock);
    if (percent >= 0)
        sv_ctl_progress(p->req, json_pack("{s:f}", "percent", percent));
}

static void on_async(uv_async_t *h) {
    pass_on(h->data);
}

static void on_timer(uv_timer_t *h) {
    pass_on(h->data);
}

int sv_api_progress_start(sv_api_progress *p, uv_loop_t *loop, sv_ctl_req *req, sv_api_progress_fn on_tick,
                          sv_api_progress_fn on_closed_fn) {
    *p = (sv_api_progress){.percent = -1, .req = req, .on_tick = on_tick, .on_closed = on_closed_fn};
    int r = uv_mutex_init(&p->lock);
    if (r < 0)
        return r;
    if ((r = uv_async_init(loop, &p->async, on_async)) < 0) {
        uv_mutex_destroy(&p->lock);
        return r;
    }
    uv_timer_init(loop, &p->timer);
    p->async.data = p->timer.data = p;
    p->open_handles = 2;
    sv_qemu_img_progress_init(&p->parser);
    uv_timer_start(&p->timer, on_timer, SV_API_PROGRESS_TICK_MS, SV_API_PROGRESS_TICK_MS);
    return 0;
}

void sv_api_progress_feed(const char *chunk, size_t len, void *userdata) {
    sv_api_progress *p = userdata;
    if (!sv_qemu_img_progress_feed(&p->parser, chunk, len))
        return;
    uv_mutex_lock(&p->lock);
    p->percent = p->parser.percent;
    uv_mutex_unlock(&p->lock);
    uv_async_send(&p->async);
}

void sv_api_progress_end(sv_api_progress *p) {
    p->req = NULL;
    if (uv_is_closing((uv_handle_t *)&p->timer))
        return; /* ended already */
    uv_close((uv_handle_t *)&p->async, on_closed);
    uv_close((uv_handle_t *)&p->timer, on_closed);
}
