/* Output for humans (aligned tables, key/value lists) and for scripts
 * (JSON with stable keys, one document per command on stdout). */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

typedef struct qv_table qv_table;

/* A table with the given column headers (NULL-terminated). */
qv_table *qv_table_new(const char *const *headers);
/* Adds a row of exactly as many cells as headers (copied; NULL shows "-"). */
void qv_table_add(qv_table *t, const char *const *cells);
/* Prints with columns padded to their widest cell, two spaces apart. */
void qv_table_print(const qv_table *t, FILE *out);
void qv_table_free(qv_table *t);

/* Prints JSON (indent 2, insertion order) with a final newline; steals ref. */
void qv_print_json(json_t *v, FILE *out);

/* The non-empty string value of o[key] (borrowed), else NULL. */
const char *qv_json_str(json_t *o, const char *key);
