/* The node config: its table of keys, derived defaults and cross-checks.
 * Parsing itself is the shared table machinery in schema.c. */
#include "spec/config.h"

#include "cleanup.h"
#include "fileio.h"
#include "listenaddr.h"
#include "spec/schema.h"
#include "util.h"

#include <arpa/inet.h>
#include <pwd.h>
#include <sys/un.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONFIG_MAX_FILE (1u << 20)

static const char *const accel_names[] = {"auto", "kvm", "tcg", NULL};
static const char *const socket_access_names[] = {"group", "everyone", NULL};
static const char *const level_names[] = {"error", "warning", "info", "debug", NULL};

/* "" (the system's) or an absolute directory without a comma: its paths go
 * into QEMU options. */
static int check_firmware_dir(const char *v, char *why, size_t size) {
    if (*v && (v[0] != '/' || strchr(v, ','))) {
        snprintf(why, size, "expected \"\" or an absolute path without a comma, got '%s'", v);
        return -EINVAL;
    }
    return 0;
}
/* A user name, or root (QEMU keeps root: the explicit opt-out).  Whether
 * the node has that user is checked last, in validate(). */
static int check_run_as(const char *v, char *why, size_t size) {
    if (!*v) {
        snprintf(why, size, "expected a user name (default " SV_QEMU_USER "), or root to leave QEMU root "
                            "(not recommended)");
        return -EINVAL;
    }
    return 0;
}
/* "" (off) or an address the metrics server can listen on. */
static int check_metrics_listen(const char *v, char *why, size_t size) {
    qv_listen_addr a;
    return *v ? qv_listen_addr_parse(v, &a, why, size) : 0;
}
static const qv_log_level level_values[] = {QV_LOG_ERR, QV_LOG_WARNING, QV_LOG_INFO, QV_LOG_DEBUG};

_Static_assert(SV_NO_QUOTA == SV_UNSET, "an unset quota is the schema's unset value");

#define P(field) offsetof(sv_pool, field)
static const sv_key pool_keys[] = {
    {NULL, "cpus", SV_K_UINT, P(cpus), NULL, 0, 1u << 20, NULL, false, false, NULL, NULL, true},
    {NULL, "memory", SV_K_SIZE, P(memory), NULL, 0, 1ull << 50, NULL, false, false, NULL, NULL, true},
    {NULL, "gpus", SV_K_UINT, P(gpus), NULL, 0, 1024, NULL, false, false, NULL, NULL, true},
};
static const sv_schema pool_schema = SV_SCHEMA(pool_keys);
static const sv_map pool_map = {&pool_schema, sizeof(sv_pool), P(name), "pool"};

#define S(field) offsetof(sv_storage_pool, field)
static const sv_key storage_pool_keys[] = {
    /* required, except for "default" (instances_dir): checked in validate() */
    {NULL, "path", SV_K_PATH, S(path), NULL, 0, 0, NULL, false, false},
    {NULL, "thin_overcommit", SV_K_BOOL, S(thin_overcommit), "false", 0, 0, NULL, false, false},
};
static const sv_schema storage_pool_schema = SV_SCHEMA(storage_pool_keys);
static const sv_map storage_pool_map = {&storage_pool_schema, sizeof(sv_storage_pool), S(name), "storage pool"};

#define F(field) offsetof(sv_config, field)

