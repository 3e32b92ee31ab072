/* A linear pre-check run before every libyaml parse of outside input.
 *
 * libyaml's scanner keeps one "possible simple key" per open flow
 * collection and walks all of them for every token, so a document that
 * opens N flow collections costs O(N * tokens): "a: " followed by 200000
 * '[' held the daemon's loop for 76 s.  This pass reads each byte once and
 * refuses inputs that are too large or nest too deeply, before libyaml
 * sees them.  It errs towards counting: a '[' that libyaml would read as
 * text may be counted, never the reverse as far as it can tell (quoted
 * scalars, comments and block scalars are skipped; a raw count of all
 * brackets backs that up). */
#pragma once

#include <stddef.h>

#define QV_YAML_MAX_SIZE (16u << 20) /* bytes */
#define QV_YAML_MAX_DEPTH 64         /* open [ ] and { } collections; block indentation levels */
/* every '[' '{' minus every ']' '}', wherever they are (never below 0) */
#define QV_YAML_MAX_RAW_BRACKETS 256

typedef struct qv_yaml_guard_error {
    size_t line;   /* 1-based; 0 for the size limit */
    size_t column; /* 1-based */
    char why[160]; /* "nested deeper than 64 [ ] / { } collections" */
} qv_yaml_guard_error;

/* 0 when data is within the limits; -EFBIG (larger than QV_YAML_MAX_SIZE),
 * -ELOOP (too deep) or -EILSEQ (UTF-16, which the pass cannot follow) with
 * *ret filled (may be NULL).  Does not validate YAML: libyaml does that
 * afterwards. */
int qv_yaml_guard(const void *data, size_t len, qv_yaml_guard_error *ret);
