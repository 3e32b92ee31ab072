/* Node config parser: libyaml document → sv_config through a table of keys. */
#include "config.h"

#include "cleanup.h"
#include "fileio.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define CONFIG_MAX_FILE (1u << 20)

typedef enum key_kind {
    K_STRING,   /* any string (may be empty if allow_empty) */
    K_PATH,     /* absolute path */
    K_UINT,     /* integer in [min, max] */
    K_SIZE,     /* size with unit, in [min, max] bytes */
    K_DURATION, /* "60s", "500ms", bare seconds; [min, max] ms */
    K_ACCEL,    /* auto | kvm | tcg */
    K_LOGLEVEL, /* error | warning | info | debug */
    K_IFNAME,   /* network interface name, <= 15 characters */
    K_IPV4,     /* dotted quad */
    K_CIDR4,    /* a.b.c.d/len, stored normalised */
    K_IPLIST,   /* sequence of IPv4 or IPv6 addresses */
} key_kind;

typedef struct config_key {
    const char *section; /* NULL for top-level keys */
    const char *name;
    key_kind kind;
    size_t offset;
    const char *def; /* default as the user would write it; NULL = derived */
    uint64_t min, max;
    bool allow_empty;
    bool restart; /* a running daemon keeps the old value */
} config_key;

#define F(field) offsetof(sv_config, field)

static const config_key keys[] = {
    {NULL, "log_level", K_LOGLEVEL, F(log_level), "info", 0, 0, false, false},

    {"paths", "state_dir", K_PATH, F(state_dir), "/var/lib/qvisor", 0, 0, false, true},
    {"paths", "images_dir", K_PATH, F(images_dir), NULL, 0, 0, false, true},
    {"paths", "instances_dir", K_PATH, F(instances_dir), NULL, 0, 0, false, true},
    {"paths", "run_dir", K_PATH, F(run_dir), "/run/qvisor", 0, 0, false, true},
    {"paths", "sysfs_root", K_PATH, F(sysfs_root), "/", 0, 0, false, true},

    {"daemon", "socket", K_PATH, F(socket_path), NULL, 0, 0, false, true},
    {"daemon", "socket_group", K_STRING, F(socket_group), "", 0, 0, true, true},
    {"daemon", "max_request_size", K_SIZE, F(max_request_size), "1M", 4096, 64ull << 20, false, false},
    {"daemon", "max_clients", K_UINT, F(max_clients), "64", 1, 4096, false, false},

    {"qemu", "binary", K_STRING, F(qemu_binary), "qemu-system-x86_64", 0, 0, false, false},
    {"qemu", "img_binary", K_STRING, F(qemu_img_binary), "qemu-img", 0, 0, false, false},
    {"qemu", "accelerator", K_ACCEL, F(accelerator), "auto", 0, 0, false, false},
    {"qemu", "run_as", K_STRING, F(run_as), "", 0, 0, true, false},

    {"vm_defaults", "cpus", K_UINT, F(vm_cpus), "2", 1, 1024, false, false},
    {"vm_defaults", "memory", K_SIZE, F(vm_memory), "2G", 16ull << 20, 16ull << 40, false, false},
    {"vm_defaults", "disk", K_SIZE, F(vm_disk), "20G", 1ull << 20, 64ull << 40, false, false},
    {"vm_defaults", "stop_timeout", K_DURATION, F(stop_timeout_ms), "60s", 0, 24ull * 3600 * 1000, false, false},
    {"vm_defaults", "kill_timeout", K_DURATION, F(kill_timeout_ms), "10s", 0, 3600ull * 1000, false, false},

    {"network", "nat_bridge", K_IFNAME, F(nat_bridge), "qvbr0", 0, 0, false, false},
    {"network", "nat_subnet", K_CIDR4, F(nat_subnet), "192.168.100.0/24", 8, 30, false, false},
    {"network", "nat_gateway", K_IPV4, F(nat_gateway), "192.168.100.1", 0, 0, false, false},
    {"network", "overlay_bridge", K_IFNAME, F(overlay_bridge), "", 0, 0, true, false},
    {"network", "dns", K_IPLIST, F(dns), NULL, 0, 0, true, false},
};

