/* Base64 (RFC 4648, standard alphabet, padded) as the guest agent speaks it
 * (glib's g_base64_encode; `input-data`, `buf-b64`, `out-data`).  Strict on
 * input: the length a multiple of 4, only the alphabet, '=' only as the last
 * one or two characters, no white space; what comes from a guest is hostile
 * and is bounded before anything is allocated. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Length of the encoding of n bytes (without a terminating NUL). */
static inline size_t qv_base64_encoded_len(size_t n) {
    return (n + 2) / 3 * 4;
}

/* Encodes n bytes into out, which has room for qv_base64_encoded_len(n) + 1
 * bytes (NUL-terminated); returns the length written. */
size_t qv_base64_encode(const void *data, size_t n, char *out);

/* Checks s (len bytes) is strict base64 of at most max bytes and stores the
 * decoded length in *ret_len; allocates nothing.  -EINVAL not base64,
 * -EMSGSIZE longer than max. */
int qv_base64_check(const char *s, size_t len, size_t max, size_t *ret_len);

/* Decodes strict base64 of at most max bytes into out (room for max
 * bytes); *ret_len the decoded length.  -EINVAL, -EMSGSIZE as
 * qv_base64_check (out untouched then). */
int qv_base64_decode(const char *s, size_t len, void *out, size_t max, size_t *ret_len);
