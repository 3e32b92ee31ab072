/* UEFI firmware: QEMU firmware descriptors read as untrusted input (wrong
 * types, huge files, relative paths, commas, other builds), the choice among
 * several by file name, the OVMF fallback, a node without OVMF, and the
 * per-VM variable store copy. */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "host/firmware.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Debian 12's 60-edk2-x86_64.json, with CODE/VARS placeholders. */
static char *descriptor(const char *code, const char *vars, const char *features, const char *machines) {
    char *d = NULL;
    int n = asprintf(&d,
                     "{\"description\": \"test\", \"interface-types\": [\"uefi\"],\n"
                     " \"mapping\": {\"device\": \"flash\",\n"
                     "   \"executable\": {\"filename\": \"%s\", \"format\": \"raw\"},\n"
                     "   \"nvram-template\": {\"filename\": \"%s\", \"format\": \"raw\"}},\n"
                     " \"targets\": [{\"architecture\": \"x86_64\", \"machines\": [%s]}],\n"
                     " \"features\": [%s], \"tags\": []}\n",
                     code, vars, machines ? machines : "\"pc-i440fx-*\", \"pc-q35-*\"", features);
    assert_true(n > 0);
    return d;
}

static int parse(const char *text, int want, sv_fw_choice *c, char *why) {
    return sv_fw_descriptor_parse(text, strlen(text), want, c, why, 512);
}

static void expect_malformed(const char *text, const char *msg) {
    sv_fw_choice c;
    char why[512] = "";
    int r = parse(text, SV_FIRMWARE_UEFI, &c, why);
    if (r != -EINVAL || !strstr(why, msg))
        fail_msg("%s: got %d '%s', want -EINVAL with '%s'", text, r, why, msg);
}

static void expect_unfit(const char *text, int want, const char *msg) {
    sv_fw_choice c;
    char why[512] = "";
    int r = parse(text, want, &c, why);
    if (r != 0 || !strstr(why, msg))
        fail_msg("%s: got %d '%s', want 0 with '%s'", text, r, why, msg);
}

static const char plain_features[] = "\"acpi-s3\", \"amd-sev\", \"verbose-dynamic\"";
static const char sb_features[] = "\"acpi-s3\", \"enrolled-keys\", \"requires-smm\", \"secure-boot\"";

static void test_parse_debian_descriptors(void **state) {
    (void)state;
    sv_fw_choice c;
    char why[512];
    _cleanup_free_ char *plain = descriptor("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd",
                                            plain_features, NULL);
    assert_int_equal(parse(plain, SV_FIRMWARE_UEFI, &c, why), 1);
    assert_string_equal(c.code, "/usr/share/OVMF/OVMF_CODE_4M.fd");
    assert_string_equal(c.vars, "/usr/share/OVMF/OVMF_VARS_4M.fd");
    expect_unfit(plain, SV_FIRMWARE_UEFI_SECURE, "not Secure Boot with enrolled keys and SMM");

    _cleanup_free_ char *sb = descriptor("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
                                         sb_features, "\"pc-q35-*\"");
    assert_int_equal(parse(sb, SV_FIRMWARE_UEFI_SECURE, &c, why), 1);
    assert_string_equal(c.code, "/usr/share/OVMF/OVMF_CODE_4M.ms.fd");
    assert_string_equal(c.vars, "/usr/share/OVMF/OVMF_VARS_4M.ms.fd");
    expect_unfit(sb, SV_FIRMWARE_UEFI, "a Secure Boot or SMM build");
    /* Secure Boot without enrolled keys (an empty store) enforces nothing */
    _cleanup_free_ char *empty_keys = descriptor("/c", "/v", "\"requires-smm\", \"secure-boot\"", NULL);
    expect_unfit(empty_keys, SV_FIRMWARE_UEFI_SECURE, "not Secure Boot");
    /* nor without SMM: the guest could rewrite the keys */
    _cleanup_free_ char *no_smm = descriptor("/c", "/v", "\"enrolled-keys\", \"secure-boot\"", NULL);
    expect_unfit(no_smm, SV_FIRMWARE_UEFI_SECURE, "not Secure Boot");
}

