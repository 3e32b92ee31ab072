/* Table-driven settings (see schema.h). */
#include "spec/schema.h"

#include "cleanup.h"
#include "util.h"
#include "yamlguard.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define FIELD(obj, k) ((void *)((char *)(obj) + (k)->offset))
#define CFIELD(obj, k) ((const void *)((const char *)(obj) + (k)->offset))

static bool is_string_kind(sv_kind kind) {
    switch (kind) {
    case SV_K_STRING:
    case SV_K_PATH:
    case SV_K_NAME:
    case SV_K_IFNAME:
    case SV_K_IPV4:
    case SV_K_CIDR4:
        return true;
    default:
        return false;
    }
}

static bool is_list_kind(sv_kind kind) {
    return kind == SV_K_IPLIST || kind == SV_K_STRLIST;
}

/* `optional` means something for the uint64_t kinds only. */
static bool is_optional(const sv_key *k) {
    return k->optional && (k->kind == SV_K_UINT || k->kind == SV_K_SIZE);
}

static void strv_free(char **v) {
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

/* ---- map entries --------------------------------------------------------- */

static char **entry_name_field(const sv_map *m, void *e) {
    return (char **)((char *)e + m->name_offset);
}

static const char *entry_name(const sv_map *m, const void *e) {
    return *(char *const *)((const char *)e + m->name_offset);
}

static void entry_free(const sv_map *m, void *e) {
    if (!e)
        return;
    sv_schema_free_fields(m->entry, e);
    free(*entry_name_field(m, e));
    free(e);
}

static void map_free(const sv_map *m, void **v) {
    if (!v)
        return;
    for (void **p = v; *p; p++)
        entry_free(m, *p);
    free(v);
}

/* A new entry called name holding the entry defaults; NULL on ENOMEM. */
static void *entry_new(const sv_map *m, const char *name) {
    void *e = calloc(1, m->entry_size);
    if (!e)
        return NULL;
    char **np = entry_name_field(m, e);
    if (sv_schema_apply_defaults(m->entry, e) < 0 || !(*np = strdup(name))) {
        entry_free(m, e);
        return NULL;
    }
    return e;
}

static size_t map_len(void *const *v) {
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

static bool map_has(const sv_map *m, void *const *v, const char *name) {
    for (size_t i = 0; v && v[i]; i++)
        if (strcmp(entry_name(m, v[i]), name) == 0)
            return true;
    return false;
}

static void bad_entry_name(const sv_map *m, const char *name, char *why, size_t why_size) {
    snprintf(why, why_size,
             "'%s' is not a valid %s name (lowercase letters, digits and '-', starting with a letter or digit, at "
             "most %d characters)",
             name, m->what, QV_NAME_MAX);
}

void sv_schema_free_fields(const sv_schema *s, void *obj) {
    for (size_t i = 0; i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        if (is_string_kind(k->kind)) {
            free(*(char **)FIELD(obj, k));
            *(char **)FIELD(obj, k) = NULL;
        } else if (is_list_kind(k->kind)) {
            strv_free(*(char ***)FIELD(obj, k));
            *(char ***)FIELD(obj, k) = NULL;
        } else if (k->kind == SV_K_MAP) {
            map_free(k->map, *(void ***)FIELD(obj, k));
            *(void ***)FIELD(obj, k) = NULL;
        }
    }
}

int sv_schema_map_add(const sv_key *k, void *obj, const char *name, bool first, void **ret_entry) {
    if (!qv_name_valid(name))
        return -EINVAL;
    void ***field = FIELD(obj, k);
    if (map_has(k->map, *field, name))
        return -EEXIST;
    size_t n = map_len(*field);
    void **grown = realloc(*field, (n + 2) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    *field = grown;
    grown[n] = NULL;
    void *e = entry_new(k->map, name);
    if (!e)
        return -ENOMEM;
    if (first) {
        memmove(grown + 1, grown, n * sizeof *grown);
        grown[0] = e;
    } else
        grown[n] = e;
    grown[n + 1] = NULL;
    if (ret_entry)
        *ret_entry = e;
    return 0;
}

int sv_schema_copy_fields(const sv_schema *s, void *dst, const void *src) {
    /* dst is a memcpy of src: forget src's pointers first, so that a failure
     * halfway leaves dst owning only what it copied (and freeable) */
    for (size_t i = 0; i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        if (is_string_kind(k->kind) || is_list_kind(k->kind) || k->kind == SV_K_MAP)
            *(void **)FIELD(dst, k) = NULL;
    }
    for (size_t i = 0; i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        if (is_string_kind(k->kind)) {
            const char *v = *(char *const *)CFIELD(src, k);
            *(char **)FIELD(dst, k) = v ? strdup(v) : NULL;
            if (v && !*(char **)FIELD(dst, k))
                return -ENOMEM;
        } else if (is_list_kind(k->kind)) {
            char *const *v = *(char *const *const *)CFIELD(src, k);
            *(char ***)FIELD(dst, k) = NULL;
            if (!v)
                continue;
            size_t n = 0;
            while (v[n])
                n++;
            char **c = calloc(n + 1, sizeof *c);
            if (!c)
                return -ENOMEM;
            *(char ***)FIELD(dst, k) = c;
            for (size_t j = 0; j < n; j++)
                if (!(c[j] = strdup(v[j])))
                    return -ENOMEM;
        } else if (k->kind == SV_K_MAP) {
            const sv_map *m = k->map;
            void *const *v = *(void *const *const *)CFIELD(src, k);
            *(void ***)FIELD(dst, k) = NULL;
            if (!v)
                continue;
            size_t n = map_len(v);
            void **c = calloc(n + 1, sizeof *c);
            if (!c)
                return -ENOMEM;
            *(void ***)FIELD(dst, k) = c;
            for (size_t j = 0; j < n; j++) {
                /* the entry's fields are copied first, its name after:
                 * a failure leaves every pointer either owned or NULL */
                void *e = malloc(m->entry_size);
                if (!e)
                    return -ENOMEM;
                memcpy(e, v[j], m->entry_size);
                *entry_name_field(m, e) = NULL;
                c[j] = e;
                int r = sv_schema_copy_fields(m->entry, e, v[j]);
                if (r < 0)
                    return r;
                if (!(*entry_name_field(m, e) = strdup(entry_name(m, v[j]))))
                    return -ENOMEM;
            }
        }
    }
    return 0;
}

int sv_schema_copy_key(const sv_key *k, void *dst, const void *src) {
    size_t size = 0;
    switch (k->kind) {
    case SV_K_UINT:
    case SV_K_SIZE:
    case SV_K_DURATION:
        size = sizeof(uint64_t);
        break;
    case SV_K_ENUM:
        size = sizeof(int);
        break;
    case SV_K_BOOL:
        size = sizeof(bool);
        break;
    case SV_K_RATIO:
        size = sizeof(double);
        break;
    default:
        break;
    }
    if (size) {
        memcpy(FIELD(dst, k), CFIELD(src, k), size);
        return 0;
    }
    const sv_schema one = {.keys = k, .n_keys = 1};
    sv_schema_free_fields(&one, dst);
    return sv_schema_copy_fields(&one, dst, src);
}

void sv_schema_key_name(const sv_key *k, char *buf, size_t size) {
    if (k->section)
        snprintf(buf, size, "%s.%s", k->section, k->name);
    else
        snprintf(buf, size, "%s", k->name);
}

/* ---- scalar conversion ------------------------------------------------- */

static int parse_cidr4(const char *s, char **ret, uint64_t min_len, uint64_t max_len) {
    char addr[INET_ADDRSTRLEN + 4];
    const char *slash = strchr(s, '/');
    if (!slash || (size_t)(slash - s) >= INET_ADDRSTRLEN)
        return -EINVAL;
    memcpy(addr, s, (size_t)(slash - s));
    addr[slash - s] = '\0';
    struct in_addr in;
    if (inet_pton(AF_INET, addr, &in) != 1)
        return -EINVAL;
    uint64_t len;
    if (qv_parse_uint(slash + 1, 0, 32, &len) < 0)
        return -EINVAL;
    if (len < min_len || len > max_len)
        return -ERANGE;
    uint32_t mask = len ? htonl(~0u << (32 - len)) : 0;
    if (in.s_addr & ~mask)
        return -EDOM; /* host bits set */
    char a[INET_ADDRSTRLEN], out[INET_ADDRSTRLEN + 4];
    inet_ntop(AF_INET, &in, a, sizeof a);
    snprintf(out, sizeof out, "%s/%u", a, (unsigned)len);
    *ret = strdup(out);
    return *ret ? 0 : -ENOMEM;
}

static void enum_list(const char *const *names, char *buf, size_t size) {
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; names[i] && off < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? ", " : "", names[i]);
}

/* "4", "1.5", "0.25": digits with an optional fraction, at most 15
 * significant and 15 fraction digits, so that digits / 10^fraction is exact on both sides
 * and the one division rounds correctly (no strtod: no locale, no "inf",
 * "0x1p3" or "1e3").  -EINVAL for anything else. */
static int parse_decimal(const char *v, double *ret) {
    uint64_t digits = 0, scale = 1;
    unsigned n = 0;
    bool fraction = false;
    const char *p = v;
    if (!isdigit((unsigned char)*p))
        return -EINVAL;
    for (; *p; p++) {
        if (*p == '.' && !fraction) {
            fraction = true;
            if (!isdigit((unsigned char)p[1]))
                return -EINVAL;
            continue;
        }
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        if ((digits || *p != '0') && ++n > 15)
            return -EINVAL;
        digits = digits * 10 + (uint64_t)(*p - '0');
        if (fraction && (scale *= 10) > 1000000000000000ull)
            return -EINVAL;
    }
    *ret = (double)digits / (double)scale;
    return 0;
}

/* A ratio in (0, max]: 0, or a negative errno with the reason in why. */
static int set_ratio(const sv_key *k, void *obj, double d, const char *text, char *why, size_t why_size) {
    if (!(d > 0) || d > (double)k->max) {
        snprintf(why, why_size, "%s is out of range (greater than 0, at most %llu)", text,
                 (unsigned long long)k->max);
        return -ERANGE;
    }
    *(double *)FIELD(obj, k) = d;
    return 0;
}

/* Stores text v into the key's field; on failure writes the reason to why. */
static int set_text(const sv_key *k, void *obj, const char *v, char *why, size_t why_size) {
    void *field = FIELD(obj, k);
    char **strp = field;
    uint64_t u;
    int r;

    if (!*v && !k->allow_empty) {
        snprintf(why, why_size, "must not be empty");
        return -EINVAL;
    }
    switch (k->kind) {
    case SV_K_STRING:
        break;
    case SV_K_PATH:
        if (v[0] != '/') {
            snprintf(why, why_size, "must be an absolute path, got '%s'", v);
            return -EINVAL;
        }
        break;
    case SV_K_NAME:
        if (*v && !qv_name_valid(v)) {
            snprintf(why, why_size,
                     "'%s' is not a valid name (lowercase letters, digits and '-', starting with a letter or "
                     "digit, at most %d characters)",
                     v, QV_NAME_MAX);
            return -EINVAL;
        }
        break;
    case SV_K_IFNAME:
        if (*v && (strlen(v) >= IFNAMSIZ || strpbrk(v, "/ \t\n:") || strcmp(v, ".") == 0 || strcmp(v, "..") == 0)) {
            snprintf(why, why_size,
                     "'%s' is not a valid interface name (at most %d characters, no '/', ':' or spaces)", v,
                     IFNAMSIZ - 1);
            return -EINVAL;
        }
        break;
    case SV_K_IPV4: {
        struct in_addr in;
        if (inet_pton(AF_INET, v, &in) != 1) {
            snprintf(why, why_size, "'%s' is not an IPv4 address", v);
            return -EINVAL;
        }
        break;
    }
    case SV_K_CIDR4: {
        char *norm = NULL;
        r = parse_cidr4(v, &norm, k->min, k->max);
        if (r == -ERANGE)
            snprintf(why, why_size, "prefix length of '%s' must be between /%llu and /%llu", v,
                     (unsigned long long)k->min, (unsigned long long)k->max);
        else if (r == -EDOM)
            snprintf(why, why_size, "'%s' has host bits set (write the network address)", v);
        else if (r < 0)
            snprintf(why, why_size, "'%s' is not an IPv4 subnet like 192.168.100.0/24", v);
        if (r < 0)
            return r;
        free(*strp);
        *strp = norm;
        return 0;
    }
    case SV_K_UINT:
        r = qv_parse_uint(v, k->min, k->max, &u);
        if (r == -ERANGE)
            snprintf(why, why_size, "%s is out of range (%llu to %llu)", v, (unsigned long long)k->min,
                     (unsigned long long)k->max);
        else if (r < 0)
            snprintf(why, why_size, "expected a whole number, got '%s'", v);
        if (r < 0)
            return r;
        *(uint64_t *)field = u;
        return 0;
    case SV_K_SIZE:
    case SV_K_DURATION: {
        bool size = k->kind == SV_K_SIZE;
        r = size ? qv_parse_size(v, &u) : qv_parse_duration_ms(v, &u);
        if (r < 0) {
            snprintf(why, why_size, "expected %s, got '%s'",
                     size ? "a size with a unit (like 512M or 20G)" : "a duration like 60s, 500ms or 2m", v);
            return r;
        }
        if (u < k->min || u > k->max) {
            void (*fmt)(uint64_t, char *, size_t) = size ? qv_format_size : qv_format_duration_ms;
            char lo[32], hi[32];
            fmt(k->min, lo, sizeof lo);
            fmt(k->max, hi, sizeof hi);
            snprintf(why, why_size, "%s is out of range (%s to %s)", v, lo, hi);
            return -ERANGE;
        }
        *(uint64_t *)field = u;
        return 0;
    }
    case SV_K_ENUM: {
        int i = qv_string_index(k->enum_names, v);
        if (i < 0) {
            char list[256];
            enum_list(k->enum_names, list, sizeof list);
            snprintf(why, why_size, "expected one of %s, got '%s'", list, v);
            return -EINVAL;
        }
        *(int *)field = i;
        return 0;
    }
    case SV_K_BOOL:
        if (strcmp(v, "true") == 0)
            *(bool *)field = true;
        else if (strcmp(v, "false") == 0)
            *(bool *)field = false;
        else {
            snprintf(why, why_size, "expected true or false, got '%s'", v);
            return -EINVAL;
        }
        return 0;
    case SV_K_RATIO: {
        double d;
        if (parse_decimal(v, &d) < 0) {
            snprintf(why, why_size, "expected a number like 4 or 1.5, got '%s'", v);
            return -EINVAL;
        }
        return set_ratio(k, obj, d, v, why, why_size);
    }
    case SV_K_IPLIST:
    case SV_K_STRLIST:
        snprintf(why, why_size, "expected a list");
        return -EINVAL;
    case SV_K_MAP:
        snprintf(why, why_size, "expected a mapping");
        return -EINVAL;
    }
    if (k->check && (r = k->check(v, why, why_size)) < 0)
        return r;
    char *dup = strdup(v);
    if (!dup)
        return -ENOMEM;
    free(*strp);
    *strp = dup;
    return 0;
}

/* Validates one list item of an SV_K_IPLIST. */
static bool ip_valid(const char *s) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* One list item: 0, or a negative errno with the reason in why. */
static int list_item_check(const sv_key *k, const char *s, char *why, size_t why_size) {
    if (k->kind == SV_K_IPLIST) {
        if (ip_valid(s))
            return 0;
        snprintf(why, why_size, "'%s' is not an IP address", s);
        return -EINVAL;
    }
    if (!*s) {
        snprintf(why, why_size, "list items must not be empty");
        return -EINVAL;
    }
    return k->check ? k->check(s, why, why_size) : 0;
}

static const char *list_of(const sv_key *k) {
    return k->kind == SV_K_IPLIST ? "a list of addresses" : "a list of strings";
}

static int set_list(const sv_key *k, void *obj, char **items) {
    strv_free(*(char ***)FIELD(obj, k));
    *(char ***)FIELD(obj, k) = items;
    return 0;
}

int sv_schema_apply_defaults(const sv_schema *s, void *obj) {
    for (size_t i = 0; i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        if (is_list_kind(k->kind)) {
            char **empty = calloc(1, sizeof *empty);
            if (!empty)
                return -ENOMEM;
            set_list(k, obj, empty);
            continue;
        }
        if (k->kind == SV_K_MAP) {
            void **empty = calloc(1, sizeof *empty);
            if (!empty)
                return -ENOMEM;
            map_free(k->map, *(void ***)FIELD(obj, k));
            *(void ***)FIELD(obj, k) = empty;
            continue;
        }
        if (is_optional(k)) {
            *(uint64_t *)FIELD(obj, k) = SV_UNSET;
            continue;
        }
        if (!k->def)
            continue;
        char why[256];
        int r = set_text(k, obj, k->def, why, sizeof why);
        if (r < 0)
            return r;
    }
    return 0;
}

static const sv_key *find_key(const sv_schema *s, const char *section, const char *name) {
    for (size_t i = 0; i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        if ((section == NULL) != (k->section == NULL))
            continue;
        if (section && strcmp(section, k->section) != 0)
            continue;
        if (strcmp(name, k->name) == 0)
            return k;
    }
    return NULL;
}

static bool is_section(const sv_schema *s, const char *name) {
    for (size_t i = 0; i < s->n_keys; i++)
        if (s->keys[i].section && strcmp(s->keys[i].section, name) == 0)
            return true;
    return false;
}

/* The key's name in messages: "section.name", or "MAP.ENTRY.name" for the
 * keys of a map entry (prefix "MAP.ENTRY"). */
static void display_name(const char *prefix, const sv_key *k, char *buf, size_t size) {
    char base[128];
    sv_schema_key_name(k, base, sizeof base);
    if (prefix)
        snprintf(buf, size, "%s.%s", prefix, base);
    else
        snprintf(buf, size, "%s", base);
}

/* ---- YAML -------------------------------------------------------------- */

typedef struct yctx {
    const sv_schema *schema;
    void *obj;
    const char *name;
    int code;
    qv_error *err;
    yaml_document_t *doc;
    const char *prefix; /* in a map entry: "MAP.ENTRY", for messages */
} yctx;

static int yfail(yctx *c, yaml_mark_t mark, const char *key, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int yfail(yctx *c, yaml_mark_t mark, const char *key, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (key)
        return qv_error_set(c->err, c->code, "%s:%zu:%zu: %s: %s", c->name, mark.line + 1, mark.column + 1, key,
                            msg);
    return qv_error_set(c->err, c->code, "%s:%zu:%zu: %s", c->name, mark.line + 1, mark.column + 1, msg);
}

static bool is_null_scalar(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static const char *node_kind(const yaml_node_t *n) {
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a single value";
    }
}

static int ywalk(yctx *c, yaml_node_t *map, const char *section);

/* An SV_K_MAP value: NAME: {settings} pairs, each entry walked with the
 * entry schema.  The whole map replaces the old one. */
static int yset_map(yctx *c, const sv_key *k, const char *keyname, yaml_node_t *val) {
    const sv_map *m = k->map;
    char why[512];
    if (is_null_scalar(val)) {
        void **empty = calloc(1, sizeof *empty);
        if (!empty)
            return qv_error_set(c->err, ENOMEM, "out of memory");
        map_free(m, *(void ***)FIELD(c->obj, k));
        *(void ***)FIELD(c->obj, k) = empty;
        return 0;
    }
    if (val->type != YAML_MAPPING_NODE)
        return yfail(c, val->start_mark, keyname, "expected a mapping of %s names to settings, got %s", m->what,
                     node_kind(val));
    size_t n = (size_t)(val->data.mapping.pairs.top - val->data.mapping.pairs.start);
    void **v = calloc(n + 1, sizeof *v);
    if (!v)
        return qv_error_set(c->err, ENOMEM, "out of memory");
    size_t i = 0;
    int r = 0;
    for (yaml_node_pair_t *p = val->data.mapping.pairs.start; p < val->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(c->doc, p->value);
        if (!kn || !vn) {
            r = qv_error_set(c->err, c->code, "%s: malformed document", c->name);
            break;
        }
        if (kn->type != YAML_SCALAR_NODE) {
            r = yfail(c, kn->start_mark, keyname, "%s names must be plain names, got %s", m->what, node_kind(kn));
            break;
        }
        const char *name = (const char *)kn->data.scalar.value;
        char entry_key[256];
        snprintf(entry_key, sizeof entry_key, "%s.%s", keyname, name);
        if (!qv_name_valid(name)) {
            bad_entry_name(m, name, why, sizeof why);
            r = yfail(c, kn->start_mark, keyname, "%s", why);
            break;
        }
        if (map_has(m, v, name)) {
            r = yfail(c, kn->start_mark, entry_key, "repeated key");
            break;
        }
        if (!(v[i] = entry_new(m, name))) {
            r = qv_error_set(c->err, ENOMEM, "out of memory");
            break;
        }
        void *e = v[i++];
        if (is_null_scalar(vn))
            continue;
        if (vn->type != YAML_MAPPING_NODE) {
            r = yfail(c, vn->start_mark, entry_key, "expected a mapping of settings, got %s", node_kind(vn));
            break;
        }
        yctx sub = *c;
        sub.schema = m->entry;
        sub.obj = e;
        sub.prefix = entry_key;
        if ((r = ywalk(&sub, vn, NULL)) < 0)
            break;
    }
    if (r < 0) {
        map_free(m, v);
        return r;
    }
    map_free(m, *(void ***)FIELD(c->obj, k));
    *(void ***)FIELD(c->obj, k) = v;
    return 0;
}

static int yset(yctx *c, const sv_key *k, yaml_node_t *val) {
    char keyname[256], why[512] = "";
    display_name(c->prefix, k, keyname, sizeof keyname);
    if (k->kind == SV_K_MAP)
        return yset_map(c, k, keyname, val);
    if (is_list_kind(k->kind)) {
        if (val->type != YAML_SEQUENCE_NODE)
            return yfail(c, val->start_mark, keyname, "expected %s, got %s", list_of(k), node_kind(val));
        size_t n = (size_t)(val->data.sequence.items.top - val->data.sequence.items.start);
        if (k->max && n > k->max)
            return yfail(c, val->start_mark, keyname, "at most %llu items, got %zu", (unsigned long long)k->max, n);
        char **v = calloc(n + 1, sizeof *v);
        if (!v)
            return qv_error_set(c->err, ENOMEM, "out of memory");
        size_t i = 0;
        for (yaml_node_item_t *it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++) {
            yaml_node_t *item = yaml_document_get_node(c->doc, *it);
            const char *s = item && item->type == YAML_SCALAR_NODE ? (const char *)item->data.scalar.value : NULL;
            if (!s) {
                strv_free(v);
                return yfail(c, item ? item->start_mark : val->start_mark, keyname, "list items must be %s",
                             k->kind == SV_K_IPLIST ? "addresses" : "single values (strings)");
            }
            int r = is_null_scalar(item) && k->kind == SV_K_STRLIST ? -EINVAL : list_item_check(k, s, why, sizeof why);
            if (r < 0) {
                strv_free(v);
                if (r == -ENOMEM)
                    return qv_error_set(c->err, ENOMEM, "out of memory");
                return yfail(c, item->start_mark, keyname, "%s", why[0] ? why : "list items must not be empty");
            }
            if (!(v[i++] = strdup(s))) {
                strv_free(v);
                return qv_error_set(c->err, ENOMEM, "out of memory");
            }
        }
        return set_list(k, c->obj, v);
    }
    if (val->type != YAML_SCALAR_NODE)
        return yfail(c, val->start_mark, keyname, "expected a single value, got %s", node_kind(val));
    if (is_null_scalar(val) && is_optional(k)) {
        *(uint64_t *)FIELD(c->obj, k) = SV_UNSET;
        return 0;
    }
    if (is_null_scalar(val))
        return yfail(c, val->start_mark, keyname, "has no value%s", k->allow_empty ? " (write \"\" for an empty one)" : "");
    int r = set_text(k, c->obj, (const char *)val->data.scalar.value, why, sizeof why);
    if (r == -ENOMEM)
        return qv_error_set(c->err, ENOMEM, "out of memory");
    if (r < 0)
        return yfail(c, val->start_mark, keyname, "%s", why);
    return 0;
}

static int ywalk(yctx *c, yaml_node_t *map, const char *section) {
    size_t n_keys = c->schema->n_keys;
    _cleanup_free_ bool *seen = calloc(n_keys + 1, sizeof *seen);
    if (!seen)
        return qv_error_set(c->err, ENOMEM, "out of memory");
    const char *seen_sections[32];
    size_t n_seen_sections = 0;

    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(c->doc, p->value);
        if (!kn || !vn)
            return qv_error_set(c->err, c->code, "%s: malformed document", c->name);
        if (kn->type != YAML_SCALAR_NODE)
            return yfail(c, kn->start_mark, NULL, "keys must be plain names, got %s", node_kind(kn));
        const char *name = (const char *)kn->data.scalar.value;
        char full[256];
        if (section)
            snprintf(full, sizeof full, "%s.%s", section, name);
        else if (c->prefix)
            snprintf(full, sizeof full, "%s.%s", c->prefix, name);
        else
            snprintf(full, sizeof full, "%s", name);

        if (!section && is_section(c->schema, name)) {
            for (size_t i = 0; i < n_seen_sections; i++)
                if (strcmp(seen_sections[i], name) == 0)
                    return yfail(c, kn->start_mark, full, "repeated key (the section appears twice)");
            if (n_seen_sections < QV_ARRAY_SIZE(seen_sections))
                seen_sections[n_seen_sections++] = name;
            if (vn->type != YAML_MAPPING_NODE)
                return yfail(c, vn->start_mark, full, "expected a mapping of settings, got %s", node_kind(vn));
            int r = ywalk(c, vn, name);
            if (r < 0)
                return r;
            continue;
        }
        const sv_key *k = find_key(c->schema, section, name);
        if (!k)
            return yfail(c, kn->start_mark, full, "unknown key");
        size_t idx = (size_t)(k - c->schema->keys);
        if (seen[idx])
            return yfail(c, kn->start_mark, full, "repeated key");
        seen[idx] = true;
        int r = yset(c, k, vn);
        if (r < 0)
            return r;
    }
    return 0;
}

int sv_schema_load_yaml(const sv_schema *s, void *obj, const char *name, const char *data, size_t len,
                        int error_code, qv_error *err) {
    yctx c = {.schema = s, .obj = obj, .name = name, .code = error_code, .err = err};
    if (memchr(data, '\0', len))
        return qv_error_set(err, error_code, "%s: contains a NUL byte", name);
    /* before libyaml, whose scanner is quadratic in the nesting */
    qv_yaml_guard_error ge;
    if (qv_yaml_guard(data, len, &ge) < 0)
        return ge.line ? qv_error_set(err, error_code, "%s:%zu:%zu: %s", name, ge.line, ge.column, ge.why)
                       : qv_error_set(err, error_code, "%s: %s", name, ge.why);
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return qv_error_set(err, ENOMEM, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        int r = yfail(&c, parser.problem_mark, NULL, "YAML syntax error: %s%s%s",
                      parser.problem ? parser.problem : "unknown problem", parser.context ? " " : "",
                      parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return r;
    }
    c.doc = &doc;
    int r = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !is_null_scalar(root)) {
        if (root->type != YAML_MAPPING_NODE)
            r = yfail(&c, root->start_mark, NULL, "expected a mapping of settings, got %s", node_kind(root));
        else
            r = ywalk(&c, root, NULL);
    }
    if (r == 0) {
        /* A second document in the same file is almost certainly a mistake. */
        yaml_document_t extra;
        if (yaml_parser_load(&parser, &extra)) {
            yaml_node_t *x = yaml_document_get_root_node(&extra);
            if (x)
                r = yfail(&c, x->start_mark, NULL, "more than one YAML document in the file");
            yaml_document_delete(&extra);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return r;
}

/* ---- JSON -------------------------------------------------------------- */

static int jwalk(const sv_schema *s, void *obj, json_t *j, const char *section, const char *prefix, const char *what,
                 int code, qv_error *err);

/* An SV_K_MAP value: {"NAME": {settings} or null}; replaces the old map. */
static int jset_map(const sv_key *k, void *obj, json_t *v, const char *keyname, const char *what, int code,
                    qv_error *err) {
    const sv_map *m = k->map;
    if (!json_is_object(v))
        return qv_error_set(err, code, "%s: %s: expected an object of %s names to settings", what, keyname, m->what);
    void **items = calloc(json_object_size(v) + 1, sizeof *items);
    if (!items)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t i = 0;
    int r = 0;
    const char *name;
    json_t *ev;
    json_object_foreach(v, name, ev) {
        char why[512], entry_key[256];
        snprintf(entry_key, sizeof entry_key, "%s.%s", keyname, name);
        if (!qv_name_valid(name)) {
            bad_entry_name(m, name, why, sizeof why);
            r = qv_error_set(err, code, "%s: %s: %s", what, keyname, why);
            break;
        }
        if (!(items[i] = entry_new(m, name))) {
            r = qv_error_set(err, ENOMEM, "out of memory");
            break;
        }
        void *e = items[i++];
        if (json_is_null(ev))
            continue;
        if (!json_is_object(ev)) {
            r = qv_error_set(err, code, "%s: %s: expected an object of settings", what, entry_key);
            break;
        }
        if ((r = jwalk(m->entry, e, ev, NULL, entry_key, what, code, err)) < 0)
            break;
    }
    if (r < 0) {
        map_free(m, items);
        return r;
    }
    map_free(m, *(void ***)FIELD(obj, k));
    *(void ***)FIELD(obj, k) = items;
    return 0;
}

static int jset(const sv_key *k, void *obj, json_t *v, const char *prefix, const char *what, int code,
                qv_error *err) {
    char keyname[256], why[512] = "", num[32];
    display_name(prefix, k, keyname, sizeof keyname);
    if (k->kind == SV_K_MAP)
        return jset_map(k, obj, v, keyname, what, code, err);
    if (k->kind == SV_K_RATIO && json_is_number(v)) {
        snprintf(num, sizeof num, "%g", json_number_value(v));
        if (set_ratio(k, obj, json_number_value(v), num, why, sizeof why) < 0)
            return qv_error_set(err, code, "%s: %s: %s", what, keyname, why);
        return 0;
    }
    if (is_list_kind(k->kind)) {
        if (!json_is_array(v))
            return qv_error_set(err, code, "%s: %s: expected %s", what, keyname, list_of(k));
        if (k->max && json_array_size(v) > k->max)
            return qv_error_set(err, code, "%s: %s: at most %llu items, got %zu", what, keyname,
                                (unsigned long long)k->max, json_array_size(v));
        char **items = calloc(json_array_size(v) + 1, sizeof *items);
        if (!items)
            return qv_error_set(err, ENOMEM, "out of memory");
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) {
            const char *s = json_string_value(item);
            int r = s ? list_item_check(k, s, why, sizeof why) : -EINVAL;
            if (r < 0) {
                strv_free(items);
                if (r == -ENOMEM)
                    return qv_error_set(err, ENOMEM, "out of memory");
                if (k->kind == SV_K_IPLIST)
                    return qv_error_set(err, code, "%s: %s: '%s' is not an IP address", what, keyname, s ? s : "?");
                return qv_error_set(err, code, "%s: %s[%zu]: %s", what, keyname, i, s ? why : "expected a string");
            }
            if (!(items[i] = strdup(s))) {
                strv_free(items);
                return qv_error_set(err, ENOMEM, "out of memory");
            }
        }
        return set_list(k, obj, items);
    }
    const char *text;
    if (json_is_string(v))
        text = json_string_value(v);
    else if (json_is_integer(v) && json_integer_value(v) >= 0) {
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        text = num;
    } else if (json_is_boolean(v))
        text = json_is_true(v) ? "true" : "false";
    else
        return qv_error_set(err, code, "%s: %s: expected a single value", what, keyname);
    int r = set_text(k, obj, text, why, sizeof why);
    if (r == -ENOMEM)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (r < 0)
        return qv_error_set(err, code, "%s: %s: %s", what, keyname, why);
    return 0;
}

/* prefix: "MAP.ENTRY" in a map entry (for messages), else NULL. */
static int jwalk(const sv_schema *s, void *obj, json_t *j, const char *section, const char *prefix, const char *what,
                 int code, qv_error *err) {
    const char *name;
    json_t *v;
    json_object_foreach(j, name, v) {
        if (!section && is_section(s, name)) {
            if (!json_is_object(v))
                return qv_error_set(err, code, "%s: %s: expected an object of settings", what, name);
            int r = jwalk(s, obj, v, name, prefix, what, code, err);
            if (r < 0)
                return r;
            continue;
        }
        const sv_key *k = find_key(s, section, name);
        if (!k) {
            const char *outer = section ? section : prefix;
            return qv_error_set(err, code, "%s: %s%s%s: unknown key", what, outer ? outer : "", outer ? "." : "",
                                name);
        }
        if (json_is_null(v) && is_optional(k)) {
            *(uint64_t *)FIELD(obj, k) = SV_UNSET;
            continue;
        }
        if (json_is_null(v))
            continue; /* null means "not given": the default stays */
        int r = jset(k, obj, v, prefix, what, code, err);
        if (r < 0)
            return r;
    }
    return 0;
}

int sv_schema_load_json(const sv_schema *s, void *obj, json_t *j, const char *what, int error_code, qv_error *err) {
    if (!json_is_object(j))
        return qv_error_set(err, error_code, "%s: expected an object", what);
    return jwalk(s, obj, j, NULL, NULL, what, error_code, err);
}

/* ---- output ------------------------------------------------------------ */

/* "4.0", "1.5", "0.25": the shortest text that reads back the same. */
static void format_ratio(double d, char *buf, size_t size) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*f", prec, d);
        double back;
        if (parse_decimal(buf, &back) == 0 && back == d)
            return;
    }
    snprintf(buf, size, "%.17g", d);
}

void sv_schema_render(const sv_key *k, const void *obj, char *buf, size_t size) {
    const void *field = CFIELD(obj, k);
    if (is_optional(k) && *(const uint64_t *)field == SV_UNSET) {
        snprintf(buf, size, "unset");
        return;
    }
    switch (k->kind) {
    case SV_K_UINT:
        snprintf(buf, size, "%llu", (unsigned long long)*(const uint64_t *)field);
        break;
    case SV_K_SIZE:
        qv_format_size(*(const uint64_t *)field, buf, size);
        break;
    case SV_K_DURATION:
        qv_format_duration_ms(*(const uint64_t *)field, buf, size);
        break;
    case SV_K_ENUM:
        snprintf(buf, size, "%s", k->enum_names[*(const int *)field]);
        break;
    case SV_K_BOOL:
        snprintf(buf, size, "%s", *(const bool *)field ? "true" : "false");
        break;
    case SV_K_RATIO:
        format_ratio(*(const double *)field, buf, size);
        break;
    case SV_K_MAP: {
        void *const *v = *(void *const *const *)field;
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = 0; v && v[i] && off < size; i++)
            off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? ", " : "", entry_name(k->map, v[i]));
        if (!v || !v[0])
            snprintf(buf, size, "[]");
        break;
    }
    case SV_K_IPLIST:
    case SV_K_STRLIST: {
        char *const *v = *(char *const *const *)field;
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = 0; v && v[i] && off < size; i++)
            off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? ", " : "", v[i]);
        if (!v || !v[0])
            snprintf(buf, size, "[]");
        break;
    }
    default: {
        const char *str = *(char *const *)field;
        snprintf(buf, size, "%s", str ? str : "");
        break;
    }
    }
}

