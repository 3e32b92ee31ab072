/* Node config parser: defaults, the example file, every error class with its
 * file:line:column, reload bookkeeping. */
#include "testlib.h"

#include "spec/config.h"
#include "cleanup.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse(const char *text, sv_config **ret, qv_error *err) {
    return sv_config_parse("t.yaml", text, strlen(text), ret, err);
}

/* Parses text expecting failure; checks the message starts with prefix. */
static void expect_error(const char *text, const char *prefix) {
    sv_config *c = NULL;
    qv_error err = {0};
    int r = parse(text, &c, &err);
    if (r != -QV_ECONFIG || strncmp(err.msg, prefix, strlen(prefix)) != 0)
        fail_msg("input <<%s>>: got %d '%s', want prefix '%s'", text, r, err.msg, prefix);
    assert_null(c);
    assert_int_equal(err.code, QV_ECONFIG);
}

static void test_defaults(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(parse("", &c, &err), 0);
    assert_string_equal(c->state_dir, "/var/lib/qvisor");
    assert_string_equal(c->images_dir, "/var/lib/qvisor/images");
    assert_string_equal(c->instances_dir, "/var/lib/qvisor/instances");
    assert_string_equal(c->socket_path, "/run/qvisor/qvisor.sock");
    assert_int_equal(c->accelerator, SV_ACCEL_AUTO);
    assert_true(c->vm_memory == 2ull << 30);
    assert_true(c->stop_timeout_ms == 60000);
    assert_true(c->max_request_size == 1u << 20);
    assert_string_equal(c->nat_subnet, "192.168.100.0/24");
    assert_non_null(c->dns);
    assert_null(c->dns[0]);
    assert_int_equal(sv_config_log_level(c), QV_LOG_INFO);
    assert_string_equal(c->run_as, "qvisor-qemu"); /* QEMU is unprivileged unless told otherwise */
    sv_config_free(c);
    c = NULL;
    /* root is the explicit opt-out */
    assert_int_equal(parse("qemu:\n  run_as: root\n", &c, &err), 0);
    assert_string_equal(c->run_as, "root");
}

static void test_derived_paths_follow_state_dir(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(parse("paths:\n  state_dir: /srv/q/\n  run_dir: /tmp/r\n", &c, &err), 0);
    assert_string_equal(c->images_dir, "/srv/q/images");
    assert_string_equal(c->instances_dir, "/srv/q/instances");
    assert_string_equal(c->socket_path, "/tmp/r/qvisor.sock");
}

static void test_full_values(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *c = NULL;
    qv_error err = {0};
    const char *y = "log_level: debug\n"
                    "qemu:\n  accelerator: tcg\n  binary: /usr/bin/qemu-system-x86_64\n"
                    "vm_defaults:\n  cpus: 8\n  memory: 16G\n  stop_timeout: 2m\n  kill_timeout: 500ms\n"
                    "network:\n  nat_subnet: 10.9.0.0/16\n  nat_gateway: 10.9.0.1\n  dns: [10.9.0.53, '2001:db8::53']\n"
                    "daemon:\n  socket_group: qvisor\n  socket_access: everyone\n  max_clients: 4096\n";
    assert_int_equal(parse(y, &c, &err), 0);
    assert_int_equal(sv_config_log_level(c), QV_LOG_DEBUG);
    assert_int_equal(c->accelerator, SV_ACCEL_TCG);
    assert_true(c->vm_cpus == 8);
    assert_true(c->vm_memory == 16ull << 30);
    assert_true(c->stop_timeout_ms == 120000);
    assert_true(c->kill_timeout_ms == 500);
    assert_string_equal(c->dns[0], "10.9.0.53");
    assert_string_equal(c->dns[1], "2001:db8::53");
    assert_null(c->dns[2]);
    assert_string_equal(c->socket_group, "qvisor");
    assert_int_equal(c->socket_access, SV_SOCKET_EVERYONE);
    assert_true(c->max_clients == 4096);
}