static void test_parse_other_builds(void **state) {
    (void)state;
    /* i440fx only, another architecture, a pinned old q35 version */
    _cleanup_free_ char *i440 = descriptor("/c", "/v", plain_features, "\"pc-i440fx-*\"");
    expect_unfit(i440, SV_FIRMWARE_UEFI, "not for x86_64 q35");
    _cleanup_free_ char *pinned = descriptor("/c", "/v", plain_features, "\"pc-q35-2.6\"");
    expect_unfit(pinned, SV_FIRMWARE_UEFI, "not for x86_64 q35");
    expect_unfit("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": {\"device\": \"flash\"},"
                 " \"targets\": [{\"architecture\": \"aarch64\", \"machines\": [\"virt-*\"]}]}",
                 SV_FIRMWARE_UEFI, "not for x86_64 q35");
    const char *targets = "\"targets\": [{\"architecture\": \"x86_64\", \"machines\": [\"pc-q35-*\"]}]";
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"interface-types\": [\"bios\"], \"features\": [], %s, "
             "\"mapping\": {\"device\": \"memory\", \"filename\": \"/usr/share/seabios/bios-256k.bin\"}}", targets);
    expect_unfit(buf, SV_FIRMWARE_UEFI, "not UEFI");
    snprintf(buf, sizeof buf, "{\"interface-types\": [\"uefi\"], \"features\": [], %s, "
             "\"mapping\": {\"device\": \"memory\", \"filename\": \"/usr/share/OVMF/OVMF.amdsev.fd\"}}", targets);
    expect_unfit(buf, SV_FIRMWARE_UEFI, "mapping device memory");
    snprintf(buf, sizeof buf, "{\"interface-types\": [\"uefi\"], \"features\": [], %s, "
             "\"mapping\": {\"device\": \"flash\", \"mode\": \"stateless\", "
             "\"executable\": {\"filename\": \"/c\", \"format\": \"raw\"}}}", targets);
    expect_unfit(buf, SV_FIRMWARE_UEFI, "flash mode stateless");
    snprintf(buf, sizeof buf, "{\"interface-types\": [\"uefi\"], \"features\": [], %s, "
             "\"mapping\": {\"device\": \"flash\", "
             "\"executable\": {\"filename\": \"/c.qcow2\", \"format\": \"qcow2\"},"
             "\"nvram-template\": {\"filename\": \"/v.qcow2\", \"format\": \"qcow2\"}}}", targets);
    expect_unfit(buf, SV_FIRMWARE_UEFI, "format qcow2");
    snprintf(buf, sizeof buf, "{\"interface-types\": [\"uefi\"], \"features\": [], %s, "
             "\"mapping\": {\"device\": \"flash\", \"executable\": {\"filename\": \"/c\"}}}", targets);
    expect_unfit(buf, SV_FIRMWARE_UEFI, "no \"nvram-template\"");
}

static void test_parse_hostile(void **state) {
    (void)state;
    expect_malformed("", "not JSON");
    expect_malformed("{\"interface-types\": [\"uefi\"]", "not JSON");
    expect_malformed("[1, 2]", "expected an object");
    expect_malformed("{\"interface-types\": \"uefi\"}", "\"interface-types\": expected an array of strings");
    expect_malformed("{\"interface-types\": [1]}", "\"interface-types\"[0]: expected a string");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"interface-types\": [\"bios\"]}", "not JSON");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": {}}", "\"features\": expected an array");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": []}",
                     "\"mapping\": expected an object");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": {\"device\": 7}}",
                     "\"mapping\".\"device\": expected a string");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": {\"device\": \"flash\"},"
                     " \"targets\": {}}",
                     "\"targets\": expected an array");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": {\"device\": \"flash\"},"
                     " \"targets\": [{\"architecture\": \"x86_64\", \"machines\": [null]}]}",
                     "\"machines\"[0]: expected a string");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": {\"device\": \"flash\"},"
                     " \"targets\": [\"x86_64\"]}",
                     "\"targets\"[0]: expected an object");

    /* the files it names go into QEMU options */
    _cleanup_free_ char *relative = descriptor("OVMF_CODE_4M.fd", "/v", plain_features, NULL);
    expect_malformed(relative, "executable: 'OVMF_CODE_4M.fd' is not an absolute path");
    _cleanup_free_ char *comma = descriptor("/c", "/tmp/x,file=/etc/shadow", plain_features, NULL);
    expect_malformed(comma, "nvram-template: '/tmp/x,file=/etc/shadow' contains a comma");
    _cleanup_free_ char *ctrl = descriptor("/c\\n-append", "/v", plain_features, NULL);
    expect_malformed(ctrl, "executable: the path contains a control character");
    expect_malformed("{\"interface-types\": [\"uefi\"], \"features\": [], \"mapping\": {\"device\": \"flash\", "
                     "\"executable\": {\"filename\": 1234}}, "
                     "\"targets\": [{\"architecture\": \"x86_64\", \"machines\": [\"pc-q35-*\"]}]}",
                     "\"mapping\".\"executable\".\"filename\": expected a string");

    /* too large: refused before it is parsed */
    size_t big = SV_FW_DESCRIPTOR_MAX + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    huge[0] = '{';
    huge[big - 1] = '}';
    sv_fw_choice c;
    char why[512];
    assert_int_equal(sv_fw_descriptor_parse(huge, big, SV_FIRMWARE_UEFI, &c, why, sizeof why), -EINVAL);
    assert_non_null(strstr(why, "larger than"));
    free(huge);
}

