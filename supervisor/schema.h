/* Table-driven settings: one table of keys (name, type, struct field,
 * default, range) turns YAML or JSON into a plain struct and back.  The node
 * config and the VM spec are both described this way, so both get the same
 * strictness: unknown, repeated, mistyped, empty and out-of-range values are
 * errors that name the key (and, from YAML, file:line:column). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum sv_kind {
    SV_K_STRING,   /* any string (may be empty if allow_empty) */
    SV_K_PATH,     /* absolute path */
    SV_K_NAME,     /* qvisor name: [a-z0-9][a-z0-9-]{0,62} */
    SV_K_UINT,     /* integer in [min, max], stored as uint64_t */
    SV_K_SIZE,     /* size with unit in [min, max] bytes, uint64_t */
    SV_K_DURATION, /* "60s", "500ms", bare seconds; [min, max] ms, uint64_t */
    SV_K_ENUM,     /* one of enum_names, stored as int */
    SV_K_BOOL,     /* true/false, stored as bool */
    SV_K_IFNAME,   /* network interface name, <= 15 characters */
    SV_K_IPV4,     /* dotted quad */
    SV_K_CIDR4,    /* a.b.c.d/len with len in [min, max], stored normalised */
    SV_K_IPLIST,   /* list of IPv4/IPv6 addresses, char ** NULL-terminated */
    SV_K_STRLIST,  /* list of non-empty strings (each passing check), char ** NULL-terminated */
} sv_kind;

/* Extra validation of a string value (string kinds) or of each list item
 * (SV_K_STRLIST): 0, or a negative errno with the reason written to why
 * ("'x' is not a valid host name (…)"); the schema prefixes the key. */
typedef int (*sv_check_fn)(const char *value, char *why, size_t why_size);

typedef struct sv_key {
    const char *section; /* NULL for top-level keys */
    const char *name;
    sv_kind kind;
    size_t offset;
    const char *def; /* default as a user would write it; NULL: none */
    uint64_t min, max;
    const char *const *enum_names; /* SV_K_ENUM, NULL-terminated */
    bool allow_empty;
    bool restart; /* node config: a running daemon keeps the old value */
    sv_check_fn check; /* NULL: none */
} sv_key;

typedef struct sv_schema {
    const sv_key *keys;
    size_t n_keys;
} sv_schema;

#define SV_SCHEMA(table) ((sv_schema){.keys = (table), .n_keys = sizeof(table) / sizeof((table)[0])})

/* Sets every key that has a default.  Returns 0 or a negative errno (a bad
 * built-in default is a bug that the unit tests catch). */
int sv_schema_apply_defaults(const sv_schema *s, void *obj);
/* Frees every string and list field (not obj itself). */
void sv_schema_free_fields(const sv_schema *s, void *obj);
/* Deep-copies every string and list field of src into dst (a memcpy'd copy). */
int sv_schema_copy_fields(const sv_schema *s, void *dst, const void *src);

/* Parses a YAML document (a mapping; `null`/empty means nothing set) onto
 * obj, which should hold the defaults already.  Errors are -QV_ECONFIG for
 * the node config use and carry "NAME:LINE:COL: KEY: why". */
int sv_schema_load_yaml(const sv_schema *s, void *obj, const char *name, const char *data, size_t len,
                        int error_code, qv_error *err);
/* The same from a JSON object (the control protocol): scalars may be strings,
 * integers or booleans; errors read "WHAT: KEY: why" with error_code. */
int sv_schema_load_json(const sv_schema *s, void *obj, json_t *j, const char *what, int error_code,
                        qv_error *err);

/* One key's value as text ("2G", "60s", "a, b"; "[]" for an empty list). */
void sv_schema_render(const sv_key *k, const void *obj, char *buf, size_t size);
/* "section.name" or "name". */
void sv_schema_key_name(const sv_key *k, char *buf, size_t size);
/* {"section": {"name": value}}; integers as numbers, lists as arrays,
 * booleans as booleans, everything else rendered as text.  New reference. */
json_t *sv_schema_to_json(const sv_schema *s, const void *obj);