json_t *sv_schema_to_json(const sv_schema *s, const void *obj) {
    json_t *root = json_object();
    for (size_t i = 0; root && i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        const void *field = CFIELD(obj, k);
        json_t *v;
        if (is_optional(k) && *(const uint64_t *)field == SV_UNSET)
            v = json_null();
        else switch (k->kind) {
        case SV_K_UINT:
            v = json_integer((json_int_t) * (const uint64_t *)field);
            break;
        case SV_K_RATIO:
            v = json_real(*(const double *)field);
            break;
        case SV_K_MAP: {
            v = json_object();
            void *const *list = *(void *const *const *)field;
            for (size_t j = 0; v && list && list[j]; j++)
                json_object_set_new(v, entry_name(k->map, list[j]), sv_schema_to_json(k->map->entry, list[j]));
            break;
        }
        case SV_K_BOOL:
            v = json_boolean(*(const bool *)field);
            break;
        case SV_K_IPLIST:
        case SV_K_STRLIST: {
            v = json_array();
            char *const *list = *(char *const *const *)field;
            for (size_t j = 0; v && list && list[j]; j++)
                json_array_append_new(v, json_string(list[j]));
            break;
        }
        default:
            if (is_string_kind(k->kind)) {
                /* exact, whatever the length (render() is for display) */
                const char *str = *(char *const *)field;
                v = json_string(str ? str : "");
            } else {
                char buf[64];
                sv_schema_render(k, obj, buf, sizeof buf);
                v = json_string(buf);
            }
            break;
        }
        json_t *parent = root;
        if (k->section) {
            parent = json_object_get(root, k->section);
            if (!parent) {
                parent = json_object();
                json_object_set_new(root, k->section, parent);
            }
        }
        json_object_set_new(parent, k->name, v);
    }
    return root;
}

static void visit_keys(const sv_schema *s, const void *obj, const char *prefix, sv_schema_visit_fn fn,
                       void *userdata) {
    for (size_t i = 0; i < s->n_keys; i++) {
        const sv_key *k = &s->keys[i];
        char name[256], value[1024];
        display_name(prefix, k, name, sizeof name);
        void *const *entries = k->kind == SV_K_MAP ? *(void *const *const *)CFIELD(obj, k) : NULL;
        if (entries && entries[0]) {
            for (size_t j = 0; entries[j]; j++) {
                char entry_key[320];
                snprintf(entry_key, sizeof entry_key, "%s.%s", name, entry_name(k->map, entries[j]));
                visit_keys(k->map->entry, entries[j], entry_key, fn, userdata);
            }
            continue;
        }
        sv_schema_render(k, obj, value, sizeof value);
        fn(name, value, userdata);
    }
}

void sv_schema_visit(const sv_schema *s, const void *obj, sv_schema_visit_fn fn, void *userdata) {
    visit_keys(s, obj, NULL, fn, userdata);
}
