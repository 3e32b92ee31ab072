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
    SV_K_RATIO,    /* decimal number > 0 and <= max ("4", "1.5"), stored as double */
    SV_K_MAP,      /* mapping of names the user chooses (qvisor names) to entries
                    * described by `map`: NULL-terminated array of pointers to
                    * entry structs, never NULL once defaults are applied */
} sv_kind;

/* The value of an optional SV_K_UINT or SV_K_SIZE key that is not set. */
#define SV_UNSET UINT64_MAX

struct sv_schema;

/* What one entry of an SV_K_MAP key holds: a struct of entry_size bytes with
 * its name (char *, owned) at name_offset and the keys of `entry` (which
 * have no sections).  An entry given as null or {} holds the defaults. */
typedef struct sv_map {
    const struct sv_schema *entry;
    size_t entry_size;
    size_t name_offset;
    const char *what; /* "pool": "'X' is not a valid pool name" */
} sv_map;

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
    uint64_t min, max; /* SV_K_STRLIST, SV_K_IPLIST: max, when set, is the most items */
    const char *const *enum_names; /* SV_K_ENUM, NULL-terminated */
    bool allow_empty;
    bool restart; /* node config: a running daemon keeps the old value */
    sv_check_fn check; /* NULL: none */
    const sv_map *map; /* SV_K_MAP: the entries */
    /* SV_K_UINT, SV_K_SIZE: the key may have no value (SV_UNSET), which is
     * its default; YAML null (~ or nothing) and JSON null unset it, and JSON
     * output shows null. */
    bool optional;
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
/* Replaces dst's value of key k with a copy of src's (deep for strings,
 * lists and maps).  -ENOMEM leaves dst's field empty, still freeable. */
int sv_schema_copy_key(const sv_key *k, void *dst, const void *src);

/* Parses a YAML document (a mapping; `null`/empty means nothing set) onto
 * obj, which should hold the defaults already.  Errors are -QV_ECONFIG for
 * the node config use and carry "NAME:LINE:COL: KEY: why". */
int sv_schema_load_yaml(const sv_schema *s, void *obj, const char *name, const char *data, size_t len,
                        int error_code, qv_error *err);
/* The same from a JSON object (the control protocol): scalars may be strings,
 * integers or booleans; errors read "WHAT: KEY: why" with error_code. */
int sv_schema_load_json(const sv_schema *s, void *obj, json_t *j, const char *what, int error_code,
                        qv_error *err);

/* One key's value as text ("2G", "60s", "4.0", "a, b"; "[]" for an empty
 * list or map, a map's entry names otherwise; "unset" for an optional key
 * without a value). */
void sv_schema_render(const sv_key *k, const void *obj, char *buf, size_t size);
/* Visits every key in table order with its dotted name and its value as
 * sv_schema_render() writes it; a non-empty SV_K_MAP gives each entry's keys
 * as "MAP.ENTRY.KEY" ("pools.batch.cpus") instead of itself. */
typedef void (*sv_schema_visit_fn)(const char *key, const char *value, void *userdata);
void sv_schema_visit(const sv_schema *s, const void *obj, sv_schema_visit_fn fn, void *userdata);

/* Adds an entry called name, holding the entry defaults, to the SV_K_MAP key
 * k of obj: first or last.  *ret_entry (may be NULL) is borrowed.  -EEXIST
 * when there is one by that name, -EINVAL for a bad name, -ENOMEM. */
int sv_schema_map_add(const sv_key *k, void *obj, const char *name, bool first, void **ret_entry);

/* "section.name" or "name". */
void sv_schema_key_name(const sv_key *k, char *buf, size_t size);
/* {"section": {"name": value}}; integers as numbers, ratios as reals, lists
 * as arrays, booleans as booleans, maps as objects of entry name to entry
 * object, unset optional keys as null, everything else rendered as text.
 * New reference. */
json_t *sv_schema_to_json(const sv_schema *s, const void *obj);
