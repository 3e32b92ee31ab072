/* qemu-img's progress, from the worker that runs it to the client that
 * asked (image import, vm clone, image create --from-vm).  The worker
 * feeds qemu-img's output (sv_api_progress_feed), the newest percent is
 * left under a lock, a uv_async (its sends coalesce) wakes the loop to
 * pass it on with sv_ctl_progress(), and a timer passes it on again every
 * tick, so the client hears from us even while qemu-img is between two
 * percent steps.  The owner's on_tick runs on the loop before each pass
 * (vm clone watches its client there) and may end the reporting. */
#pragma once

#include "ctl/server.h"
#include "supervisor/images/image.h"

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#define SV_API_PROGRESS_TICK_MS 250

/* The struct that holds p as its member `member`. */
#define SV_API_PROGRESS_OWNER(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

typedef struct sv_api_progress sv_api_progress;
typedef void (*sv_api_progress_fn)(sv_api_progress *p);

struct sv_api_progress {
    uv_async_t async;
    uv_timer_t timer;
    uv_mutex_t lock;
    double percent;              /* under lock: the newest value, -1 before the first */
    sv_qemu_img_progress parser; /* the worker's */
    sv_ctl_req *req;             /* passed on to; NULL once ended */
    sv_api_progress_fn on_tick;  /* may be NULL; may call sv_api_progress_end */
    sv_api_progress_fn on_closed;
    int open_handles;
};

/* Starts reporting to req on loop.  on_closed runs once both handles are
 * closed after sv_api_progress_end (the owner frees itself there).  A
 * negative errno (nothing to end then). */
int sv_api_progress_start(sv_api_progress *p, uv_loop_t *loop, sv_ctl_req *req, sv_api_progress_fn on_tick,
                          sv_api_progress_fn on_closed);
/* Worker thread: a chunk of qemu-img's output (a sv_qemu_img output callback's
 * arguments, userdata being p). */
void sv_api_progress_feed(const char *chunk, size_t len, void *userdata);
/* Loop thread: no more passing on; the handles close, then on_closed. */
void sv_api_progress_end(sv_api_progress *p);
