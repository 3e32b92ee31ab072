/* Stream frames (see frame.h). */
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void qv_frame_header(char hdr[QV_FRAME_HEADER], char type, uint32_t len) {
    hdr[0] = type;
    hdr[1] = (char)(len >> 24);
    hdr[2] = (char)(len >> 16);
    hdr[3] = (char)(len >> 8);
    hdr[4] = (char)len;
}

void qv_frame_dec_init(qv_frame_dec *d) {
    *d = (qv_frame_dec){0};
}

void qv_frame_dec_free(qv_frame_dec *d) {
    free(d->buf);
    *d = (qv_frame_dec){0};
}

int qv_frame_feed(qv_frame_dec *d, const char *data, size_t len, qv_frame_cb cb, void *userdata) {
    while (len > 0) {
        if (d->hdr_len < QV_FRAME_HEADER) {
            size_t n = QV_FRAME_HEADER - d->hdr_len;
            if (n > len)
                n = len;
            memcpy(d->hdr + d->hdr_len, data, n);
            d->hdr_len += n;
            data += n;
            len -= n;
            if (d->hdr_len < QV_FRAME_HEADER)
                return 0;
            const unsigned char *h = (const unsigned char *)d->hdr;
            d->want = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
            d->len = 0;
            if ((d->hdr[0] != QV_FRAME_DATA && d->hdr[0] != QV_FRAME_NOTICE && d->hdr[0] != QV_FRAME_END) ||
                d->want > QV_FRAME_MAX)
                return -EPROTO;
        }
        int r;
        if (d->len == 0 && len >= d->want) {
            /* the whole payload is in this chunk: no copy */
            r = cb(d->hdr[0], data, d->want, userdata);
            data += d->want;
            len -= d->want;
        } else {
            if (len == 0)
                return 0; /* the header ended the chunk */
            if (!d->buf) {
                d->buf = malloc(d->want); /* want > len > 0 */
                if (!d->buf)
                    return -ENOMEM;
            }
            size_t n = d->want - d->len;
            if (n > len)
                n = len;
            memcpy(d->buf + d->len, data, n);
            d->len += n;
            data += n;
            len -= n;
            if (d->len < d->want)
                return 0;
            r = cb(d->hdr[0], d->buf, d->want, userdata);
            free(d->buf);
            d->buf = NULL;
        }
        d->hdr_len = 0;
        d->len = d->want = 0;
        if (r != 0)
            return r;
    }
    return 0;
}