static const char *const accel_names[] = {"auto", "kvm", "tcg", NULL};

const char *sv_accel_to_string(sv_accel a) {
    return (unsigned)a < 3 ? accel_names[a] : "auto";
}

static void strv_free(char **v) {
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

void sv_config_free(sv_config *c) {
    if (!c)
        return;
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++) {
        void *field = (char *)c + keys[i].offset;
        switch (keys[i].kind) {
        case K_STRING:
        case K_PATH:
        case K_IFNAME:
        case K_IPV4:
        case K_CIDR4:
            free(*(char **)field);
            break;
        case K_IPLIST:
            strv_free(*(char ***)field);
            break;
        default:
            break;
        }
    }
    free(c->source);
    free(c);
}

/* ---- value conversion ------------------------------------------------ */

typedef struct parse_ctx {
    const char *name; /* file name for messages */
    qv_error *err;
} parse_ctx;

static int fail_at(parse_ctx *ctx, yaml_mark_t mark, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_at(parse_ctx *ctx, yaml_mark_t mark, const char *key, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (key)
        return qv_error_set(ctx->err, QV_ECONFIG, "%s:%zu:%zu: %s: %s", ctx->name, mark.line + 1,
                            mark.column + 1, key, msg);
    return qv_error_set(ctx->err, QV_ECONFIG, "%s:%zu:%zu: %s", ctx->name, mark.line + 1, mark.column + 1, msg);
}

static void key_name(const config_key *k, char *buf, size_t size) {
    if (k->section)
        snprintf(buf, size, "%s.%s", k->section, k->name);
    else
        snprintf(buf, size, "%s", k->name);
}

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
    char out[INET_ADDRSTRLEN + 4];
    char a[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &in, a, sizeof a);
    snprintf(out, sizeof out, "%s/%u", a, (unsigned)len);
    *ret = strdup(out);
    return *ret ? 0 : -ENOMEM;
}

