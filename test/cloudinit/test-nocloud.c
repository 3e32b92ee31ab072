/* NoCloud content: golden files, YAML injection, instance-id, checks of
 * user-supplied files, SHA-256.  Regenerate the golden files with
 * CI_GOLDEN_UPDATE=1 (and review the diff). */
#include "testlib.h"

#include "cloudinit/nocloud.h"
#include "cloudinit/sha256.h"
#include "fileio.h"
#include "isoread.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define TS 1700000000

static void golden(const char *name, const ci_blob *b) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", CI_GOLDEN_DIR, name);
    if (getenv("CI_GOLDEN_UPDATE")) {
        assert_int_equal(qv_write_file_atomic(path, b->data, b->len, 0644), 0);
        return;
    }
    char *want;
    size_t len;
    int r = qv_read_file(path, 1 << 20, &want, &len);
    if (r < 0)
        fail_msg("golden file %s: %s", path, strerror(-r));
    if (len != b->len || memcmp(want, b->data, len) != 0)
        fail_msg("%s differs from the golden file.\n--- got ---\n%s\n--- want ---\n%s", name, b->data, want);
    free(want);
}

static const char *const keys[] = {
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx4b2xvbG9sb2xvbG9sb2xvbG9sb2xvbG9sb2xvbG9s alice@laptop",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob",
};
static const char *const pkgs[] = {"qemu-guest-agent", "curl"};
static const char *const cmds[] = {"systemctl enable --now qemu-guest-agent", "echo 'done: yes' > /root/ok"};
static const char *const dns[] = {"10.0.0.1", "fd00::1"};
static const char *const search[] = {"lab.example"};
static const ci_nic nics[] = {
    {.mac = "52:54:00:AB:CD:01", .address = "10.0.0.5/24", .gateway = "10.0.0.1"},
    {.id = "data", .mac = "52:54:00:ab:cd:02", .dhcp4 = true},
    {.mac = "52:54:00:ab:cd:03", .address = "fd00::5/64", .gateway = "fd00::1"},
};

static ci_seed_spec full_spec(void) {
    return (ci_seed_spec){
        .hostname = "web-1",
        .user = "alice",
        .ssh_keys = keys,
        .n_ssh_keys = 2,
        .password_hash = "$6$rounds=4096$salt$hash",
        .packages = pkgs,
        .n_packages = 2,
        .runcmd = cmds,
        .n_runcmd = 2,
        .nics = nics,
        .n_nics = 3,
        .dns_servers = dns,
        .n_dns_servers = 2,
        .dns_search = search,
        .n_dns_search = 1,
    };
}

static void test_golden_full(void **state) {
    (void)state;
    ci_seed_spec spec = full_spec();
    ci_seed seed;
    qv_error err = {0};
    if (ci_seed_build(&spec, &seed, &err) < 0)
        fail_msg("%s", err.msg);
    golden("full.meta-data", &seed.meta_data);
    golden("full.user-data", &seed.user_data);
    golden("full.network-config", &seed.network_config);
    assert_null(seed.vendor_data.data);
    assert_int_equal(strlen(seed.instance_id), 36);
    assert_memory_equal(seed.instance_id, "iid-", 4);
    assert_non_null(strstr(seed.meta_data.data, seed.instance_id));
    ci_seed_done(&seed);
    ci_seed_done(&seed); /* idempotent */
}

static void test_golden_minimal(void **state) {
    (void)state;
    ci_seed_spec spec = {.hostname = "vm1"};
    ci_seed seed;
    qv_error err = {0};
    if (ci_seed_build(&spec, &seed, &err) < 0)
        fail_msg("%s", err.msg);
    golden("minimal.meta-data", &seed.meta_data);
    golden("minimal.user-data", &seed.user_data);
    assert_null(seed.network_config.data);
    ci_iso_file files[CI_SEED_FILES_MAX];
    assert_int_equal(ci_seed_files(&seed, files), 2);
    assert_string_equal(files[0].name, "meta-data");
    assert_string_equal(files[1].name, "user-data");
    ci_seed_done(&seed);
}

/* ---- reading YAML back with libyaml's document API ---- */

typedef struct ydoc {
    yaml_document_t doc;
} ydoc;

