#include "linebuf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void qv_linebuf_init(qv_linebuf *lb, size_t max_line) {
    *lb = (qv_linebuf){.max_line = max_line};
}

void qv_linebuf_free(qv_linebuf *lb) {
    free(lb->buf);
    *lb = (qv_linebuf){.max_line = lb->max_line};
}

void qv_linebuf_reset(qv_linebuf *lb) {
    lb->len = 0;
    if (lb->cap > QV_LINEBUF_KEEP) {
        free(lb->buf);
        lb->buf = NULL;
        lb->cap = 0;
    }
}

static int append(qv_linebuf *lb, const char *data, size_t n) {
    if (lb->len + n > lb->max_line)
        return -EMSGSIZE;
    if (lb->len + n > lb->cap) {
        size_t cap = lb->cap ? lb->cap : 256;
        while (cap < lb->len + n)
            cap *= 2;
        if (cap > lb->max_line)
            cap = lb->max_line;
        char *b = realloc(lb->buf, cap);
        if (!b)
            return -ENOMEM;
        lb->buf = b;
        lb->cap = cap;
    }
    memcpy(lb->buf + lb->len, data, n);
    lb->len += n;
    return 0;
}

int qv_linebuf_feed(qv_linebuf *lb, const char *data, size_t len, qv_line_cb cb, void *userdata) {
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        if (!nl)
            return append(lb, data, len);
        size_t n = (size_t)(nl - data);
        int r;
        if (lb->len == 0) {
            /* Whole line inside this chunk: hand it over without copying. */
            if (n > lb->max_line)
                return -EMSGSIZE;
            r = cb(data, n, userdata);
        } else {
            r = append(lb, data, n);
            if (r < 0)
                return r;
            size_t total = lb->len;
            lb->len = 0;
            r = cb(lb->buf, total, userdata);
            if (r == 0 && lb->cap > QV_LINEBUF_KEEP) {
                /* a long line is not kept for: its buffer goes */
                free(lb->buf);
                lb->buf = NULL;
                lb->cap = 0;
            }
        }
        if (r != 0)
            return r;
        data = nl + 1;
        len -= n + 1;
    }
    return 0;
}