static bool is_null_scalar(const yaml_node_t *n) {
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

/* Stores text value v (from the file or a default) into the field. */
static int set_scalar(sv_config *c, const config_key *k, const char *v, const char *keyname, char *why,
                      size_t why_size) {
    void *field = (char *)c + k->offset;
    int r;
    uint64_t u;
    char **strp = field;

    if (!*v && !k->allow_empty && k->kind != K_IPLIST) {
        snprintf(why, why_size, "must not be empty");
        return -EINVAL;
    }
    switch (k->kind) {
    case K_STRING:
        break;
    case K_PATH:
        if (v[0] != '/') {
            snprintf(why, why_size, "must be an absolute path, got '%s'", v);
            return -EINVAL;
        }
        break;
    case K_IFNAME:
        if (*v && (strlen(v) >= IFNAMSIZ || strpbrk(v, "/ \t\n:") || strcmp(v, ".") == 0 ||
                   strcmp(v, "..") == 0)) {
            snprintf(why, why_size, "'%s' is not a valid interface name (at most %d characters, no '/', ':' or spaces)",
                     v, IFNAMSIZ - 1);
            return -EINVAL;
        }
        break;
    case K_IPV4: {
        struct in_addr in;
        if (inet_pton(AF_INET, v, &in) != 1) {
            snprintf(why, why_size, "'%s' is not an IPv4 address", v);
            return -EINVAL;
        }
        break;
    }
    case K_CIDR4: {
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
    case K_UINT:
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
    case K_SIZE: {
        r = qv_parse_size(v, &u);
        if (r < 0) {
            snprintf(why, why_size, "expected a size with a unit (like 512M or 20G), got '%s'", v);
            return r;
        }
        if (u < k->min || u > k->max) {
            char lo[32], hi[32];
            qv_format_size(k->min, lo, sizeof lo);
            qv_format_size(k->max, hi, sizeof hi);
            snprintf(why, why_size, "%s is out of range (%s to %s)", v, lo, hi);
            return -ERANGE;
        }
        *(uint64_t *)field = u;
        return 0;
    }
    case K_DURATION: {
        r = qv_parse_duration_ms(v, &u);
        if (r < 0) {
            snprintf(why, why_size, "expected a duration like 60s, 500ms or 2m, got '%s'", v);
            return r;
        }
        if (u < k->min || u > k->max) {
            char lo[32], hi[32];
            qv_format_duration_ms(k->min, lo, sizeof lo);
            qv_format_duration_ms(k->max, hi, sizeof hi);
            snprintf(why, why_size, "%s is out of range (%s to %s)", v, lo, hi);
            return -ERANGE;
        }
        *(uint64_t *)field = u;
        return 0;
    }
    case K_ACCEL: {
        int i = qv_string_index(accel_names, v);
        if (i < 0) {
            snprintf(why, why_size, "expected one of auto, kvm, tcg, got '%s'", v);
            return -EINVAL;
        }
        *(sv_accel *)field = (sv_accel)i;
        return 0;
    }
    case K_LOGLEVEL: {
        qv_log_level l;
        if (qv_log_level_from_string(v, &l) < 0) {
            snprintf(why, why_size, "expected one of error, warning, info, debug, got '%s'", v);
            return -EINVAL;
        }
        *(qv_log_level *)field = l;
        return 0;
    }
    case K_IPLIST:
        snprintf(why, why_size, "expected a list");
        return -EINVAL;
    }
    (void)keyname;
    char *dup = strdup(v);
    if (!dup)
        return -ENOMEM;
    free(*strp);
    *strp = dup;
    return 0;
}

/* ---- document walk --------------------------------------------------- */

static const config_key *find_key(const char *section, const char *name) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++) {
        const config_key *k = &keys[i];
        if ((section == NULL) != (k->section == NULL))
            continue;
        if (section && strcmp(section, k->section) != 0)
            continue;
        if (strcmp(name, k->name) == 0)
            return k;
    }
    return NULL;
}

static bool is_section(const char *name) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++)
        if (keys[i].section && strcmp(keys[i].section, name) == 0)
            return true;
    return false;
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

static int set_iplist(parse_ctx *ctx, sv_config *c, const config_key *k, yaml_document_t *doc,
                      yaml_node_t *val, const char *keyname) {
    if (val->type != YAML_SEQUENCE_NODE)
        return fail_at(ctx, val->start_mark, keyname, "expected a list of addresses, got %s", node_kind(val));
    size_t n = (size_t)(val->data.sequence.items.top - val->data.sequence.items.start);
    char **v = calloc(n + 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    size_t i = 0;
    for (yaml_node_item_t *it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++, i++) {
        yaml_node_t *item = yaml_document_get_node(doc, *it);
        if (!item || item->type != YAML_SCALAR_NODE) {
            strv_free(v);
            return fail_at(ctx, item ? item->start_mark : val->start_mark, keyname,
                           "list items must be addresses");
        }
        const char *s = (const char *)item->data.scalar.value;
        unsigned char buf[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET, s, buf) != 1 && inet_pton(AF_INET6, s, buf) != 1) {
            strv_free(v);
            return fail_at(ctx, item->start_mark, keyname, "'%s' is not an IP address", s);
        }
        v[i] = strdup(s);
        if (!v[i]) {
            strv_free(v);
            return -ENOMEM;
        }
    }
    strv_free(*(char ***)((char *)c + k->offset));
    *(char ***)((char *)c + k->offset) = v;
    return 0;
}