/* section, name, kind, field, default, min, max, enum names, allow empty, restart */
static const sv_key keys[] = {
    {NULL, "log_level", SV_K_ENUM, F(log_level), "info", 0, 0, level_names, false, false},

    {"paths", "state_dir", SV_K_PATH, F(state_dir), "/var/lib/qvisor", 0, 0, NULL, false, true},
    {"paths", "images_dir", SV_K_PATH, F(images_dir), NULL, 0, 0, NULL, false, true},
    {"paths", "instances_dir", SV_K_PATH, F(instances_dir), NULL, 0, 0, NULL, false, true},
    {"paths", "run_dir", SV_K_PATH, F(run_dir), "/run/qvisor", 0, 0, NULL, false, true},
    {"paths", "sysfs_root", SV_K_PATH, F(sysfs_root), "/", 0, 0, NULL, false, true},
    {"paths", "firmware_dir", SV_K_STRING, F(firmware_dir), "", 0, 0, NULL, true, false, check_firmware_dir},

    {"daemon", "socket", SV_K_PATH, F(socket_path), NULL, 0, 0, NULL, false, true},
    {"daemon", "socket_group", SV_K_STRING, F(socket_group), "", 0, 0, NULL, true, true},
    {"daemon", "socket_access", SV_K_ENUM, F(socket_access), "group", 0, 0, socket_access_names, false, true},
    {"daemon", "max_request_size", SV_K_SIZE, F(max_request_size), "1M", 4096, 64ull << 20, NULL, false, false},
    {"daemon", "max_clients", SV_K_UINT, F(max_clients), "64", 1, 4096, NULL, false, false},
    {"daemon", "request_line_timeout", SV_K_DURATION, F(ctl_line_timeout_ms), "5s", 100, 600ull * 1000, NULL, false, true},
    {"daemon", "idle_timeout", SV_K_DURATION, F(ctl_idle_timeout_ms), "60s", 100, 24ull * 3600 * 1000, NULL, false, true},

    {"metrics", "listen", SV_K_STRING, F(metrics_listen), "", 0, 0, NULL, true, true, check_metrics_listen},

    {"qemu", "binary", SV_K_STRING, F(qemu_binary), "qemu-system-x86_64", 0, 0, NULL, false, false},
    {"qemu", "img_binary", SV_K_STRING, F(qemu_img_binary), "qemu-img", 0, 0, NULL, false, false},
    {"qemu", "accelerator", SV_K_ENUM, F(accelerator), "auto", 0, 0, accel_names, false, false},
    {"qemu", "run_as", SV_K_STRING, F(run_as), SV_QEMU_USER, 0, 0, NULL, true, false, check_run_as},

    {"vm_defaults", "cpus", SV_K_UINT, F(vm_cpus), "2", 1, 1024, NULL, false, false},
    {"vm_defaults", "memory", SV_K_SIZE, F(vm_memory), "2G", 16ull << 20, 16ull << 40, NULL, false, false},
    {"vm_defaults", "disk", SV_K_SIZE, F(vm_disk), "20G", 1ull << 20, 64ull << 40, NULL, false, false},
    {"vm_defaults", "stop_timeout", SV_K_DURATION, F(stop_timeout_ms), "60s", 1000, 24ull * 3600 * 1000, NULL, false, false},
    {"vm_defaults", "kill_timeout", SV_K_DURATION, F(kill_timeout_ms), "10s", 0, 3600ull * 1000, NULL, false, false},

    {"vfio", "sysfs_timeout", SV_K_DURATION, F(vfio_sysfs_timeout_ms), "10s", 100, 600ull * 1000, NULL, false, false},

    {"network", "nat_bridge", SV_K_IFNAME, F(nat_bridge), "qvbr0", 0, 0, NULL, false, false},
    {"network", "nat_subnet", SV_K_CIDR4, F(nat_subnet), "192.168.100.0/24", 8, 30, NULL, false, false},
    {"network", "nat_gateway", SV_K_IPV4, F(nat_gateway), "192.168.100.1", 0, 0, NULL, false, false},
    {"network", "overlay_bridge", SV_K_IFNAME, F(overlay_bridge), "", 0, 0, NULL, true, false},
    {"network", "dns", SV_K_IPLIST, F(dns), NULL, 0, 0, NULL, true, false},

    {"resources", "cpu_overcommit", SV_K_RATIO, F(cpu_overcommit), "4.0", 0, 100, NULL, false, false},
    {"resources", "memory_overcommit", SV_K_RATIO, F(memory_overcommit), "1.0", 0, 100, NULL, false, false},
    {"resources", "default_storage_pool", SV_K_NAME, F(default_storage_pool), "default", 0, 0, NULL, false, false},

    {NULL, "pools", SV_K_MAP, F(pools), NULL, 0, 0, NULL, false, false, NULL, &pool_map},
    {NULL, "storage_pools", SV_K_MAP, F(storage_pools), NULL, 0, 0, NULL, false, false, NULL, &storage_pool_map},
};

/* The table entry of a top-level key. */
static const sv_key *top_key(const char *name) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(keys); i++)
        if (!keys[i].section && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    abort(); /* a name from this file that is not in its table */
}

static const sv_schema schema = SV_SCHEMA(keys);

qv_log_level sv_config_log_level(const sv_config *c) {
    return level_values[c->log_level];
}

const char *sv_accel_to_string(sv_accel a) {
    return (unsigned)a < 3 ? accel_names[a] : "auto";
}

sv_config *sv_config_ref(const sv_config *c) {
    sv_config *m = (sv_config *)c; /* the count is the only field that changes */
    __atomic_add_fetch(&m->refs_, 1, __ATOMIC_RELAXED);
    return m;
}

