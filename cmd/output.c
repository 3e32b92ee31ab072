#include "output.h"

#include <stdlib.h>
#include <string.h>

struct qv_table {
    size_t cols;
    size_t rows;
    char **cells; /* (rows + 1) * cols, the header first */
};

static char *dup_cell(const char *s) {
    char *d = strdup(s ? s : "-");
    if (!d)
        abort();
    return d;
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