static int set_from_node(parse_ctx *ctx, sv_config *c, const config_key *k, yaml_document_t *doc,
                         yaml_node_t *val) {
    char keyname[128];
    key_name(k, keyname, sizeof keyname);
    if (k->kind == K_IPLIST)
        return set_iplist(ctx, c, k, doc, val, keyname);
    if (val->type != YAML_SCALAR_NODE)
        return fail_at(ctx, val->start_mark, keyname, "expected a single value, got %s", node_kind(val));
    if (is_null_scalar(val))
        return fail_at(ctx, val->start_mark, keyname, "has no value%s",
                       k->allow_empty ? " (write \"\" for an empty one)" : "");
    char why[512] = "";
    int r = set_scalar(c, k, (const char *)val->data.scalar.value, keyname, why, sizeof why);
    if (r == -ENOMEM)
        return qv_error_set(ctx->err, ENOMEM, "out of memory");
    if (r < 0)
        return fail_at(ctx, val->start_mark, keyname, "%s", why);
    return 0;
}

/* Walks one mapping; section is NULL for the root. */
static int walk_mapping(parse_ctx *ctx, sv_config *c, yaml_document_t *doc, yaml_node_t *map,
                        const char *section) {
    bool seen[QV_ARRAY_SIZE(keys)] = {false};
    const char *seen_sections[16];
    size_t n_seen_sections = 0;

    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(doc, p->value);
        if (!kn || !vn)
            return qv_error_set(ctx->err, QV_ECONFIG, "%s: malformed document", ctx->name);
        if (kn->type != YAML_SCALAR_NODE)
            return fail_at(ctx, kn->start_mark, NULL, "keys must be plain names, got %s", node_kind(kn));
        const char *name = (const char *)kn->data.scalar.value;
        char full[128];
        if (section)
            snprintf(full, sizeof full, "%s.%s", section, name);
        else
            snprintf(full, sizeof full, "%s", name);

        if (!section && is_section(name)) {
            for (size_t i = 0; i < n_seen_sections; i++)
                if (strcmp(seen_sections[i], name) == 0)
                    return fail_at(ctx, kn->start_mark, full, "repeated key (the section appears twice)");
            if (n_seen_sections < QV_ARRAY_SIZE(seen_sections))
                seen_sections[n_seen_sections++] = name;
            if (vn->type != YAML_MAPPING_NODE)
                return fail_at(ctx, vn->start_mark, full, "expected a mapping of settings, got %s",
                               node_kind(vn));
            int r = walk_mapping(ctx, c, doc, vn, name);
            if (r < 0)
                return r;
            continue;
        }
        const config_key *k = find_key(section, name);
        if (!k)
            return fail_at(ctx, kn->start_mark, full, "unknown key");
        size_t idx = (size_t)(k - keys);
        if (seen[idx])
            return fail_at(ctx, kn->start_mark, full, "repeated key");
        seen[idx] = true;
        int r = set_from_node(ctx, c, k, doc, vn);
        if (r < 0)
            return r;
    }
    return 0;
}

static int set_derived(sv_config *c) {
    struct {
        char **field;
        const char *base;
        const char *leaf;
    } derived[] = {
        {&c->images_dir, c->state_dir, "images"},
        {&c->instances_dir, c->state_dir, "instances"},
        {&c->socket_path, c->run_dir, "qvisor.sock"},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(derived); i++) {
        if (*derived[i].field)
            continue;
        const char *sep = derived[i].base[strlen(derived[i].base) - 1] == '/' ? "" : "/";
        if (asprintf(derived[i].field, "%s%s%s", derived[i].base, sep, derived[i].leaf) < 0) {
            *derived[i].field = NULL;
            return -ENOMEM;
        }
    }
    if (!c->dns) {
        c->dns = calloc(1, sizeof *c->dns);
        if (!c->dns)
            return -ENOMEM;
    }
    return 0;
}

