/* Node config parser: defaults, the example file, every error class with its
 * file:line:column, reload bookkeeping. */
#include "testlib.h"

#include "supervisor/config.h"
#include "cleanup.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
                    "daemon:\n  socket_group: qvisor\n  max_clients: 4096\n";
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
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s%s:", strchr(key, '.') ? "  " : "", leaf);
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
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_load_or_default),
        cmocka_unit_test(test_restart_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
