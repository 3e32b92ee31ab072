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

#define QV_FRAME_HEADER 5
#define QV_FRAME_MAX (1u << 20) /* longest payload a decoder accepts */

enum { QV_FRAME_DATA = 'D', QV_FRAME_NOTICE = 'N', QV_FRAME_END = 'E' };

/* Writes the header of a frame of `type` with `len` payload bytes. */
void qv_frame_header(char hdr[QV_FRAME_HEADER], char type, uint32_t len);

/* Called once per complete frame; payload is valid for the call only.
 * Return 0 to go on; anything else stops the feed, which returns it. */
typedef int (*qv_frame_cb)(char type, const char *payload, size_t len, void *userdata);

typedef struct qv_frame_dec {
    char hdr[QV_FRAME_HEADER];
    size_t hdr_len;
    char *buf; /* payload so far */
    size_t len, want;
} qv_frame_dec;

void qv_frame_dec_init(qv_frame_dec *d);
void qv_frame_dec_free(qv_frame_dec *d);
/* Feeds bytes as they arrive.  Returns 0 when all were consumed, the
 * callback's non-zero value, -EPROTO for an unknown type or a payload over
 * QV_FRAME_MAX (framing is lost), -ENOMEM. */
int qv_frame_feed(qv_frame_dec *d, const char *data, size_t len, qv_frame_cb cb, void *userdata);
