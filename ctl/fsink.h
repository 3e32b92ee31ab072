/* The daemon's end of a stream (frames: common/frame.h).
 *
 * A framed sink: the connection handed over by sv_ctl_reply_stream(), with
 * the frames above going out and the client's raw bytes coming in.  All on
 * the loop; writes are queued (sv_fsink_queued() says how much: the owner
 * bounds it). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "frame.h"

#define SV_FSINK_LINGER_MS 2000 /* the longest an ended sink waits for its last frames to go out */

typedef struct sv_fsink sv_fsink;

typedef struct sv_fsink_cbs {
    /* bytes from the client (never 0 of them) */
    void (*on_input)(sv_fsink *s, const char *data, size_t len, void *userdata);
    /* the client ended its side: 0 for EOF (it may still read), or a
     * negative errno; no more input follows */
    void (*on_input_end)(sv_fsink *s, int status, void *userdata);
    /* a write went out: sv_fsink_queued() shrank */
    void (*on_drain)(sv_fsink *s, void *userdata);
    /* the connection is closed (once, after sv_fsink_end() or a write
     * error); the sink is freed right after this returns */
    void (*on_closed)(void *userdata);
} sv_fsink_cbs;

/* Takes fd (a connected stream socket) in every case. */
int sv_fsink_new(uv_loop_t *loop, int fd, const sv_fsink_cbs *cbs, void *userdata, sv_fsink **ret);
/* Queues one frame.  -EPIPE once the sink is ending or closed, -ENOMEM. */
int sv_fsink_send(sv_fsink *s, char type, const void *data, size_t len);
/* The same with a JSON object (reference stolen) as payload. */
int sv_fsink_send_json(sv_fsink *s, char type, json_t *obj);
/* Bytes queued and not yet written. */
size_t sv_fsink_queued(const sv_fsink *s);
/* Stops or resumes reading the client's input (backpressure). */
void sv_fsink_pause_input(sv_fsink *s, bool pause);
/* Ends the stream: sends `end` (stolen; NULL: none) as an 'E' frame, then
 * closes once everything queued is out, or after SV_FSINK_LINGER_MS for a
 * client that does not read.  on_closed follows.  Idempotent. */
void sv_fsink_end(sv_fsink *s, json_t *end);
