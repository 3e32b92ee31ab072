/* The Prometheus text exposition format, version 0.0.4: a writer into a
 * growing buffer.  Pure; every label value is escaped as the format says
 * (backslash, double quote and newline), whatever its origin.
 *
 *     sv_expo e = {0};
 *     sv_expo_family(&e, "qvisor_vm_vcpus", "gauge", "vCPUs configured.");
 *     sv_expo_u64(&e, "qvisor_vm_vcpus", (const char *[]){"vm", "web", NULL}, 4);
 *     char *text = sv_expo_take(&e, &len);
 *
 * A family's samples must follow its HELP and TYPE lines without another
 * family in between; the callers write family by family. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SV_EXPO_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct sv_expo {
    char *buf;
    size_t len, cap;
    bool failed; /* out of memory: nothing more is written, take gives NULL */
} sv_expo;

/* "# HELP name help" (help escaped) and "# TYPE name type". */
void sv_expo_family(sv_expo *e, const char *name, const char *type, const char *help);
/* One sample: name{l1="v1",…} value.  labels: NULL-terminated pairs of
 * label name and value (NULL itself: no labels). */
void sv_expo_u64(sv_expo *e, const char *name, const char *const *labels, uint64_t value);
/* The same for a real value: shortest of %.15g, NaN, +Inf, -Inf. */
void sv_expo_double(sv_expo *e, const char *name, const char *const *labels, double value);

/* Label value and HELP escaping into a buffer: the number of bytes the
 * escaped text needs (without the NUL); truncated like snprintf. */
size_t sv_expo_escape(const char *s, bool quote, char *buf, size_t size);

/* The text (NUL-terminated, caller frees) and its length; NULL when the
 * writer ran out of memory.  The writer is empty afterwards. */
char *sv_expo_take(sv_expo *e, size_t *ret_len);
void sv_expo_clear(sv_expo *e);
