/* supervisor/seed.c: a VM's seed.iso from its spec and the node config,
 * read back with the independent ISO reader; rewritten only when its
 * content changes; removed with seed: false; the --ssh key pair. */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "isoread.h"
#include "cloudinit/nocloud.h"
#include "supervisor/qemuargv.h"
#include "netdev/nic.h"
#include "netdev/nic.h"
#include "supervisor/seed.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char key1[] =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test";

static sv_vmspec *spec_from(const char *json) {
    return qv_test_spec(json);
}

static sv_config *node_with_dns(const char *dns) {
    sv_config *c = sv_config_new_default();
    assert_non_null(c);
    free(c->dns);
    c->dns = calloc(2, sizeof *c->dns);
    if (dns)
        c->dns[0] = strdup(dns);
    return c;
}

/* The seed in dir, parsed; the files are NUL-terminated copies. */
typedef struct seed_files {
    char *meta, *user, *net, *vendor;
    size_t n;
} seed_files;

static char *file_copy(const rd_image *im, const char *name) {
    const rd_file *f = rd_find(im->iso, im->n, name);
    if (!f)
        return NULL;
    char *s = malloc(f->size + 1);
    memcpy(s, f->data, f->size);
    s[f->size] = '\0';
    return s;
}

static void read_seed(const char *dir, seed_files *out) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/seed.iso", dir);
    _cleanup_free_ char *img = NULL;
    size_t len;
    assert_int_equal(qv_read_file(path, 1 << 20, &img, &len), 0);
    rd_image *im = malloc(sizeof *im);
    rd_parse((const uint8_t *)img, len, im);
    assert_string_equal(im->label, "cidata");
    out->n = im->n;
    out->meta = file_copy(im, "meta-data");
    out->user = file_copy(im, "user-data");
    out->net = file_copy(im, "network-config");
    out->vendor = file_copy(im, "vendor-data");
    free(im);
    assert_non_null(out->meta);
    assert_non_null(out->user);
}

static void seed_files_done(seed_files *f) {
    free(f->meta);
    free(f->user);
    free(f->net);
    free(f->vendor);
}

static void contains(const char *hay, const char *needle) {
    if (!hay || !strstr(hay, needle))
        fail_msg("'%s' not in:\n%s", needle, hay ? hay : "(absent)");
}

static void read_id(const char *dir, char *out) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/seed.id", dir);
    _cleanup_free_ char *id = NULL;
    assert_int_equal(qv_read_file(path, 256, &id, NULL), 0);
    assert_int_equal(strlen(id), CI_INSTANCE_ID_SIZE); /* 36 characters and a newline */
    memcpy(out, id, CI_INSTANCE_ID_SIZE - 1);
    out[CI_INSTANCE_ID_SIZE - 1] = '\0';
}

static void stat_iso(const char *dir, struct stat *st) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/seed.iso", dir);
    assert_int_equal(stat(path, st), 0);
}

static bool have_ssh_keygen(void) {
    return access("/usr/bin/ssh-keygen", X_OK) == 0 || access("/bin/ssh-keygen", X_OK) == 0;
}