/* The shipped example documents every key with its default: parsing it must
 * give exactly the built-in defaults, and every key must appear in it. */
static void collect_json_equal(void **state) {
    (void)state;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.example.yaml", getenv("QVISOR_SOURCE_ROOT"));
    _cleanup_(sv_config_freep) sv_config *ex = NULL;
    _cleanup_(sv_config_freep) sv_config *def = NULL;
    qv_error err = {0};
    if (sv_config_load(path, &ex, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(parse("{}", &def, &err), 0);
    json_t *a = sv_config_to_json(ex), *b = sv_config_to_json(def);
    json_object_del(a, "source");
    json_object_del(b, "source");
    char *sa = json_dumps(a, JSON_SORT_KEYS), *sb = json_dumps(b, JSON_SORT_KEYS);
    assert_string_equal(sa, sb);
    free(sa);
    free(sb);
    json_decref(a);
    json_decref(b);
}

static void count_keys(const char *key, const char *value, void *userdata) {
    (void)value;
    char *text = userdata;
    const char *leaf = strrchr(key, '.');
    leaf = leaf ? leaf + 1 : key;
    /* two spaces of indentation per level: "pools.default.cpus" is "\n    cpus:" */
    int depth = 0;
    for (const char *p = key; *p; p++)
        depth += *p == '.';
    char pat[128];
    snprintf(pat, sizeof pat, "\n%*s%s:", 2 * depth, "", leaf);
    if (!strstr(text, pat))
        fail_msg("config.example.yaml does not document %s", key);
}

static void test_example_documents_every_key(void **state) {
    (void)state;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.example.yaml", getenv("QVISOR_SOURCE_ROOT"));
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char text[65536];
    size_t n = fread(text + 1, 1, sizeof text - 2, f);
    fclose(f);
    text[0] = '\n';
    text[n + 1] = '\0';
    _cleanup_(sv_config_freep) sv_config *c = sv_config_new_default();
    sv_config_visit(c, count_keys, text);
}

#define LISTEN_ERR \
    "t.yaml:2:11: metrics.listen: expected IPV4:PORT, [IPV6]:PORT (numeric) or an absolute path for a unix socket, got "

static void test_error_classes(void **state) {
    (void)state;
    expect_error("bogus: 1\n", "t.yaml:1:1: bogus: unknown key");
    expect_error("qemu:\n  accelerator: kvm\n  acclerator: tcg\n", "t.yaml:3:3: qemu.acclerator: unknown key");
    expect_error("qemu:\n  binary: a\n  binary: b\n", "t.yaml:3:3: qemu.binary: repeated key");
    expect_error("qemu: {}\nqemu: {}\n", "t.yaml:2:1: qemu: repeated key");
    expect_error("qemu:\n  accelerator: fast\n", "t.yaml:2:16: qemu.accelerator: expected one of auto, kvm, tcg");
    expect_error("vm_defaults:\n  cpus: [1]\n", "t.yaml:2:9: vm_defaults.cpus: expected a single value, got a list");
    expect_error("vm_defaults:\n  cpus: 0\n", "t.yaml:2:9: vm_defaults.cpus: 0 is out of range (1 to 1024)");
    expect_error("vm_defaults:\n  cpus: two\n", "t.yaml:2:9: vm_defaults.cpus: expected a whole number");
    expect_error("vm_defaults:\n  memory: 100\n", "t.yaml:2:11: vm_defaults.memory: expected a size with a unit");
    expect_error("vm_defaults:\n  memory: 1M\n", "t.yaml:2:11: vm_defaults.memory: 1M is out of range (16M to 16T)");
    expect_error("vm_defaults:\n  stop_timeout: soon\n", "t.yaml:2:17: vm_defaults.stop_timeout: expected a duration");
    expect_error("paths:\n  state_dir: var/lib\n", "t.yaml:2:14: paths.state_dir: must be an absolute path");
    expect_error("paths: /x\n", "t.yaml:1:8: paths: expected a mapping of settings, got a single value");
    expect_error("paths:\n  state_dir:\n", "t.yaml:2:13: paths.state_dir: has no value");
    expect_error("network:\n  nat_bridge: a-very-long-bridge-name\n", "t.yaml:2:15: network.nat_bridge: 'a-very-long-bridge-name' is not a valid interface name");
    expect_error("network:\n  nat_subnet: 10.0.0.1/24\n", "t.yaml:2:15: network.nat_subnet: '10.0.0.1/24' has host bits set");
    expect_error("network:\n  nat_subnet: 10.0.0.0/31\n", "t.yaml:2:15: network.nat_subnet: prefix length");
    expect_error("network:\n  nat_gateway: 10.0.0.1\n", "t.yaml: network.nat_gateway: 10.0.0.1 is not a usable host address");
    expect_error("network:\n  dns: 1.1.1.1\n", "t.yaml:2:8: network.dns: expected a list of addresses");
    expect_error("network:\n  dns: [resolver]\n", "t.yaml:2:9: network.dns: 'resolver' is not an IP address");
    expect_error("- a\n- b\n", "t.yaml:1:1: expected a mapping of settings, got a list");
    expect_error("qemu:\n  binary: [unclosed\n", "t.yaml:3:1: YAML syntax error");
    expect_error("log_level: info\n---\nlog_level: debug\n", "t.yaml:3:1: more than one YAML document");
    expect_error("daemon:\n  max_request_size: 1K\n", "t.yaml:2:21: daemon.max_request_size: 1K is out of range");
    /* settings that parse but could never work on this node */
    expect_error("vm_defaults:\n  stop_timeout: 0s\n", "t.yaml:2:17: vm_defaults.stop_timeout: 0s is out of range");
    expect_error("qemu:\n  run_as: no-such-user-qv\n", "t.yaml: qemu.run_as: no user named 'no-such-user-qv' on this node "
                 "(scripts/setup creates qvisor-qemu; or set qemu.run_as to another user, or to root: not recommended)");
    /* "" used to mean "QEMU stays root": that now has to be said (root) */
    expect_error("qemu:\n  run_as: \"\"\n", "t.yaml:2:11: qemu.run_as: expected a user name (default qvisor-qemu)");
    /* metrics.listen: numeric addresses with a port, or an absolute path */
    expect_error("metrics:\n  listen: localhost:9641\n",
                 "t.yaml:2:11: metrics.listen: expected IPV4:PORT, [IPV6]:PORT (numeric) or an absolute path for a "
                 "unix socket, got 'localhost:9641' (not a numeric IPv4 address: host names are not looked up)");
    expect_error("metrics:\n  listen: 127.0.0.1\n", "t.yaml:2:11: metrics.listen: expected IPV4:PORT");
    expect_error("metrics:\n  listen: 127.0.0.1:0\n", LISTEN_ERR "'127.0.0.1:0' (the port must be 1-65535)");
    expect_error("metrics:\n  listen: \"::1:9641\"\n", LISTEN_ERR "'::1:9641' (an IPv6 address needs brackets)");
    expect_error("metrics:\n  listen: run/metrics.sock\n", "t.yaml:2:11: metrics.listen: expected");
    expect_error("metrics:\n  listen: [127.0.0.1:9641]\n", "t.yaml:2:11: metrics.listen: expected a single value, got a list");
    char long_socket[256];
    snprintf(long_socket, sizeof long_socket, "daemon:\n  socket: /run/%0120d.sock\n", 0);
    expect_error(long_socket, "t.yaml: daemon.socket: /run/");
    expect_error("paths:\n  run_dir: /run/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 "t.yaml: daemon.socket: /run/aaaaaaaa");
}

static void test_load_fifo(void **state) {
    (void)state;
    /* a FIFO named as the config: refused at once, never a read that waits
     * for a writer */
    char dir[] = "/tmp/qv-config-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/fifo.yaml", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(sv_config_load(path, &c, &err), -QV_ECONFIG);
    assert_non_null(strstr(err.msg, "is not a regular file"));
    assert_null(c);
    unlink(path);
    rmdir(dir);
}

static void test_load_missing_file(void **state) {
    (void)state;
    sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(sv_config_load("/nonexistent/qvisor.yaml", &c, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/qvisor.yaml"));
    assert_null(c);
}

static void test_json_round_trip(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *a = NULL;
    _cleanup_(sv_config_freep) sv_config *b = NULL;
    qv_error err = {0};
    const char *y = "log_level: debug\nvm_defaults:\n  memory: 3G\n  stop_timeout: 1500ms\n"
                    "network:\n  dns: [10.0.0.53]\npaths:\n  state_dir: /srv/q\n";
    assert_int_equal(parse(y, &a, &err), 0);
    json_t *j = sv_config_to_json(a);
    assert_int_equal(sv_config_from_json(j, &b, &err), 0);
    json_t *k = sv_config_to_json(b);
    assert_true(json_equal(j, k));
    assert_string_equal(b->source, "t.yaml");
    assert_string_equal(b->images_dir, "/srv/q/images");
    json_decref(j);
    json_decref(k);
}

static void test_load_or_default(void **state) {
    (void)state;
    sv_config *c = NULL;
    qv_error err = {0};
    bool defaulted = false;
    /* the default path missing: built-in defaults */
    assert_int_equal(sv_config_load_or_default("/nonexistent/config.yaml", false, &c, &defaulted, &err), 0);
    assert_true(defaulted);
    assert_null(c->source);
    sv_config_free(c);
    c = NULL;
    /* a path the user named must exist */
    assert_int_equal(sv_config_load_or_default("/nonexistent/config.yaml", true, &c, &defaulted, &err), -ENOENT);
    assert_false(defaulted);
    assert_null(c);
}

static void test_restart_keys(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *a = NULL;
    _cleanup_(sv_config_freep) sv_config *b = NULL;
    qv_error err = {0};
    assert_int_equal(parse("log_level: info\n", &a, &err), 0);
    assert_int_equal(parse("log_level: debug\npaths:\n  run_dir: /tmp/x\n", &b, &err), 0);
    char *changed = sv_config_restart_keys_changed(a, b);
    assert_non_null(changed);
    assert_string_equal(changed, "paths.run_dir, daemon.socket");
    free(changed);
    assert_null(sv_config_restart_keys_changed(a, a));
    /* the metrics endpoint is bound once, at start */
    _cleanup_(sv_config_freep) sv_config *m = NULL;
    assert_int_equal(parse("metrics:\n  listen: \"[::1]:9641\"\n", &m, &err), 0);
    assert_string_equal(m->metrics_listen, "[::1]:9641");
    assert_string_equal(a->metrics_listen, "");
    changed = sv_config_restart_keys_changed(a, m);
    assert_string_equal(changed, "metrics.listen");
    free(changed);
    assert_int_equal(sv_config_keep_restart_keys(m, a, &changed), 0);
    assert_string_equal(changed, "metrics.listen");
    free(changed);
    assert_string_equal(m->metrics_listen, "");
}

static void test_keep_restart_keys_default_storage_pool(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *running = NULL;
    _cleanup_(sv_config_freep) sv_config *fresh = NULL;
    qv_error err = {0};
    assert_int_equal(parse("paths:\n  state_dir: /old\n", &running, &err), 0);
    assert_int_equal(parse("paths:\n  state_dir: /new\n", &fresh, &err), 0);
    char *changed = NULL;
    assert_int_equal(sv_config_keep_restart_keys(fresh, running, &changed), 0);
    assert_non_null(changed);
    free(changed);
    /* the daemon keeps /old/instances until it restarts, and so does the
     * storage pool that lives there */
    assert_string_equal(fresh->instances_dir, "/old/instances");
    assert_string_equal(sv_config_storage_pool(fresh, "default")->path, "/old/instances");
    /* the running config, which operations may still hold, is not touched */
    assert_string_equal(running->instances_dir, "/old/instances");
    assert_string_equal(running->state_dir, "/old");
    assert_string_equal(sv_config_storage_pool(running, "default")->path, "/old/instances");
}

static void test_references(void **state) {
    (void)state;
    sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(parse("paths:\n  state_dir: /srv/q\n", &c, &err), 0);
    /* an operation's reference outlives the loader's */
    sv_config *op = sv_config_ref(c);
    assert_ptr_equal(op, c);
    sv_config *op2 = sv_config_ref(c);
    sv_config_free(c);
    sv_config_free(op2);
    assert_string_equal(op->state_dir, "/srv/q"); /* still whole (ASan would see a use after free) */
    /* a copy has its own count */
    sv_config *copy = sv_config_dup(op);
    sv_config_free(op);
    assert_string_equal(copy->state_dir, "/srv/q");
    sv_config_free(copy);
}

static void test_resources_defaults(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(parse("paths:\n  state_dir: /srv/q\n", &c, &err), 0);
    assert_true(c->cpu_overcommit == 4.0);
    assert_true(c->memory_overcommit == 1.0);
    assert_string_equal(c->default_storage_pool, "default");
    /* the pools "default" exist without being configured */
    assert_non_null(c->pools[0]);
    assert_null(c->pools[1]);
    const sv_pool *p = sv_config_pool(c, "default");
    assert_ptr_equal(p, c->pools[0]);
    assert_true(p->cpus == SV_NO_QUOTA && p->memory == SV_NO_QUOTA && p->gpus == SV_NO_QUOTA);
    assert_null(c->storage_pools[1]);
    const sv_storage_pool *sp = sv_config_storage_pool(c, "default");
    assert_non_null(sp);
    assert_string_equal(sp->path, "/srv/q/instances");
    assert_false(sp->thin_overcommit);
    assert_null(sv_config_pool(c, "batch"));
    assert_null(sv_config_storage_pool(c, "fast"));
}

static void test_pools(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *c = NULL;
    qv_error err = {0};
    const char *y = "resources:\n"
                    "  cpu_overcommit: 2.5\n"
                    "  memory_overcommit: 1\n"
                    "  default_storage_pool: fast\n"
                    "pools:\n"
                    "  batch:\n"
                    "    cpus: 32\n"
                    "    memory: 128G\n"
                    "    gpus: 0\n"
                    "  web:\n"
                    "    memory: 16G\n"
                    "storage_pools:\n"
                    "  fast:\n"
                    "    path: /srv/nvme\n"
                    "    thin_overcommit: true\n"
                    "  default:\n"
                    "    thin_overcommit: true\n";
    if (parse(y, &c, &err) < 0)
        fail_msg("%s", err.msg);
    assert_true(c->cpu_overcommit == 2.5);
    assert_true(c->memory_overcommit == 1.0);
    /* "default" comes first when the config does not list it */
    assert_string_equal(c->pools[0]->name, "default");
    assert_string_equal(c->pools[1]->name, "batch");
    assert_string_equal(c->pools[2]->name, "web");
    assert_null(c->pools[3]);
    const sv_pool *b = sv_config_pool(c, "batch");
    assert_true(b->cpus == 32 && b->memory == 128ull << 30 && b->gpus == 0);
    const sv_pool *w = sv_config_pool(c, "web");
    assert_true(w->cpus == SV_NO_QUOTA && w->memory == 16ull << 30 && w->gpus == SV_NO_QUOTA);
    /* a listed "default" keeps its place and gets INSTANCES_DIR as its path */
    assert_string_equal(c->storage_pools[0]->name, "fast");
    assert_string_equal(c->storage_pools[1]->name, "default");
    assert_null(c->storage_pools[2]);
    assert_string_equal(c->storage_pools[1]->path, "/var/lib/qvisor/instances");
    assert_true(c->storage_pools[1]->thin_overcommit);
    assert_string_equal(sv_config_storage_pool(c, "fast")->path, "/srv/nvme");
    assert_string_equal(c->default_storage_pool, "fast");

    /* a deep copy */
    _cleanup_(sv_config_freep) sv_config *d = sv_config_dup(c);
    assert_non_null(d);
    assert_ptr_not_equal(d->pools, c->pools);
    assert_ptr_not_equal(d->pools[1], c->pools[1]);
    assert_string_equal(d->pools[1]->name, "batch");
    assert_true(d->pools[1]->cpus == 32);
    assert_ptr_not_equal(d->storage_pools[0]->path, c->storage_pools[0]->path);
    assert_string_equal(d->storage_pools[0]->path, "/srv/nvme");
    assert_true(d->cpu_overcommit == 2.5);

    /* JSON: stable keys, unset quotas as null, and back */
    json_t *j = sv_config_to_json(c);
    json_t *res = json_object_get(j, "resources");
    assert_true(json_real_value(json_object_get(res, "cpu_overcommit")) == 2.5);
    assert_string_equal(json_string_value(json_object_get(res, "default_storage_pool")), "fast");
    json_t *jb = json_object_get(json_object_get(j, "pools"), "batch");
    assert_true(json_integer_value(json_object_get(jb, "cpus")) == 32);
    assert_string_equal(json_string_value(json_object_get(jb, "memory")), "128G");
    assert_true(json_is_null(json_object_get(json_object_get(json_object_get(j, "pools"), "web"), "cpus")));
    json_t *jf = json_object_get(json_object_get(j, "storage_pools"), "fast");
    assert_string_equal(json_string_value(json_object_get(jf, "path")), "/srv/nvme");
    assert_true(json_is_true(json_object_get(jf, "thin_overcommit")));
    _cleanup_(sv_config_freep) sv_config *back = NULL;
    assert_int_equal(sv_config_from_json(j, &back, &err), 0);
    json_t *k = sv_config_to_json(back);
    assert_true(json_equal(j, k));
    assert_true(sv_config_pool(back, "web")->cpus == SV_NO_QUOTA);
    json_decref(j);
    json_decref(k);
}

static void visit_pools(const char *key, const char *value, void *userdata) {
    char *out = userdata;
    if (strncmp(key, "pools.", 6) != 0 && strncmp(key, "storage_pools.", 14) != 0 && strncmp(key, "resources.", 10) != 0)
        return;
    size_t n = strlen(out);
    snprintf(out + n, 2048 - n, "%s=%s\n", key, value);
}

static void test_pools_visit(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *c = NULL;
    qv_error err = {0};
    assert_int_equal(parse("pools:\n  gpu:\n    gpus: 2\n", &c, &err), 0);
    char out[2048] = "";
    sv_config_visit(c, visit_pools, out);
    assert_string_equal(out, "resources.cpu_overcommit=4.0\n"
                             "resources.memory_overcommit=1.0\n"
                             "resources.default_storage_pool=default\n"
                             "pools.default.cpus=unset\n"
                             "pools.default.memory=unset\n"
                             "pools.default.gpus=unset\n"
                             "pools.gpu.cpus=unset\n"
                             "pools.gpu.memory=unset\n"
                             "pools.gpu.gpus=2\n"
                             "storage_pools.default.path=/var/lib/qvisor/instances\n"
                             "storage_pools.default.thin_overcommit=false\n");
}

static void test_pools_errors(void **state) {
    (void)state;
    expect_error("resources:\n  cpu_overcommit: 0\n",
                 "t.yaml:2:19: resources.cpu_overcommit: 0 is out of range (greater than 0, at most 100)");
    expect_error("resources:\n  memory_overcommit: -1\n",
                 "t.yaml:2:22: resources.memory_overcommit: expected a number like 4 or 1.5, got '-1'");
    expect_error("resources:\n  memory_overcommit: lots\n",
                 "t.yaml:2:22: resources.memory_overcommit: expected a number like 4 or 1.5, got 'lots'");
    expect_error("pools:\n  Batch:\n    cpus: 4\n", "t.yaml:2:3: pools: 'Batch' is not a valid pool name");
    expect_error("pools:\n  ../x: {}\n", "t.yaml:2:3: pools: '../x' is not a valid pool name");
    expect_error("pools:\n  a: {}\n  a: {}\n", "t.yaml:3:3: pools.a: repeated key");
    expect_error("pools:\n  a:\n    cpu: 4\n", "t.yaml:3:5: pools.a.cpu: unknown key");
    expect_error("pools:\n  a:\n    cpus: four\n", "t.yaml:3:11: pools.a.cpus: expected a whole number, got 'four'");
    expect_error("pools:\n  a:\n    cpus: -1\n", "t.yaml:3:11: pools.a.cpus: expected a whole number, got '-1'");
    expect_error("pools:\n  a:\n    memory: 64\n",
                 "t.yaml:3:13: pools.a.memory: expected a size with a unit (like 512M or 20G), got '64'");
    expect_error("pools:\n  a:\n    gpus: 2000\n", "t.yaml:3:11: pools.a.gpus: 2000 is out of range (0 to 1024)");
    expect_error("pools:\n  a: [1]\n", "t.yaml:2:6: pools.a: expected a mapping of settings, got a list");
    expect_error("pools: [a]\n", "t.yaml:1:8: pools: expected a mapping of pool names to settings, got a list");
    expect_error("storage_pools:\n  fast:\n    path: srv\n",
                 "t.yaml:3:11: storage_pools.fast.path: must be an absolute path, got 'srv'");
    expect_error("storage_pools:\n  fast:\n    thin_overcommit: yes\n",
                 "t.yaml:3:22: storage_pools.fast.thin_overcommit: expected true or false, got 'yes'");
    expect_error("storage_pools:\n  fast:\n    thin_overcommit: true\n",
                 "t.yaml: storage_pools.fast.path: required (the pool's directory)");
    expect_error("storage_pools:\n  a:\n    path: /srv/a/\n  b:\n    path: /srv/a\n",
                 "t.yaml: storage_pools.b.path: /srv/a is already storage pool 'a'");
    expect_error("storage_pools:\n  a:\n    path: /var/lib/qvisor/instances\n",
                 "t.yaml: storage_pools.a.path: /var/lib/qvisor/instances is already storage pool 'default'");
    expect_error("storage_pools:\n  My_Pool:\n    path: /srv\n",
                 "t.yaml:2:3: storage_pools: 'My_Pool' is not a valid storage pool name");
    expect_error("resources:\n  default_storage_pool: fast\n",
                 "t.yaml: resources.default_storage_pool: no storage pool 'fast' (there are: default)");
    expect_error("resources:\n  default_storage_pool: Fast\n",
                 "t.yaml:2:25: resources.default_storage_pool: 'Fast' is not a valid name");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_derived_paths_follow_state_dir),
        cmocka_unit_test(test_full_values),
        cmocka_unit_test(collect_json_equal),
        cmocka_unit_test(test_example_documents_every_key),
        cmocka_unit_test(test_error_classes),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_load_fifo),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_load_or_default),
        cmocka_unit_test(test_restart_keys),
        cmocka_unit_test(test_keep_restart_keys_default_storage_pool),
        cmocka_unit_test(test_references),
        cmocka_unit_test(test_resources_defaults),
        cmocka_unit_test(test_pools),
        cmocka_unit_test(test_pools_visit),
        cmocka_unit_test(test_pools_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