static int apply_defaults(sv_config *c) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++) {
        if (!keys[i].def)
            continue;
        char why[256];
        int r = set_scalar(c, &keys[i], keys[i].def, keys[i].name, why, sizeof why);
        if (r < 0)
            return r; /* a bad built-in default is a bug; tests catch it */
    }
    return 0;
}

/* Cross-field checks, after everything is set. */
static int validate(parse_ctx *ctx, const sv_config *c) {
    struct in_addr net, gw;
    char netbuf[INET_ADDRSTRLEN];
    const char *slash = strchr(c->nat_subnet, '/');
    size_t n = (size_t)(slash - c->nat_subnet);
    memcpy(netbuf, c->nat_subnet, n);
    netbuf[n] = '\0';
    unsigned len = (unsigned)strtoul(slash + 1, NULL, 10);
    inet_pton(AF_INET, netbuf, &net);
    inet_pton(AF_INET, c->nat_gateway, &gw);
    uint32_t mask = len ? ~0u << (32 - len) : 0;
    uint32_t g = ntohl(gw.s_addr), nw = ntohl(net.s_addr);
    if ((g & mask) != nw || g == nw || g == (nw | ~mask))
        return qv_error_set(ctx->err, QV_ECONFIG,
                            "%s: network.nat_gateway: %s is not a usable host address in network.nat_subnet %s",
                            ctx->name, c->nat_gateway, c->nat_subnet);
    if (c->overlay_bridge[0] && strcmp(c->overlay_bridge, c->nat_bridge) == 0)
        return qv_error_set(ctx->err, QV_ECONFIG,
                            "%s: network.overlay_bridge: must differ from network.nat_bridge (%s)", ctx->name,
                            c->nat_bridge);
    return 0;
}

sv_config *sv_config_new_default(void) {
    sv_config *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (apply_defaults(c) < 0 || set_derived(c) < 0) {
        sv_config_free(c);
        return NULL;
    }
    return c;
}

int sv_config_parse(const char *name, const char *data, size_t len, sv_config **ret, qv_error *err) {
    parse_ctx ctx = {.name = name, .err = err};
    _cleanup_(sv_config_freep) sv_config *c = calloc(1, sizeof *c);
    if (!c)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (apply_defaults(c) < 0)
        return qv_error_set(err, EINVAL, "built-in defaults are invalid");

    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return qv_error_set(err, ENOMEM, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        int r = fail_at(&ctx, parser.problem_mark, NULL, "YAML syntax error: %s%s%s",
                        parser.problem ? parser.problem : "unknown problem", parser.context ? " " : "",
                        parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return r;
    }
    int r = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !(root->type == YAML_SCALAR_NODE && is_null_scalar(root))) {
        if (root->type != YAML_MAPPING_NODE)
            r = fail_at(&ctx, root->start_mark, NULL, "the config must be a mapping of settings, got %s",
                        node_kind(root));
        else
            r = walk_mapping(&ctx, c, &doc, root, NULL);
    }
    if (r == 0) {
        /* A second document in the same file is almost certainly a mistake. */
        yaml_document_t extra;
        if (yaml_parser_load(&parser, &extra)) {
            yaml_node_t *x = yaml_document_get_root_node(&extra);
            if (x)
                r = fail_at(&ctx, x->start_mark, NULL, "more than one YAML document in the file");
            yaml_document_delete(&extra);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (r < 0)
        return r;

    if (set_derived(c) < 0)
        return qv_error_set(err, ENOMEM, "out of memory");
    r = validate(&ctx, c);
    if (r < 0)
        return r;
    c->source = strdup(name);
    if (!c->source)
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret = TAKE_PTR(c);
    return 0;
}

int sv_config_load(const char *path, sv_config **ret, qv_error *err) {
    _cleanup_free_ char *data = NULL;
    size_t len;
    int r = qv_read_file(path, CONFIG_MAX_FILE, &data, &len);
    if (r == -EFBIG)
        return qv_error_set(err, QV_ECONFIG, "%s: larger than %u bytes", path, CONFIG_MAX_FILE);
    if (r < 0)
        return qv_error_set(err, r, "cannot read config %s: %s", path, strerror(-r));
    if (strlen(data) != len)
        return qv_error_set(err, QV_ECONFIG, "%s: contains a NUL byte", path);
    return sv_config_parse(path, data, len, ret, err);
}

/* ---- output ---------------------------------------------------------- */

static void render(const sv_config *c, const config_key *k, char *buf, size_t size) {
    const void *field = (const char *)c + k->offset;
    switch (k->kind) {
    case K_UINT:
        snprintf(buf, size, "%llu", (unsigned long long)*(const uint64_t *)field);
        break;
    case K_SIZE:
        qv_format_size(*(const uint64_t *)field, buf, size);
        break;
    case K_DURATION:
        qv_format_duration_ms(*(const uint64_t *)field, buf, size);
        break;
    case K_ACCEL:
        snprintf(buf, size, "%s", sv_accel_to_string(*(const sv_accel *)field));
        break;
    case K_LOGLEVEL:
        snprintf(buf, size, "%s", qv_log_level_to_string(*(const qv_log_level *)field));
        break;
    case K_IPLIST: {
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
        const char *s = *(char *const *)field;
        snprintf(buf, size, "%s", s ? s : "");
        break;
    }
    }
}

void sv_config_visit(const sv_config *c, sv_config_visit_fn fn, void *userdata) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++) {
        char name[128], value[1024];
        key_name(&keys[i], name, sizeof name);
        render(c, &keys[i], value, sizeof value);
        fn(name, value, userdata);
    }
}