static void test_content(void **state) {
    (void)state;
    if (!have_ssh_keygen())
        skip();
    char *dir = qv_test_mkdtemp("sv-seed");
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"web-1\",\"image\":\"i\",\"hostname\":\"web.lab\",\"user\":\"alice\",\"ssh_generate\":true,"
        "\"ssh_keys\":[\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test\"]}");
    _cleanup_(sv_config_freep) sv_config *node = node_with_dns("10.0.0.53");
    qv_error err = {0};

    /* the generated key must exist first */
    bool changed = true;
    assert_int_equal(sv_seed_prepare(s, node, dir, &changed, &err), -ENOENT);
    contains(err.msg, "ssh/id_ed25519.pub is missing");
    assert_true(changed); /* untouched on failure */

    if (sv_seed_ssh_keygen("web-1", dir, &err) < 0)
        fail_msg("%s", err.msg);
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/ssh/id_ed25519", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/ssh", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    _cleanup_free_ char *pub = NULL;
    snprintf(path, sizeof path, "%s/ssh/id_ed25519.pub", dir);
    assert_int_equal(qv_read_file(path, 4096, &pub, NULL), 0);
    contains(pub, " qvisor-web-1\n");
    pub[strlen(pub) - 1] = '\0';

    if (sv_seed_prepare(s, node, dir, &changed, &err) < 0)
        fail_msg("%s", err.msg);
    assert_true(changed);
    seed_files f;
    read_seed(dir, &f);
    assert_int_equal(f.n, 3);
    contains(f.meta, "local-hostname: 'web.lab'\n");
    char id[CI_INSTANCE_ID_SIZE];
    read_id(dir, id);
    char want[64];
    snprintf(want, sizeof want, "instance-id: '%s'\n", id);
    contains(f.meta, want);
    contains(f.user, "#cloud-config\nhostname: 'web.lab'\n");
    contains(f.user, "- name: 'alice'\n");
    snprintf(want, sizeof want, "  - '%.50s", key1);
    contains(f.user, want);
    char gen[200];
    snprintf(gen, sizeof gen, "  - '%s'\n", pub);
    contains(f.user, gen);
    char mac[ND_MAC_SIZE];
    nd_mac_derive("web-1", 0, 0, mac);
    snprintf(want, sizeof want, "macaddress: '%s'\n", mac);
    contains(f.net, want);
    contains(f.net, "dhcp4: true\n");
    contains(f.net, "- '10.0.0.53'\n");
    assert_null(f.vendor);
    seed_files_done(&f);

    /* the key pair is kept when asked again */
    assert_int_equal(sv_seed_ssh_keygen("web-1", dir, &err), 0);
    _cleanup_free_ char *pub2 = NULL;
    assert_int_equal(qv_read_file(path, 4096, &pub2, NULL), 0);
    assert_int_equal(strncmp(pub, pub2, strlen(pub)), 0);

    qv_test_rm_rf(dir);
    free(dir);
}

static void test_rewritten_only_when_changed(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("sv-seed");
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from("{\"name\":\"db\",\"image\":\"i\"}");
    _cleanup_(sv_config_freep) sv_config *node = node_with_dns(NULL);
    qv_error err = {0};
    bool changed = false;
    assert_int_equal(sv_seed_prepare(s, node, dir, &changed, &err), 0);
    assert_true(changed);
    char id1[CI_INSTANCE_ID_SIZE], id2[CI_INSTANCE_ID_SIZE];
    read_id(dir, id1);
    struct stat a, b;
    stat_iso(dir, &a);
    assert_int_equal(a.st_mode & 0777, 0640);
    seed_files f;
    read_seed(dir, &f);
    contains(f.meta, "local-hostname: 'db'\n");
    contains(f.user, "- name: 'qvisor'\n");
    assert_null(strstr(f.user, "ssh_authorized_keys"));
    assert_null(strstr(f.net, "nameservers")); /* none configured: none invented */
    seed_files_done(&f);

    /* the same spec: the very same file */
    assert_int_equal(sv_seed_prepare(s, node, dir, &changed, &err), 0);
    assert_false(changed);
    stat_iso(dir, &b);
    assert_true(a.st_ino == b.st_ino && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec && a.st_mtim.tv_sec == b.st_mtim.tv_sec);

    /* the node's DNS changed: a new seed */
    _cleanup_(sv_config_freep) sv_config *node2 = node_with_dns("fd00::53");
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_true(changed);
    read_id(dir, id2);
    assert_string_not_equal(id1, id2);
    read_seed(dir, &f);
    contains(f.net, "- 'fd00::53'\n");
    seed_files_done(&f);

    /* the spec changed */
    free(s->hostname);
    s->hostname = strdup("db2");
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_true(changed);
    read_id(dir, id1);
    assert_string_not_equal(id1, id2);

    /* a missing or foreign seed.id (a crash between the two writes), or a
     * missing seed.iso, means the seed is written again */
    char idp[PATH_MAX], iso[PATH_MAX];
    snprintf(idp, sizeof idp, "%s/seed.id", dir);
    snprintf(iso, sizeof iso, "%s/seed.iso", dir);
    assert_int_equal(unlink(idp), 0);
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_true(changed);
    read_id(dir, id2);
    assert_string_equal(id1, id2);
    assert_int_equal(qv_write_file_atomic(idp, "iid-0\n", 6, 0640), 0);
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_true(changed);
    assert_int_equal(unlink(iso), 0);
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_true(changed);
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_false(changed);

    /* seed: false removes it; a second time there is nothing to remove */
    s->seed = false;
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_true(changed);
    assert_int_equal(access(iso, F_OK), -1);
    assert_int_equal(access(idp, F_OK), -1);
    assert_int_equal(sv_seed_prepare(s, node2, dir, &changed, &err), 0);
    assert_false(changed);

    qv_test_rm_rf(dir);
    free(dir);
}