void sv_config_free(sv_config *c) {
    if (!c)
        return;
    /* refs_ counts the references beyond the first: the holder that finds
     * it at 0 is the last one */
    if (__atomic_fetch_sub(&c->refs_, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    sv_schema_free_fields(&schema, c);
    free(c->source);
    free(c);
}

const sv_pool *sv_config_pool(const sv_config *c, const char *name) {
    for (size_t i = 0; c->pools && c->pools[i]; i++)
        if (strcmp(c->pools[i]->name, name) == 0)
            return c->pools[i];
    return NULL;
}

const sv_storage_pool *sv_config_storage_pool(const sv_config *c, const char *name) {
    for (size_t i = 0; c->storage_pools && c->storage_pools[i]; i++)
        if (strcmp(c->storage_pools[i]->name, name) == 0)
            return c->storage_pools[i];
    return NULL;
}

/* Defaults that follow other keys: STATE_DIR/images, RUN_DIR/qvisor.sock,
 * the "default" pools (the storage one at INSTANCES_DIR). */
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
    int r;
    if (!sv_config_pool(c, "default") && (r = sv_schema_map_add(top_key("pools"), c, "default", true, NULL)) < 0)
        return r;
    sv_storage_pool *def = (sv_storage_pool *)sv_config_storage_pool(c, "default");
    if (!def && (r = sv_schema_map_add(top_key("storage_pools"), c, "default", true, (void **)&def)) < 0)
        return r;
    if (!def->path && !(def->path = strdup(c->instances_dir)))
        return -ENOMEM;
    return 0;
}

/* "/a/b/" and "/a/b" are one directory. */
static bool same_dir(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    while (la > 1 && a[la - 1] == '/')
        la--;
    while (lb > 1 && b[lb - 1] == '/')
        lb--;
    return la == lb && memcmp(a, b, la) == 0;
}

static int validate_storage_pools(const char *name, const sv_config *c, qv_error *err) {
    for (size_t i = 0; c->storage_pools[i]; i++) {
        const sv_storage_pool *p = c->storage_pools[i];
        if (!p->path)
            return qv_error_set(err, QV_ECONFIG, "%s: storage_pools.%s.path: required (the pool's directory)", name,
                                p->name);
        for (size_t j = 0; j < i; j++)
            if (same_dir(p->path, c->storage_pools[j]->path))
                return qv_error_set(err, QV_ECONFIG, "%s: storage_pools.%s.path: %s is already storage pool '%s'",
                                    name, p->name, p->path, c->storage_pools[j]->name);
    }
    if (!sv_config_storage_pool(c, c->default_storage_pool)) {
        char have[1024];
        sv_schema_render(top_key("storage_pools"), c, have, sizeof have);
        return qv_error_set(err, QV_ECONFIG, "%s: resources.default_storage_pool: no storage pool '%s' (there are: %s)",
                            name, c->default_storage_pool, have);
    }
    return 0;
}

/* Cross-field checks, after everything is set. */
static int validate(const char *name, const sv_config *c, qv_error *err) {
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
        return qv_error_set(err, QV_ECONFIG,
                            "%s: network.nat_gateway: %s is not a usable host address in network.nat_subnet %s", name,
                            c->nat_gateway, c->nat_subnet);
    /* a socket path longer than sun_path would only fail when the daemon binds */
    if (strlen(c->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return qv_error_set(err, QV_ECONFIG,
                            "%s: daemon.socket: %s is %zu bytes, longer than a unix socket path can be (%zu)", name,
                            c->socket_path, strlen(c->socket_path), sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    if (c->overlay_bridge[0] && strcmp(c->overlay_bridge, c->nat_bridge) == 0)
        return qv_error_set(err, QV_ECONFIG, "%s: network.overlay_bridge: must differ from network.nat_bridge (%s)",
                            name, c->nat_bridge);
    int r = validate_storage_pools(name, c, err);
    if (r < 0)
        return r;
    /* QEMU would fail at every start (-runas) with a user the node lacks;
     * last, so that every other check still runs on a node without it */
    if (!getpwnam(c->run_as))
        return qv_error_set(err, QV_ECONFIG,
                            "%s: qemu.run_as: no user named '%s' on this node (scripts/setup creates " SV_QEMU_USER
                            "; or set qemu.run_as to another user, or to root: not recommended)",
                            name, c->run_as);
    return 0;
}

sv_config *sv_config_new_default(void) {
    sv_config *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (sv_schema_apply_defaults(&schema, c) < 0 || set_derived(c) < 0) {
        sv_config_free(c);
        return NULL;
    }
    return c;
}

sv_config *sv_config_dup(const sv_config *src) {
    sv_config *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    *c = *src;
    c->source = NULL;
    c->refs_ = 0;
    int r = sv_schema_copy_fields(&schema, c, src);
    if (r == 0 && src->source && !(c->source = strdup(src->source)))
        r = -ENOMEM;
    if (r < 0) {
        sv_config_free(c);
        return NULL;
    }
    return c;
}

int sv_config_parse(const char *name, const char *data, size_t len, sv_config **ret, qv_error *err) {
    _cleanup_(sv_config_freep) sv_config *c = calloc(1, sizeof *c);
    if (!c)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (sv_schema_apply_defaults(&schema, c) < 0)
        return qv_error_set(err, EINVAL, "built-in defaults are invalid");
    int r = sv_schema_load_yaml(&schema, c, name, data, len, QV_ECONFIG, err);
    if (r < 0)
        return r;
    if (set_derived(c) < 0)
        return qv_error_set(err, ENOMEM, "out of memory");
    r = validate(name, c, err);
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
    int r = qv_read_regular_file(path, CONFIG_MAX_FILE, &data, &len);
    if (r == -EFBIG)
        return qv_error_set(err, QV_ECONFIG, "%s: larger than %u bytes", path, CONFIG_MAX_FILE);
    if (r == -EINVAL)
        return qv_error_set(err, QV_ECONFIG, "config %s is not a regular file", path);
    if (r < 0)
        return qv_error_set(err, r, "cannot read config %s: %s", path, strerror(-r));
    return sv_config_parse(path, data, len, ret, err);
}

int sv_config_load_or_default(const char *path, bool named, sv_config **ret, bool *ret_defaulted, qv_error *err) {
    bool missing = !named && access(path, F_OK) < 0 && errno == ENOENT;
    if (ret_defaulted)
        *ret_defaulted = missing;
    if (!missing)
        return sv_config_load(path, ret, err);
    *ret = sv_config_new_default();
    return *ret ? 0 : qv_error_set(err, ENOMEM, "out of memory");
}

int sv_config_from_json(json_t *j, sv_config **ret, qv_error *err) {
    _cleanup_(sv_config_freep) sv_config *c = calloc(1, sizeof *c);
    json_t *copy = json_deep_copy(j);
    if (!c || !copy) {
        json_decref(copy);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    const char *source = json_string_value(json_object_get(j, "source"));
    json_object_del(copy, "source");
    int r = sv_schema_apply_defaults(&schema, c);
    if (r == 0)
        r = sv_schema_load_json(&schema, c, copy, "config", QV_ECONFIG, err);
    json_decref(copy);
    if (r < 0)
        return r;
    if (set_derived(c) < 0 || (source && !(c->source = strdup(source))))
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret = TAKE_PTR(c);
    return 0;
}

void sv_config_visit(const sv_config *c, sv_config_visit_fn fn, void *userdata) {
    sv_schema_visit(&schema, c, fn, userdata);
}

json_t *sv_config_to_json(const sv_config *c) {
    json_t *root = sv_schema_to_json(&schema, c);
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
        sv_schema_render(&keys[i], old, a, sizeof a);
        sv_schema_render(&keys[i], new_config, b, sizeof b);
        if (strcmp(a, b) == 0)
            continue;
        sv_schema_key_name(&keys[i], name, sizeof name);
        char *grown = realloc(out, len + strlen(name) + 3);
        if (!grown)
            break;
        out = grown;
        len += (size_t)sprintf(out + len, "%s%s", len ? ", " : "", name);
    }
    return out;
}

int sv_config_keep_restart_keys(sv_config *fresh, const sv_config *running, char **ret_changed) {
    _cleanup_free_ char *changed = sv_config_restart_keys_changed(running, fresh);
    /* the instances directory the new file asked for */
    _cleanup_free_ char *asked = fresh->instances_dir ? strdup(fresh->instances_dir) : NULL;
    if (fresh->instances_dir && !asked)
        return -ENOMEM;
    for (size_t i = 0; changed && i < QV_ARRAY_SIZE(keys); i++) {
        if (!keys[i].restart)
            continue;
        if (sv_schema_copy_key(&keys[i], fresh, running) < 0)
            return -ENOMEM;
    }
    /* the default storage pool follows the instances_dir in effect */
    sv_storage_pool *def = (sv_storage_pool *)sv_config_storage_pool(fresh, "default");
    if (changed && def && asked && !same_dir(fresh->instances_dir, asked) && same_dir(def->path, asked)) {
        char *kept = strdup(fresh->instances_dir);
        if (kept) {
            free(def->path);
            def->path = kept;
        }
    }
    *ret_changed = TAKE_PTR(changed);
    return 0;
}
