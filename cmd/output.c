#include "output.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (2..4), or 0. */
static size_t utf8_len(const unsigned char *s) {
    size_t n;
    uint32_t cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0; /* overlong, out of range, surrogate */
    return n;
}

char *qv_term_safe(const char *s, bool keep_lines) {
    size_t len = strlen(s);
    char *out = malloc(len * 4 + 1); /* every byte as \xNN at most */
    if (!out)
        abort();
    const unsigned char *p = (const unsigned char *)s;
    char *o = out;
    while (*p) {
        size_t n = *p >= 0x80 ? utf8_len(p) : 1;
        bool c1 = n == 2 && p[0] == 0xc2 && p[1] < 0xa0; /* U+0080..U+009F: CSI and friends */
        if (n > 1 && !c1) {
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        if (n == 1 && (*p >= 0x20 && *p != 0x7f ? true : keep_lines && (*p == '\n' || *p == '\t'))) {
            *o++ = (char)*p++;
            continue;
        }
        for (size_t i = 0; i < (c1 ? 2u : 1u); i++)
            o += sprintf(o, "\\x%02X", *p++);
    }
    *o = '\0';
    return out;
}

static void vout(FILE *out, const char *fmt, va_list ap) {
    char *text;
    if (vasprintf(&text, fmt, ap) < 0)
        abort();
    char *safe = qv_term_safe(text, true);
    fputs(safe, out);
    free(safe);
    free(text);
}

void qv_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vout(stdout, fmt, ap);
    va_end(ap);
}

void qv_fprintf(FILE *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vout(out, fmt, ap);
    va_end(ap);
}

struct qv_table {
    size_t cols;
    size_t rows;
    char **cells; /* (rows + 1) * cols, the header first */
};

static char *dup_cell(const char *s) {
    return qv_term_safe(s ? s : "-", false);
}

qv_table *qv_table_new(const char *const *headers) {
    qv_table *t = calloc(1, sizeof *t);
    if (!t)
        abort();
    while (headers[t->cols])
        t->cols++;
    t->cells = calloc(t->cols, sizeof *t->cells);
    if (!t->cells)
        abort();
    for (size_t i = 0; i < t->cols; i++)
        t->cells[i] = dup_cell(headers[i]);
    return t;
}

void qv_table_add(qv_table *t, const char *const *cells) {
    char **grown = realloc(t->cells, (t->rows + 2) * t->cols * sizeof *grown);
    if (!grown)
        abort();
    t->cells = grown;
    t->rows++;
    for (size_t i = 0; i < t->cols; i++)
        t->cells[t->rows * t->cols + i] = dup_cell(cells[i]);
}

void qv_table_print(const qv_table *t, FILE *out) {
    size_t *w = calloc(t->cols, sizeof *w);
    if (!w)
        abort();
    for (size_t r = 0; r <= t->rows; r++)
        for (size_t c = 0; c < t->cols; c++) {
            size_t n = strlen(t->cells[r * t->cols + c]);
            if (n > w[c])
                w[c] = n;
        }
    for (size_t r = 0; r <= t->rows; r++) {
        for (size_t c = 0; c < t->cols; c++) {
            const char *cell = t->cells[r * t->cols + c];
            if (c + 1 == t->cols)
                fprintf(out, "%s\n", cell);
            else
                fprintf(out, "%-*s  ", (int)w[c], cell);
        }
    }
    free(w);
}

void qv_table_free(qv_table *t) {
    if (!t)
        return;
    for (size_t i = 0; i < (t->rows + 1) * t->cols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

void qv_print_json(json_t *v, FILE *out) {
    json_dumpf(v, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', out);
    json_decref(v);
}

const char *qv_json_str(json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s && *s ? s : NULL;
}
