/* Framing of a control connection after a streaming reply (vm.console,
 * vm.log; docs/protocol.md, "Streams").  The daemon sends frames:
 *
 *   type (1 byte) | length (4 bytes, big-endian) | payload
 *
 *   'D'  data: bytes of the guest's console or of its log, as they are
 *   'N'  a notice (JSON object): bytes dropped, a new boot, …
 *   'E'  the end (JSON object with "reason"); nothing follows it
 *
 * so that the guest's bytes (any bytes, not necessarily UTF-8) stay apart
 * from what qvisor has to say about them.  The client sends raw bytes (the
 * console's input) or nothing (a log). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define SV_FRAME_HEADER 5
#define SV_FRAME_MAX (1u << 20) /* longest payload a decoder accepts */

enum { SV_FRAME_DATA = 'D', SV_FRAME_NOTICE = 'N', SV_FRAME_END = 'E' };

/* Writes the header of a frame of `type` with `len` payload bytes. */
void sv_frame_header(char hdr[SV_FRAME_HEADER], char type, uint32_t len);

/* Called once per complete frame; payload is valid for the call only.
 * Return 0 to go on; anything else stops the feed, which returns it. */
typedef int (*sv_frame_cb)(char type, const char *payload, size_t len, void *userdata);

typedef struct sv_frame_dec {
    char hdr[SV_FRAME_HEADER];
    size_t hdr_len;
    char *buf; /* payload so far */
    size_t len, want;
} sv_frame_dec;

void sv_frame_dec_init(sv_frame_dec *d);
void sv_frame_dec_free(sv_frame_dec *d);
/* Feeds bytes as they arrive.  Returns 0 when all were consumed, the
 * callback's non-zero value, -EPROTO for an unknown type or a payload over
 * SV_FRAME_MAX (framing is lost), -ENOMEM. */
int sv_frame_feed(sv_frame_dec *d, const char *data, size_t len, sv_frame_cb cb, void *userdata);

/* ---- the daemon's end of a stream ------------------------------------------

 * A framed sink: the connection handed over by sv_ctl_reply_stream(), with
 * the frames above going out and the client's raw bytes coming in.  All on
 * the loop; writes are queued (sv_fsink_queued() says how much: the owner
 * bounds it). */
#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

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