static void yload(ydoc *d, const ci_blob *b) {
    yaml_parser_t p;
    assert_true(yaml_parser_initialize(&p));
    yaml_parser_set_input_string(&p, (const unsigned char *)b->data, b->len);
    if (!yaml_parser_load(&p, &d->doc))
        fail_msg("output does not parse: %s\n%s", p.problem, b->data);
    yaml_parser_delete(&p);
}

static yaml_node_t *ymap_get(ydoc *d, yaml_node_t *map, const char *key) {
    assert_int_equal(map->type, YAML_MAPPING_NODE);
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&d->doc, pr->key);
        if (k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(&d->doc, pr->value);
    }
    return NULL;
}
static size_t ymap_len(yaml_node_t *map) {
    return (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
}
static yaml_node_t *yseq_at(ydoc *d, yaml_node_t *seq, size_t i) {
    assert_int_equal(seq->type, YAML_SEQUENCE_NODE);
    assert_true(seq->data.sequence.items.start + i < seq->data.sequence.items.top);
    return yaml_document_get_node(&d->doc, seq->data.sequence.items.start[i]);
}
/* A string for a YAML 1.1 loader: a scalar that is quoted (a plain scalar
 * could resolve to a bool, int, null or date). */
static void assert_ystring(yaml_node_t *n, const char *want) {
    assert_non_null(n);
    assert_int_equal(n->type, YAML_SCALAR_NODE);
    assert_string_equal((char *)n->data.scalar.value, want);
    assert_true(n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE);
}

static void test_yaml_injection(void **state) {
    (void)state;
    const char *evil = "a: b\n- c";
    const char *evil_keys[] = {evil, "x\nssh_pwauth: true", "yes"};
    const char *evil_cmds[] = {"'; reboot #", "\"quoted\" ]} {["};
    const char *evil_dns[] = {"10.0.0.1"};
    ci_nic nic = {.mac = "52:54:00:00:00:01", .address = "10.0.0.2/24"};
    ci_seed_spec spec = {
        .hostname = evil,
        .user = "null",
        .ssh_keys = evil_keys,
        .n_ssh_keys = 3,
        .password_hash = "2024-01-01",
        .packages = (const char *const[]){"0x10"},
        .n_packages = 1,
        .runcmd = evil_cmds,
        .n_runcmd = 2,
        .nics = &nic,
        .n_nics = 1,
        .dns_servers = evil_dns,
        .n_dns_servers = 1,
    };
    ci_seed seed;
    qv_error err = {0};
    if (ci_seed_build(&spec, &seed, &err) < 0)
        fail_msg("%s", err.msg);

    ydoc d;
    yload(&d, &seed.user_data);
    yaml_node_t *root = yaml_document_get_root_node(&d.doc);
    assert_int_equal(root->type, YAML_MAPPING_NODE);
    /* hostname, manage_etc_hosts, users, packages, runcmd: nothing injected */
    assert_int_equal(ymap_len(root), 5);
    assert_null(ymap_get(&d, root, "a"));
    assert_null(ymap_get(&d, root, "ssh_pwauth"));
    assert_ystring(ymap_get(&d, root, "hostname"), evil);
    yaml_node_t *user = yseq_at(&d, ymap_get(&d, root, "users"), 0);
    assert_ystring(ymap_get(&d, user, "name"), "null");
    assert_ystring(ymap_get(&d, user, "passwd"), "2024-01-01");
    yaml_node_t *k = ymap_get(&d, user, "ssh_authorized_keys");
    for (size_t i = 0; i < 3; i++)
        assert_ystring(yseq_at(&d, k, i), evil_keys[i]);
    assert_ystring(yseq_at(&d, ymap_get(&d, root, "packages"), 0), "0x10");
    assert_ystring(yseq_at(&d, ymap_get(&d, root, "runcmd"), 0), evil_cmds[0]);
    assert_ystring(yseq_at(&d, ymap_get(&d, root, "runcmd"), 1), evil_cmds[1]);
    yaml_document_delete(&d.doc);

    yload(&d, &seed.meta_data);
    root = yaml_document_get_root_node(&d.doc);
    assert_int_equal(ymap_len(root), 2);
    assert_ystring(ymap_get(&d, root, "local-hostname"), evil);
    assert_ystring(ymap_get(&d, root, "instance-id"), seed.instance_id);
    yaml_document_delete(&d.doc);

    yload(&d, &seed.network_config);
    root = yaml_document_get_root_node(&d.doc);
    assert_int_equal(ymap_len(root), 2);
    yaml_node_t *v = ymap_get(&d, root, "version");
    assert_string_equal((char *)v->data.scalar.value, "2");
    assert_int_equal(v->data.scalar.style, YAML_PLAIN_SCALAR_STYLE);
    yaml_node_t *eth = ymap_get(&d, ymap_get(&d, root, "ethernets"), "nic0");
    assert_non_null(eth);
    assert_ystring(ymap_get(&d, ymap_get(&d, eth, "match"), "macaddress"), "52:54:00:00:00:01");
    assert_ystring(yseq_at(&d, ymap_get(&d, eth, "addresses"), 0), "10.0.0.2/24");
    assert_ystring(yseq_at(&d, ymap_get(&d, ymap_get(&d, eth, "nameservers"), "addresses"), 0), "10.0.0.1");
    yaml_document_delete(&d.doc);
    ci_seed_done(&seed);
}

static void test_invalid_utf8(void **state) {
    (void)state;
    ci_seed_spec spec = {.hostname = "bad\xff"};
    ci_seed seed;
    qv_error err = {0};
    assert_int_equal(ci_seed_build(&spec, &seed, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "UTF-8"));
    assert_null(seed.meta_data.data);
}

static void iid(const ci_seed_spec *spec, char out[CI_INSTANCE_ID_SIZE]) {
    ci_seed seed;
    qv_error err = {0};
    if (ci_seed_build(spec, &seed, &err) < 0)
        fail_msg("%s", err.msg);
    memcpy(out, seed.instance_id, CI_INSTANCE_ID_SIZE);
    ci_seed_done(&seed);
}

static void test_instance_id(void **state) {
    (void)state;
    ci_seed_spec spec = full_spec();
    char a[CI_INSTANCE_ID_SIZE], b[CI_INSTANCE_ID_SIZE];
    iid(&spec, a);
    iid(&spec, b);
    assert_string_equal(a, b);

    ci_seed_spec s2 = spec;
    s2.hostname = "web-2";
    iid(&s2, b);
    assert_string_not_equal(a, b);

    s2 = spec;
    s2.n_ssh_keys = 1;
    iid(&s2, b);
    assert_string_not_equal(a, b);

    s2 = spec;
    s2.n_nics = 2;
    iid(&s2, b);
    assert_string_not_equal(a, b);

    s2 = spec;
    s2.n_dns_servers = 1;
    iid(&s2, b);
    assert_string_not_equal(a, b);

    s2 = spec;
    s2.vendor_data = "#cloud-config\n{}\n";
    s2.vendor_data_len = strlen(s2.vendor_data);
    iid(&s2, b);
    assert_string_not_equal(a, b);
}

static void expect_spec_error(const ci_seed_spec *spec, const char *needle) {
    ci_seed seed;
    qv_error err = {0};
    int r = ci_seed_build(spec, &seed, &err);
    if (r != -EINVAL || !strstr(err.msg, needle))
        fail_msg("expected EINVAL mentioning '%s', got %d '%s'", needle, r, err.msg);
}

static void test_spec_errors(void **state) {
    (void)state;
    ci_seed_spec s = {0};
    expect_spec_error(&s, "hostname");
    s.hostname = "";
    expect_spec_error(&s, "hostname");
    s.hostname = "vm";
    ci_nic n = {.mac = "52:54:00:00:00:0", .dhcp4 = true};
    s.nics = &n;
    s.n_nics = 1;
    expect_spec_error(&s, "MAC");
    n.mac = "52-54-00-00-00-01";
    expect_spec_error(&s, "MAC");
    n = (ci_nic){.mac = "52:54:00:00:00:01"};
    expect_spec_error(&s, "neither");
    n.address = "10.0.0.5";
    expect_spec_error(&s, "address");
    n.address = "10.0.0.5/33";
    expect_spec_error(&s, "address");
    n.address = "fd00::1/129";
    expect_spec_error(&s, "address");
    n.address = "10.0.0.5/24";
    n.gateway = "gw";
    expect_spec_error(&s, "gateway");
    n.gateway = NULL;
    n.id = "bad id";
    expect_spec_error(&s, "id");
    n.id = NULL;
    ci_nic two[] = {n, n};
    s.nics = two;
    s.n_nics = 2;
    expect_spec_error(&s, "also used");
    s.n_nics = 1;
    s.dns_servers = (const char *const[]){"8.8.8.8", "resolver"};
    s.n_dns_servers = 2;
    expect_spec_error(&s, "dns");
    s.n_dns_servers = 0;
    s.ssh_keys = (const char *const[]){""};
    s.n_ssh_keys = 1;
    expect_spec_error(&s, "ssh_keys[0]");
    s.n_ssh_keys = 0;
    s.user_data = "#cloud-config\n- a\n";
    s.user_data_len = strlen(s.user_data);
    expect_spec_error(&s, "mapping");
}

static void test_network_config_override(void **state) {
    (void)state;
    const char *nc = "version: 2\n# kept verbatim\nethernets:\n  e:\n    match: {name: 'en*'}\n    dhcp6: true\n";
    ci_seed_spec s = {.hostname = "vm", .network_config = nc, .network_config_len = strlen(nc)};
    ci_seed a, b;
    qv_error err = {0};
    assert_int_equal(ci_seed_build(&s, &a, &err), 0);
    assert_int_equal(a.network_config.len, strlen(nc));
    assert_memory_equal(a.network_config.data, nc, strlen(nc));
    /* the instance-id covers it */
    s.network_config_len--;
    assert_int_equal(ci_seed_build(&s, &b, &err), 0);
    assert_string_not_equal(a.instance_id, b.instance_id);
    ci_seed_done(&a);
    ci_seed_done(&b);

    s.network_config = "- a\n";
    s.network_config_len = 4;
    expect_spec_error(&s, "network-config: line 1: the top level must be a mapping");
    ci_nic n = {.mac = "52:54:00:00:00:01", .dhcp4 = true};
    s.nics = &n;
    s.n_nics = 1;
    s.network_config = nc;
    s.network_config_len = strlen(nc);
    expect_spec_error(&s, "exclusive");
}

static void value_ok(int (*check)(const char *, qv_error *), const char *v) {
    qv_error err = {0};
    if (check(v, &err) != 0)
        fail_msg("rejected '%s': %s", v, err.msg);
}
static void value_bad(int (*check)(const char *, qv_error *), const char *v, const char *needle) {
    qv_error err = {0};
    int r = check(v, &err);
    if (r != -EINVAL || !strstr(err.msg, needle))
        fail_msg("'%s': expected EINVAL with '%s', got %d '%s'", v, needle, r, err.msg);
}

static const char ed25519[] =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test";
static const char ecdsa[] = "ecdsa-sha2-nistp256 "
                            "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAjntQ92CYVWRfHS4aJP8pKxfTtOMYBJN0BZ7imZd"
                            "FKsGR+SEhpopwgViwMgZsYVhiwS2uCCcQG0bqOCbNSVGH4= k-ecdsa";
static const char rsa[] = "ssh-rsa "
                          "AAAAB3NzaC1yc2EAAAADAQABAAAAgQDGu2mzpVSR5JKELpMcp+mJHIQ+cgvuHgCYBEqlDV6hYkShdzE85ZimuUnUhJB3q"
                          "TILUYb26AbgmXPqJRC5NaPtqgAT5Y8SGUzCziLbZ0OPxhyUroP9iVSL8S831tPXLdgla4m2mbkIaWilGVcZwhuBuG/RpU1z"
                          "lY9HO0q45eGu5Q==";

static void test_value_checks(void **state) {
    (void)state;
    value_ok(ci_hostname_check, "web-1");
    value_ok(ci_hostname_check, "a");
    value_ok(ci_hostname_check, "Web1.lab.example");
    value_ok(ci_hostname_check, "9");
    char label63[64], label64[65], long_name[260];
    memset(label63, 'a', 63);
    label63[63] = '\0';
    memset(label64, 'a', 64);
    label64[64] = '\0';
    value_ok(ci_hostname_check, label63);
    value_bad(ci_hostname_check, label64, "not a valid host name");
    snprintf(long_name, sizeof long_name, "%s.%s.%s.%s", label63, label63, label63, label63);
    value_bad(ci_hostname_check, long_name, "longer than 253");
    value_bad(ci_hostname_check, "", "empty");
    value_bad(ci_hostname_check, "web-", "'web-' is not a valid host name");
    value_bad(ci_hostname_check, "-web", "not a valid host name");
    value_bad(ci_hostname_check, "a..b", "not a valid host name");
    value_bad(ci_hostname_check, "a.", "not a valid host name");
    value_bad(ci_hostname_check, "under_score", "not a valid host name");
    value_bad(ci_hostname_check, "a: b\n- c", "not a valid host name");

    value_ok(ci_user_name_check, "qvisor");
    value_ok(ci_user_name_check, "_svc-1");
    value_ok(ci_user_name_check, "abcdefghijklmnopqrstuvwxyz012345");
    value_bad(ci_user_name_check, "abcdefghijklmnopqrstuvwxyz0123456", "not a valid user name");
    value_bad(ci_user_name_check, "", "not a valid user name");
    value_bad(ci_user_name_check, "Alice", "'Alice' is not a valid user name");
    value_bad(ci_user_name_check, "1st", "not a valid user name");
    value_bad(ci_user_name_check, "a b", "not a valid user name");
    value_bad(ci_user_name_check, "a:b", "not a valid user name");

    value_ok(ci_ssh_key_check, ed25519);
    value_ok(ci_ssh_key_check, ecdsa);
    value_ok(ci_ssh_key_check, rsa); /* no comment */
    char k[512];
    snprintf(k, sizeof k, "%s with spaces in the comment", ed25519);
    value_ok(ci_ssh_key_check, k);
    value_bad(ci_ssh_key_check, "", "empty");
    value_bad(ci_ssh_key_check, "-----BEGIN OPENSSH PRIVATE KEY-----", "private key");
    value_bad(ci_ssh_key_check, "ssh-foo AAAA", "should start with its type");
    value_bad(ci_ssh_key_check, "/home/alice/.ssh/id_ed25519.pub", "not an SSH public key");
    value_bad(ci_ssh_key_check, "ssh-ed25519", "key data is missing");
    value_bad(ci_ssh_key_check, "ssh-ed25519 AAAA$$$$", "not valid base64");
    value_bad(ci_ssh_key_check, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQne",
              "not valid base64");
    /* an RSA blob under the ed25519 type; a truncated blob */
    snprintf(k, sizeof k, "ssh-ed25519 %s", rsa + 8);
    value_bad(ci_ssh_key_check, k, "does not belong to a ssh-ed25519 key");
    value_bad(ci_ssh_key_check, "ssh-ed25519 AAAAC3Nz", "does not belong");
    snprintf(k, sizeof k, "%s\nssh-rsa AAAA", ed25519);
    value_bad(ci_ssh_key_check, k, "not one line");
    snprintf(k, sizeof k, "%s\n", ed25519);
    value_bad(ci_ssh_key_check, k, "not one line");
    char *huge = malloc(CI_SSH_KEY_MAX + 100);
    snprintf(huge, CI_SSH_KEY_MAX + 100, "%s ", ed25519);
    size_t n = strlen(huge);
    memset(huge + n, 'x', CI_SSH_KEY_MAX + 99 - n);
    huge[CI_SSH_KEY_MAX + 99] = '\0';
    value_bad(ci_ssh_key_check, huge, "longer than");
    free(huge);
}

static void ok_user_data(const char *s) {
    qv_error err = {0};
    int r = ci_user_data_check("user-data", s, strlen(s), &err);
    if (r != 0)
        fail_msg("rejected '%s': %s", s, err.msg);
}
static void bad_user_data(const char *s, size_t len, const char *needle) {
    qv_error err = {0};
    int r = ci_user_data_check("user-data", s, len, &err);
    if (r != -EINVAL || !strstr(err.msg, needle))
        fail_msg("'%s': expected EINVAL with '%s', got %d '%s'", s, needle, r, err.msg);
    assert_non_null(strstr(err.msg, "user-data"));
}

static void test_user_data_check(void **state) {
    (void)state;
    ok_user_data("");
    ok_user_data("#cloud-config\n");
    ok_user_data("#cloud-config\npackages: [a, b]\n");
    ok_user_data("#!/bin/sh\necho 'a: [' \n");
    ok_user_data("Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\n: [\n--XX--\n");
    ok_user_data("MIME-Version: 1.0\r\nContent-Type: Multipart/Mixed; boundary=XX\r\n\r\n--XX--\r\n");
    ok_user_data("#include\nhttp://example.com/x\n");
    bad_user_data("#cloud-config\nfoo: [1, 2\n", 25, "line");
    bad_user_data("#cloud-config\nfoo: [1, 2\n", 25, "#! script");
    bad_user_data("#cloud-config\n- a\n", 18, "mapping");
    bad_user_data("#cloud-config\nfoo\n", 18, "mapping");
    bad_user_data("a: b: c\n", 8, "YAML");
    bad_user_data("\x1f\x8b\x08\0\0\0", 6, "binary");
    bad_user_data("Content-Type: text/plain\n\nkey: [\n", 33, "YAML");

    qv_error err = {0};
    const char *md = "instance-id: x\n";
    assert_int_equal(ci_yaml_mapping_check("meta-data", md, strlen(md), &err), 0);
    assert_int_equal(ci_yaml_mapping_check("meta-data", "", 0, &err), 0);
    assert_int_equal(ci_yaml_mapping_check("meta-data", "- a\n", 4, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "meta-data"));
    assert_int_equal(ci_yaml_mapping_check("network-config", "a: [\n", 5, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "line"));

    /* verbatim replacement */
    const char *ud = "#cloud-config\n# keep: this comment\nruncmd: [ls]\n";
    ci_seed_spec s = {.hostname = "vm", .user = "ignored", .user_data = ud, .user_data_len = strlen(ud)};
    ci_seed seed;
    assert_int_equal(ci_seed_build(&s, &seed, &err), 0);
    assert_int_equal(seed.user_data.len, strlen(ud));
    assert_memory_equal(seed.user_data.data, ud, strlen(ud));
    ci_seed_done(&seed);
}

static void test_seed_write(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("ci-seed");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/seed.iso", dir);
    ci_seed_spec spec = full_spec();
    spec.vendor_data = "#cloud-config\n{}\n";
    spec.vendor_data_len = strlen(spec.vendor_data);
    qv_error err = {0};
    if (ci_seed_write(path, &spec, NULL, TS, &err) < 0)
        fail_msg("%s", err.msg);
    char *img;
    size_t len;
    assert_int_equal(qv_read_file(path, 1 << 20, &img, &len), 0);
    rd_image *im = malloc(sizeof *im);
    rd_parse((uint8_t *)img, len, im);
    assert_string_equal(im->label, "cidata");
    assert_int_equal(im->n, 4);
    ci_seed seed;
    assert_int_equal(ci_seed_build(&spec, &seed, &err), 0);
    ci_iso_file files[CI_SEED_FILES_MAX];
    size_t n = ci_seed_files(&seed, files);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        const rd_file *f = rd_find(im->iso, im->n, files[i].name);
        assert_non_null(f);
        assert_int_equal(f->size, files[i].size);
        assert_memory_equal(f->data, files[i].data, files[i].size);
    }
    ci_seed_done(&seed);
    free(im);
    free(img);
    qv_test_rm_rf(dir);
    free(dir);
}

static void hex(const uint8_t *d, char *out) {
    for (int i = 0; i < CI_SHA256_LEN; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_sha256(void **state) {
    (void)state;
    uint8_t d[CI_SHA256_LEN];
    char h[65];
    ci_sha256_digest("", 0, d);
    hex(d, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    ci_sha256_digest("abc", 3, d);
    hex(d, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    ci_sha256_digest(m, strlen(m), d);
    hex(d, h);
    assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* one million 'a', fed in odd pieces */
    static char a[1000];
    memset(a, 'a', sizeof a);
    ci_sha256 c;
    ci_sha256_init(&c);
    size_t left = 1000000, step = 1;
    while (left) {
        size_t k = step < left ? step : left;
        if (k > sizeof a)
            k = sizeof a;
        ci_sha256_update(&c, a, k);
        left -= k;
        step = step * 7 % 997 + 1;
    }
    ci_sha256_final(&c, d);
    hex(d, h);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_full),   cmocka_unit_test(test_golden_minimal),
        cmocka_unit_test(test_yaml_injection), cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_instance_id),   cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_user_data_check), cmocka_unit_test(test_seed_write),
        cmocka_unit_test(test_sha256),        cmocka_unit_test(test_network_config_override),
        cmocka_unit_test(test_value_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
