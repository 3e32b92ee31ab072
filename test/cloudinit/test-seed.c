/* supervisor/vm/seed.c: a VM's seed.iso from its spec and the node config,
 * read back with the independent ISO reader (user-data also parsed: the
 * password hash, packages and runcmd as strings); rewritten only when its
 * content changes; removed with seed: false; the --ssh key pair. */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "isoread.h"
#include "cloudinit/nocloud.h"
#include "supervisor/vm/qemuargv.h"
#include "netdev/nic.h"
#include "netdev/nic.h"
#include "supervisor/vm/seed.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

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
    assert_int_equal(a.st_mode & 0777, 0600); /* a disk image, like the disk */
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

/* A user-data parsed back with libyaml: a value must be a quoted scalar (a
 * string to cloud-init's YAML 1.1 loader), never a mapping or a plain one. */
static yaml_node_t *ymap_get(yaml_document_t *d, yaml_node_t *map, const char *key) {
    assert_non_null(map);
    assert_int_equal(map->type, YAML_MAPPING_NODE);
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(d, pr->key);
        if (k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(d, pr->value);
    }
    return NULL;
}

static void assert_yseq_strings(yaml_document_t *d, yaml_node_t *seq, const char *const *want, size_t n) {
    assert_non_null(seq);
    assert_int_equal(seq->type, YAML_SEQUENCE_NODE);
    assert_int_equal(seq->data.sequence.items.top - seq->data.sequence.items.start, n);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *it = yaml_document_get_node(d, seq->data.sequence.items.start[i]);
        assert_int_equal(it->type, YAML_SCALAR_NODE);
        assert_string_equal((char *)it->data.scalar.value, want[i]);
        assert_true(it->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    it->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE);
    }
}

static void test_password_packages_runcmd(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("sv-seed");
    _cleanup_(sv_config_freep) sv_config *node = node_with_dns(NULL);
    qv_error err = {0};
    static const char hash[] = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
    static const char *const pkgs[] = {"qemu-guest-agent", "nginx=1.22.1-9", "yes"};
    static const char *const cmds[] = {"echo \"a: b\"; ls", "- c", "printf '%s\\n' 'it''s' > /root/ok"};
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"pk\",\"image\":\"i\",\"user\":\"alice\","
        "\"password_hash\":\"$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/\","
        "\"packages\":[\"qemu-guest-agent\",\"nginx=1.22.1-9\",\"yes\"],"
        "\"runcmd\":[\"echo \\\"a: b\\\"; ls\",\"- c\",\"printf '%s\\\\n' 'it''s' > /root/ok\"]}");
    if (sv_seed_prepare(s, node, dir, NULL, &err) < 0)
        fail_msg("%s", err.msg);
    seed_files f;
    read_seed(dir, &f);
    assert_int_equal(f.n, 3);
    assert_null(f.vendor);

    yaml_parser_t p;
    yaml_document_t d;
    assert_true(yaml_parser_initialize(&p));
    yaml_parser_set_input_string(&p, (const unsigned char *)f.user, strlen(f.user));
    if (!yaml_parser_load(&p, &d))
        fail_msg("user-data does not parse: %s\n%s", p.problem, f.user);
    yaml_parser_delete(&p);
    yaml_node_t *root = yaml_document_get_root_node(&d);
    assert_non_null(root);
    yaml_node_t *users = ymap_get(&d, root, "users");
    assert_true(users && users->type == YAML_SEQUENCE_NODE);
    yaml_node_t *user = yaml_document_get_node(&d, users->data.sequence.items.start[0]);
    yaml_node_t *pw = ymap_get(&d, user, "passwd");
    assert_non_null(pw);
    assert_string_equal((char *)pw->data.scalar.value, hash);
    assert_int_equal(pw->data.scalar.style, YAML_SINGLE_QUOTED_SCALAR_STYLE);
    yaml_node_t *lock = ymap_get(&d, user, "lock_passwd");
    assert_string_equal((char *)lock->data.scalar.value, "false");
    assert_string_equal((char *)ymap_get(&d, user, "name")->data.scalar.value, "alice");
    assert_yseq_strings(&d, ymap_get(&d, root, "packages"), pkgs, 3);
    assert_yseq_strings(&d, ymap_get(&d, root, "runcmd"), cmds, 3);
    yaml_document_delete(&d);
    seed_files_done(&f);

    /* another command: another instance-id, so cloud-init runs again */
    char id1[CI_INSTANCE_ID_SIZE], id2[CI_INSTANCE_ID_SIZE];
    read_id(dir, id1);
    free(s->runcmd[1]);
    s->runcmd[1] = strdup("true");
    bool changed = false;
    assert_int_equal(sv_seed_prepare(s, node, dir, &changed, &err), 0);
    assert_true(changed);
    read_id(dir, id2);
    assert_string_not_equal(id1, id2);

    /* with a user-data of the user's they had nowhere to go: a spec.json
     * edited past create's check is refused, not half applied */
    char *d2 = qv_test_mkdtemp("sv-seed");
    s->user_data = strdup("#!/bin/sh\n");
    assert_int_equal(sv_seed_prepare(s, node, d2, NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "cloud-init seed: password_hash needs the generated user-data, which user_data "
                                 "replaces");
    char iso[PATH_MAX];
    snprintf(iso, sizeof iso, "%s/seed.iso", d2);
    assert_int_equal(access(iso, F_OK), -1);

    qv_test_rm_rf(d2);
    free(d2);
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
        cmocka_unit_test(test_password_packages_runcmd),
        cmocka_unit_test(test_timestamp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
