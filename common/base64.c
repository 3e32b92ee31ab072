/* Strict base64 (see base64.h). */
#include "base64.h"

#include <errno.h>
#include <stdint.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int value(unsigned char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

size_t qv_base64_encode(const void *data, size_t n, char *out) {
    const unsigned char *p = data;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[w >> 18];
        out[o++] = alphabet[(w >> 12) & 63];
        out[o++] = alphabet[(w >> 6) & 63];
        out[o++] = alphabet[w & 63];
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)p[i] << 16;
        out[o++] = alphabet[w >> 18];
        out[o++] = alphabet[(w >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = alphabet[w >> 18];
        out[o++] = alphabet[(w >> 12) & 63];
        out[o++] = alphabet[(w >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* One pass for both: out NULL only checks. */
static int run(const char *s, size_t len, unsigned char *out, size_t max, size_t *ret_len) {
    if (len % 4)
        return -EINVAL;
    size_t pad = 0;
    if (len >= 4 && s[len - 1] == '=')
        pad = s[len - 2] == '=' ? 2 : 1;
    size_t n = len / 4 * 3 - pad;
    if (n > max)
        return -EMSGSIZE;
    /* validate everything before the first byte is written */
    for (size_t i = 0; i < len - pad; i++)
        if (value((unsigned char)s[i]) < 0)
            return -EINVAL;
    /* the bits the padding drops must be zero (one encoding per value) */
    if (pad == 2 && (value((unsigned char)s[len - 3]) & 15))
        return -EINVAL;
    if (pad == 1 && (value((unsigned char)s[len - 2]) & 3))
        return -EINVAL;
    if (out) {
        size_t o = 0;
        for (size_t i = 0; i < len; i += 4) {
            uint32_t w = 0;
            for (int k = 0; k < 4; k++)
                w = w << 6 | (uint32_t)(s[i + k] == '=' ? 0 : value((unsigned char)s[i + k]));
            unsigned char b[3] = {(unsigned char)(w >> 16), (unsigned char)(w >> 8), (unsigned char)w};
            for (int k = 0; k < 3 && o < n; k++)
                out[o++] = b[k];
        }
    }
    *ret_len = n;
    return 0;
}

int qv_base64_check(const char *s, size_t len, size_t max, size_t *ret_len) {
    return run(s, len, NULL, max, ret_len);
}

int qv_base64_decode(const char *s, size_t len, void *out, size_t max, size_t *ret_len) {
    return run(s, len, out, max, ret_len);
}
