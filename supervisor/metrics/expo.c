/* Prometheus text exposition format 0.0.4 (see expo.h). */
#include "supervisor/metrics/expo.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for `more` bytes and a NUL. */
static bool reserve(sv_expo *e, size_t more) {
    if (e->failed)
        return false;
    if (e->len + more + 1 <= e->cap)
        return true;
    size_t cap = e->cap ? e->cap : 4096;
    while (cap < e->len + more + 1)
        cap *= 2;
    char *b = realloc(e->buf, cap);
    if (!b) {
        e->failed = true;
        return false;
    }
    e->buf = b;
    e->cap = cap;
    return true;
}

static void put(sv_expo *e, const char *s, size_t n) {
    if (!reserve(e, n))
        return;
    memcpy(e->buf + e->len, s, n);
    e->len += n;
    e->buf[e->len] = '\0';
}

static void puts_(sv_expo *e, const char *s) {
    put(e, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void putf(sv_expo *e, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(e, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

size_t sv_expo_escape(const char *s, bool quote, char *buf, size_t size) {
    size_t n = 0;
    for (; *s; s++) {
        char esc = *s == '\\' ? '\\' : *s == '\n' ? 'n' : quote && *s == '"' ? '"' : 0;
        char pair[2] = {'\\', esc};
        const char *out = esc ? pair : s;
        size_t k = esc ? 2 : 1;
        for (size_t i = 0; i < k; i++, n++)
            if (n + 1 < size)
                buf[n] = out[i];
    }
    if (size)
        buf[n < size ? n : size - 1] = '\0';
    return n;
}

/* Escaped text straight into the buffer. */
static void put_escaped(sv_expo *e, const char *s, bool quote) {
    size_t need = sv_expo_escape(s, quote, NULL, 0);
    if (!reserve(e, need))
        return;
    sv_expo_escape(s, quote, e->buf + e->len, need + 1);
    e->len += need;
}

void sv_expo_family(sv_expo *e, const char *name, const char *type, const char *help) {
    puts_(e, "# HELP ");
    puts_(e, name);
    puts_(e, " ");
    put_escaped(e, help, false);
    puts_(e, "\n# TYPE ");
    puts_(e, name);
    puts_(e, " ");
    puts_(e, type);
    puts_(e, "\n");
}

static void sample_head(sv_expo *e, const char *name, const char *const *labels) {
    puts_(e, name);
    if (!labels || !labels[0]) {
        puts_(e, " ");
        return;
    }
    for (size_t i = 0; labels[i] && labels[i + 1]; i += 2) {
        puts_(e, i ? "," : "{");
        puts_(e, labels[i]);
        puts_(e, "=\"");
        put_escaped(e, labels[i + 1], true);
        puts_(e, "\"");
    }
    puts_(e, "} ");
}

void sv_expo_u64(sv_expo *e, const char *name, const char *const *labels, uint64_t value) {
    sample_head(e, name, labels);
    putf(e, "%" PRIu64 "\n", value);
}

void sv_expo_double(sv_expo *e, const char *name, const char *const *labels, double value) {
    sample_head(e, name, labels);
    if (isnan(value))
        puts_(e, "NaN\n");
    else if (isinf(value))
        puts_(e, value > 0 ? "+Inf\n" : "-Inf\n");
    else
        putf(e, "%.15g\n", value);
}

char *sv_expo_take(sv_expo *e, size_t *ret_len) {
    if (e->failed || !reserve(e, 0)) {
        sv_expo_clear(e);
        return NULL;
    }
    char *text = e->buf;
    if (ret_len)
        *ret_len = e->len;
    *e = (sv_expo){0};
    return text;
}

void sv_expo_clear(sv_expo *e) {
    free(e->buf);
    *e = (sv_expo){0};
}