/* ---- resolving on a node ----------------------------------------------- */

static char *dir;

static int dir_setup(void **state) {
    (void)state;
    dir = qv_test_mkdtemp("qv-fw");
    return 0;
}

static int dir_teardown(void **state) {
    (void)state;
    qv_test_rm_rf(dir);
    free(dir);
    return 0;
}

static void put(const char *rel, const char *content) {
    qv_test_write(dir, rel, content);
}

static char *at(const char *rel) {
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", dir, rel) > 0);
    return p;
}

static void test_resolve_node_without_ovmf(void **state) {
    (void)state;
    sv_fw_choice c;
    qv_error err = {0};
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI, &c, &err), -EOPNOTSUPP);
    assert_int_equal(err.code, EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "firmware uefi needs OVMF, which this node does not have"));
    assert_non_null(strstr(err.msg, "OVMF_CODE_4M.fd is missing"));
    assert_non_null(strstr(err.msg, "apt-get install ovmf"));
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI_SECURE, &c, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "firmware uefi-secure needs OVMF's Secure Boot build"));
    assert_non_null(strstr(err.msg, "OVMF_CODE_4M.secboot.fd is missing"));
}

static void test_resolve_fallback_files(void **state) {
    (void)state;
    put("OVMF_CODE_4M.fd", "code");
    sv_fw_choice c;
    qv_error err = {0};
    /* the code alone is not enough */
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI, &c, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "OVMF_VARS_4M.fd is missing"));
    put("OVMF_VARS_4M.fd", "vars");
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI, &c, &err), 0);
    _cleanup_free_ char *code = at("OVMF_CODE_4M.fd"), *vars = at("OVMF_VARS_4M.fd");
    assert_string_equal(c.code, code);
    assert_string_equal(c.vars, vars);
    assert_string_equal(c.source, dir);
    /* Secure Boot: .secboot.fd, or .ms.fd, with the MS-keys template */
    put("OVMF_CODE_4M.ms.fd", "sb code");
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI_SECURE, &c, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "OVMF_VARS_4M.ms.fd is missing"));
    put("OVMF_VARS_4M.ms.fd", "ms vars");
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI_SECURE, &c, &err), 0);
    _cleanup_free_ char *ms = at("OVMF_CODE_4M.ms.fd"), *msvars = at("OVMF_VARS_4M.ms.fd");
    assert_string_equal(c.code, ms);
    assert_string_equal(c.vars, msvars);
    put("OVMF_CODE_4M.secboot.fd", "sb code");
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI_SECURE, &c, &err), 0);
    _cleanup_free_ char *secboot = at("OVMF_CODE_4M.secboot.fd");
    assert_string_equal(c.code, secboot);
}

static void test_resolve_descriptors_in_name_order(void **state) {
    (void)state;
    put("a/code.fd", "a");
    put("a/vars.fd", "a");
    put("b/code.fd", "b");
    put("b/vars.fd", "b");
    _cleanup_free_ char *ac = at("a/code.fd"), *av = at("a/vars.fd"), *bc = at("b/code.fd"), *bv = at("b/vars.fd");
    _cleanup_free_ char *a = descriptor(ac, av, plain_features, NULL), *b = descriptor(bc, bv, plain_features, NULL);
    put("60-b.json", b);
    put("70-a.json", a);
    /* malformed, hostile and unusable ones before them are skipped */
    put("10-garbage.json", "{not json");
    _cleanup_free_ char *comma = descriptor("/x,y", "/v", plain_features, NULL);
    put("11-comma.json", comma);
    _cleanup_free_ char *gone = descriptor("/nonexistent/OVMF_CODE_4M.fd", av, plain_features, NULL);
    put("12-missing-file.json", gone);
    put("13-empty.json", "");
    put("14-not-a-descriptor.txt", a);
    char *huge = calloc(1, SV_FW_DESCRIPTOR_MAX + 2);
    assert_non_null(huge);
    memset(huge, ' ', SV_FW_DESCRIPTOR_MAX + 1);
    memcpy(huge, a, strlen(a)); /* a fitting descriptor, padded past the limit */
    put("15-huge.json", huge);
    free(huge);

    sv_fw_choice c;
    qv_error err = {0};
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI, &c, &err), 0);
    assert_string_equal(c.code, bc);
    assert_string_equal(c.vars, bv);
    _cleanup_free_ char *src = at("60-b.json");
    assert_string_equal(c.source, src);
    /* a lower file name wins */
    put("50-a.json", a);
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI, &c, &err), 0);
    assert_string_equal(c.code, ac);
    /* none of them is a Secure Boot build, and there is no fallback file */
    assert_int_equal(sv_fw_resolve(dir, SV_FIRMWARE_UEFI_SECURE, &c, &err), -EOPNOTSUPP);
}

