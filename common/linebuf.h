/* Newline framing shared by every JSON-lines channel qvisor speaks: the
 * control socket, QMP and the guest agent.  Bytes go in as they arrive; each
 * complete line comes out once, whatever the read boundaries were. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Called once per complete line, without its '\n' (a trailing '\r' is kept;
 * JSON parsers treat it as white space).  Return 0 to go on; any other value
 * stops the feed, which then returns it.  The callback must neither feed nor
 * free the linebuf it was called from. */
typedef int (*qv_line_cb)(const char *line, size_t len, void *userdata);

/* A buffer grown past this for a long line is released once the line is
 * handed over: a peer that sent one long message does not keep its memory. */
#define QV_LINEBUF_KEEP (64u * 1024u)

typedef struct qv_linebuf {
    char *buf;       /* partial line carried between feeds */
    size_t len;
    size_t cap;
    size_t max_line; /* longest accepted line, without the '\n' */
} qv_linebuf;

void qv_linebuf_init(qv_linebuf *lb, size_t max_line);
void qv_linebuf_free(qv_linebuf *lb);
/* Drops any partial line (after a resynchronisation, say). */
void qv_linebuf_reset(qv_linebuf *lb);

/* Returns 0 when all input was consumed, the callback's non-zero value when
 * it stopped the feed, -EMSGSIZE when a line grew past max_line (framing is
 * then lost: the caller should drop the connection), -ENOMEM. */
int qv_linebuf_feed(qv_linebuf *lb, const char *data, size_t len, qv_line_cb cb, void *userdata);

/* Bytes of a partial line currently held. */
static inline size_t qv_linebuf_pending(const qv_linebuf *lb) {
    return lb->len;
}
