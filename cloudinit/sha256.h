/* SHA-256 (FIPS 180-4), only to derive instance-ids from seed content. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define CI_SHA256_LEN 32

typedef struct ci_sha256 {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    uint8_t buf[64];
    size_t fill;
} ci_sha256;

void ci_sha256_init(ci_sha256 *c);
void ci_sha256_update(ci_sha256 *c, const void *data, size_t len);
void ci_sha256_final(ci_sha256 *c, uint8_t out[CI_SHA256_LEN]);
/* One-shot helper. */
void ci_sha256_digest(const void *data, size_t len, uint8_t out[CI_SHA256_LEN]);