static void test_prepare_spec(void **state) {
    (void)state;
    _cleanup_(sv_config_freep) sv_config *cfg = sv_config_new_default();
    assert_non_null(cfg);
    free(cfg->firmware_dir);
    cfg->firmware_dir = strdup(dir);
    qv_error err = {0};

    /* bios: nothing to do, nothing recorded */
    _cleanup_(sv_vmspec_freep) sv_vmspec *bios = qv_test_spec("{\"name\":\"b\",\"image\":\"i\"}");
    assert_int_equal(sv_fw_prepare_spec(cfg, bios, &err), 0);
    assert_null(bios->firmware_code);

    _cleanup_(sv_vmspec_freep) sv_vmspec *s = qv_test_spec("{\"name\":\"u\",\"image\":\"i\",\"firmware\":\"uefi\"}");
    assert_int_equal(sv_fw_prepare_spec(cfg, s, &err), -EOPNOTSUPP);
    assert_null(s->firmware_code);
    put("OVMF_CODE_4M.fd", "code");
    put("OVMF_VARS_4M.fd", "vars");
    assert_int_equal(sv_fw_prepare_spec(cfg, s, &err), 0);
    _cleanup_free_ char *code = at("OVMF_CODE_4M.fd");
    assert_string_equal(s->firmware_code, code);

    /* named in the spec: checked, not replaced */
    _cleanup_(sv_vmspec_freep) sv_vmspec *named = qv_test_spec(
        "{\"name\":\"n\",\"image\":\"i\",\"firmware\":\"uefi\",\"firmware_code\":\"/nonexistent/c.fd\","
        "\"firmware_vars\":\"/nonexistent/v.fd\"}");
    assert_int_equal(sv_fw_prepare_spec(cfg, named, &err), -ENOENT);
    assert_string_equal(err.msg, "spec: firmware_code: /nonexistent/c.fd is not a readable file");

    /* readable files that no descriptor (nor the fallback) offers: the
     * daemon would copy them and QEMU open them as root for the client */
    put("other.fd", "secret");
    _cleanup_free_ char *other = at("other.fd"), *vars = at("OVMF_VARS_4M.fd");
    char text[3 * PATH_MAX];
    snprintf(text, sizeof text,
             "{\"name\":\"n\",\"image\":\"i\",\"firmware\":\"uefi\",\"firmware_code\":\"%s\","
             "\"firmware_vars\":\"%s\"}", code, other);
    _cleanup_(sv_vmspec_freep) sv_vmspec *foreign = qv_test_spec(text);
    assert_int_equal(sv_fw_prepare_spec(cfg, foreign, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "is no uefi build this node offers"));
    /* the pair the node offers is taken as named */
    snprintf(text, sizeof text,
             "{\"name\":\"n\",\"image\":\"i\",\"firmware\":\"uefi\",\"firmware_code\":\"%s\","
             "\"firmware_vars\":\"%s\"}", code, vars);
    _cleanup_(sv_vmspec_freep) sv_vmspec *offered = qv_test_spec(text);
    assert_int_equal(sv_fw_prepare_spec(cfg, offered, &err), 0);
    assert_string_equal(offered->firmware_vars, vars);
}

static void test_vars_copy(void **state) {
    (void)state;
    put("tmpl.fd", "template bytes");
    _cleanup_free_ char *tmpl = at("tmpl.fd"), *dst = at("efivars.fd"), *missing = at("nope.fd");
    qv_error err = {0};
    assert_int_equal(sv_fw_vars_copy(tmpl, dst, &err), 0);
    _cleanup_free_ char *got = NULL;
    assert_int_equal(qv_read_file(dst, 1024, &got, NULL), 0);
    assert_string_equal(got, "template bytes");
    struct stat st;
    assert_int_equal(stat(dst, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(sv_fw_vars_copy(missing, dst, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "apt-get install ovmf"));
    put("empty.fd", "");
    _cleanup_free_ char *empty = at("empty.fd");
    assert_int_equal(sv_fw_vars_copy(empty, dst, &err), -EINVAL);
    /* the copy that was there is untouched by the failures */
    free(got);
    got = NULL;
    assert_int_equal(qv_read_file(dst, 1024, &got, NULL), 0);
    assert_string_equal(got, "template bytes");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_debian_descriptors),
        cmocka_unit_test(test_parse_other_builds),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test_setup_teardown(test_resolve_node_without_ovmf, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_resolve_fallback_files, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_resolve_descriptors_in_name_order, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_prepare_spec, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_vars_copy, dir_setup, dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