json_t *sv_config_to_json(const sv_config *c) {
    json_t *root = json_object();
    for (size_t i = 0; root && i < QV_ARRAY_SIZE(keys); i++) {
        const config_key *k = &keys[i];
        const void *field = (const char *)c + k->offset;
        json_t *v;
        switch (k->kind) {
        case K_UINT:
            v = json_integer((json_int_t) * (const uint64_t *)field);
            break;
        case K_IPLIST: {
            v = json_array();
            char *const *list = *(char *const *const *)field;
            for (size_t j = 0; v && list && list[j]; j++)
                json_array_append_new(v, json_string(list[j]));
            break;
        }
        default: {
            char buf[1024];
            render(c, k, buf, sizeof buf);
            v = json_string(buf);
            break;
        }
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
    if (root && c->source)
        json_object_set_new(root, "source", json_string(c->source));
    return root;
}

char *sv_config_restart_keys_changed(const sv_config *old, const sv_config *new_config) {
    char *out = NULL;
    size_t len = 0;
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++) {
        if (!keys[i].restart)
            continue;
        char a[1024], b[1024], name[128];
        render(old, &keys[i], a, sizeof a);
        render(new_config, &keys[i], b, sizeof b);
        if (strcmp(a, b) == 0)
            continue;
        key_name(&keys[i], name, sizeof name);
        size_t add = strlen(name) + 2;
        char *grown = realloc(out, len + add + 1);
        if (!grown)
            break;
        out = grown;
        len += (size_t)sprintf(out + len, "%s%s", len ? ", " : "", name);
    }
    return out;
}

char *sv_config_keep_restart_keys(sv_config *fresh, sv_config *running) {
    char *changed = sv_config_restart_keys_changed(running, fresh);
    for (size_t i = 0; changed && i < QV_ARRAY_SIZE(keys); i++) {
        if (!keys[i].restart)
            continue;
        /* every restart key is a string: swap the pointers */
        char **a = (char **)((char *)fresh + keys[i].offset);
        char **b = (char **)((char *)running + keys[i].offset);
        char *tmp = *a;
        *a = *b;
        *b = tmp;
    }
    return changed;
}