static void test_user_data_and_network_config(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("sv-seed");
    _cleanup_(sv_config_freep) sv_config *node = node_with_dns("10.0.0.53");
    qv_error err = {0};
    const char *ud = "#!/bin/sh\necho hello\n";
    const char *nc = "version: 2\nethernets:\n  e:\n    match: {name: 'en*'}\n    dhcp4: true\n";

    /* user-data replaces ours; the keys go to vendor-data */
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"k\",\"image\":\"i\",\"user_data\":\"#!/bin/sh\\necho hello\\n\","
        "\"network_config\":\"version: 2\\nethernets:\\n  e:\\n    match: {name: 'en*'}\\n    dhcp4: true\\n\","
        "\"ssh_keys\":[\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test\"]}");
    if (sv_seed_prepare(s, node, dir, NULL, &err) < 0)
        fail_msg("%s", err.msg);
    seed_files f;
    read_seed(dir, &f);
    assert_int_equal(f.n, 4);
    assert_string_equal(f.user, ud);
    assert_string_equal(f.net, nc);
    contains(f.vendor, "#cloud-config\n");
    contains(f.vendor, "alice@test'\n");
    contains(f.meta, "local-hostname: 'k'\n");
    seed_files_done(&f);

    /* without keys there is nothing to carry: no vendor-data */
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain =
        spec_from("{\"name\":\"k\",\"image\":\"i\",\"user_data\":\"#!/bin/sh\\necho hello\\n\"}");
    if (sv_seed_prepare(plain, node, dir, NULL, &err) < 0)
        fail_msg("%s", err.msg);
    read_seed(dir, &f);
    assert_int_equal(f.n, 3);
    assert_string_equal(f.user, ud);
    assert_null(f.vendor);
    contains(f.net, "macaddress");
    seed_files_done(&f);

    qv_test_rm_rf(dir);
    free(dir);
}

static void test_timestamp(void **state) {
    (void)state;
    char *d1 = qv_test_mkdtemp("sv-seed"), *d2 = qv_test_mkdtemp("sv-seed");
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from("{\"name\":\"t\",\"image\":\"i\"}");
    _cleanup_(sv_config_freep) sv_config *node = node_with_dns(NULL);
    qv_error err = {0};
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    assert_int_equal(sv_seed_prepare(s, node, d1, NULL, &err), 0);
    assert_int_equal(sv_seed_prepare(s, node, d2, NULL, &err), 0);
    char p1[PATH_MAX], p2[PATH_MAX];
    snprintf(p1, sizeof p1, "%s/seed.iso", d1);
    snprintf(p2, sizeof p2, "%s/seed.iso", d2);
    _cleanup_free_ char *a = NULL, *b = NULL;
    size_t la, lb;
    assert_int_equal(qv_read_file(p1, 1 << 20, &a, &la), 0);
    assert_int_equal(qv_read_file(p2, 1 << 20, &b, &lb), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);

    /* a malformed SOURCE_DATE_EPOCH is an error, and nothing is written */
    qv_test_rm_rf(d2);
    assert_int_equal(mkdir(d2, 0700), 0);
    setenv("SOURCE_DATE_EPOCH", "yesterday", 1);
    assert_int_equal(sv_seed_prepare(s, node, d2, NULL, &err), -EINVAL);
    contains(err.msg, "SOURCE_DATE_EPOCH");
    assert_int_equal(access(p2, F_OK), -1);
    unsetenv("SOURCE_DATE_EPOCH");

    qv_test_rm_rf(d1);
    qv_test_rm_rf(d2);
    free(d1);
    free(d2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content),
        cmocka_unit_test(test_rewritten_only_when_changed),
        cmocka_unit_test(test_user_data_and_network_config),
        cmocka_unit_test(test_timestamp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
