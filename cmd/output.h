/* Output for humans (aligned tables, key/value lists) and for scripts
 * (JSON with stable keys, one document per command on stdout). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Human output never hands the terminal a control sequence: strings from the
 * daemon carry what guests, agents and QEMU said, and an ESC among them
 * would be the terminal's to obey.  Every human line goes through here.
 *
 * A malloc'd copy of s with C0 controls, DEL, the C1 controls (U+0080 to
 * U+009F) and bytes that are not UTF-8 written as \xNN; newline and tab
 * too unless keep_lines.  Never NULL (aborts when out of memory). */
char *qv_term_safe(const char *s, bool keep_lines);
/* printf/fprintf for human output: the formatted text through
 * qv_term_safe(…, true).  (JSON output is escaped by JSON itself.) */
void qv_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void qv_fprintf(FILE *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct qv_table qv_table;

/* A table with the given column headers (NULL-terminated). */
qv_table *qv_table_new(const char *const *headers);
/* Adds a row of exactly as many cells as headers (copied through
 * qv_term_safe, newlines escaped too; NULL shows "-"). */
void qv_table_add(qv_table *t, const char *const *cells);
/* Prints with columns padded to their widest cell, two spaces apart. */
void qv_table_print(const qv_table *t, FILE *out);
void qv_table_free(qv_table *t);

/* Prints JSON (indent 2, insertion order) with a final newline; steals ref. */
void qv_print_json(json_t *v, FILE *out);

/* The non-empty string value of o[key] (borrowed), else NULL. */
const char *qv_json_str(json_t *o, const char *key);
