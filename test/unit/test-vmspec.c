/* VM spec validation (names incl. path tricks, sizes, YAML and JSON forms)
 * and golden QEMU command lines.  QVISOR_UPDATE_GOLDEN=1 rewrites the
 * golden files instead of comparing (review the diff!). */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "cloudinit/nocloud.h"
#include "netdev/nic.h"
#include "supervisor/vm/qemuargv.h"
#include "spec/vmspec.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static sv_config *node(void) {
    sv_config *c = sv_config_new_default();
    assert_non_null(c);
    return c;
}

static void expect_json_error(const char *json, const char *msg) {
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    assert_non_null(j);
    sv_vmspec *s = NULL;
    qv_error err = {0};
    int r = sv_vmspec_from_json(j, &s, &err);
    json_decref(j);
    if (r >= 0) {
        sv_config *c = node();
        r = sv_vmspec_complete(s, c, &err);
        sv_config_free(c);
        sv_vmspec_free(s);
    }
    if (r != -EINVAL || strstr(err.msg, msg) == NULL)
        fail_msg("%s: got %d '%s', want EINVAL containing '%s'", json, r, err.msg, msg);
}

static void test_names_and_sizes(void **state) {
    (void)state;
    expect_json_error("{\"name\": \"../x\", \"image\": \"deb\"}", "spec: name: '../x' is not a valid name");
    expect_json_error("{\"name\": \"Web\", \"image\": \"deb\"}", "'Web' is not a valid name");
    expect_json_error("{\"name\": \"a/b\", \"image\": \"deb\"}", "'a/b' is not a valid name");
    expect_json_error("{\"name\": \"ok\", \"image\": \"../../etc/passwd\"}", "spec: image: '../../etc/passwd' is not a valid name");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"disk\": \"100\"}", "spec: disk: expected a size with a unit");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"disk\": 100}", "spec: disk: expected a size with a unit");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"memory\": \"1M\"}", "spec: memory: 1M is out of range (16M to 16T)");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"cpus\": 0}", "spec: cpus: 0 is out of range");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"cpus\": -1}", "spec: cpus: expected a single value");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"restart\": \"sometimes\"}",
                      "spec: restart: expected one of never, on-failure, always, got 'sometimes'");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"kernel\": \"vmlinuz\"}", "spec: kernel: must be an absolute path");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"initrd\": \"/boot/initrd\"}", "initrd and append need kernel");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"gpus\": [\"x\"]}", "spec: gpus[0]: 'x': expected a PCI address");
    expect_json_error("{\"name\": \"ok\", \"image\": \"deb\", \"nics\": []}", "spec: nics: unknown key");
    expect_json_error("{\"image\": \"deb\"}", "spec: name: missing");
    expect_json_error("{\"name\": \"ok\"}", "spec: image: missing");
}

static void test_defaults_from_node(void **state) {
    (void)state;
    json_t *j = json_pack("{s:s, s:s, s:s}", "name", "web-1", "image", "debian-12", "disk", "40G");
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_json(j, &s, &err), 0);
    json_decref(j);
    _cleanup_(sv_config_freep) sv_config *c = node();
    assert_int_equal(sv_vmspec_complete(s, c, &err), 0);
    assert_true(s->cpus == 2);
    assert_true(s->memory == 2ull << 30);
    assert_true(s->disk == 40ull << 30);
    assert_true(s->stop_timeout_ms == 60000);
    assert_int_equal(s->restart, SV_RESTART_NEVER);
    assert_true(s->agent);
    json_t *out = sv_vmspec_to_json(s);
    assert_string_equal(json_string_value(json_object_get(out, "disk")), "40G");
    assert_int_equal(json_integer_value(json_object_get(out, "cpus")), 2);
    assert_null(json_object_get(out, "kernel"));
    /* the JSON form round-trips */
    _cleanup_(sv_vmspec_freep) sv_vmspec *again = NULL;
    assert_int_equal(sv_vmspec_from_json(out, &again, &err), 0);
    assert_true(again->disk == s->disk && again->cpus == s->cpus && again->memory == s->memory);
    json_decref(out);
}

static void test_long_values_survive_json(void **state) {
    (void)state;
    /* a long kernel command line must come back exactly (spec.json, wire) */
    char append[5000];
    memset(append, 'a', sizeof append - 1);
    append[sizeof append - 1] = '\0';
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "name", "k", "image", "i", "kernel", "/boot/vmlinuz", "append", append);
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_json(j, &s, &err), 0);
    json_decref(j);
    json_t *out = sv_vmspec_to_json(s);
    assert_string_equal(json_string_value(json_object_get(out, "append")), append);
    json_decref(out);
}

static void test_yaml_spec_file(void **state) {
    (void)state;
    const char *y = "name: db\nimage: debian-12\ncpus: 4\nmemory: 8G\nrestart: on-failure\nrestart_limit: 3\n";
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_yaml("db.yaml", y, strlen(y), &s, &err), 0);
    assert_string_equal(s->name, "db");
    assert_true(s->memory == 8ull << 30);
    assert_int_equal(s->restart, SV_RESTART_ON_FAILURE);
    assert_true(s->restart_limit == 3);

    sv_vmspec *bad = NULL;
    const char *b = "name: db\nimage: debian-12\nmemory: lots\n";
    assert_int_equal(sv_vmspec_from_yaml("db.yaml", b, strlen(b), &bad, &err), -EINVAL);
    assert_string_equal(err.msg, "db.yaml:3:9: memory: expected a size with a unit (like 512M or 20G), got 'lots'");
    const char *dup = "name: db\nname: db2\n";
    assert_int_equal(sv_vmspec_from_yaml("db.yaml", dup, strlen(dup), &bad, &err), -EINVAL);
    assert_string_equal(err.msg, "db.yaml:2:1: name: repeated key");
}

/* ---- golden argv ---- */

static void check_golden(const char *name, char **argv) {
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    for (char **a = argv; *a; a++)
        fprintf(m, "%s\n", *a);
    fclose(m);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/test/unit/golden/%s.argv", getenv("QVISOR_SOURCE_ROOT"), name);
    if (getenv("QVISOR_UPDATE_GOLDEN")) {
        assert_int_equal(qv_write_file_atomic(path, text, len, 0644), 0);
    } else {
        _cleanup_free_ char *want = NULL;
        if (qv_read_file(path, 1 << 20, &want, NULL) < 0)
            fail_msg("missing golden file %s (run with QVISOR_UPDATE_GOLDEN=1)", path);
        if (strcmp(want, text) != 0)
            fail_msg("argv differs from %s:\n--- got ---\n%s", path, text);
    }
    free(text);
}

static sv_vmspec *spec_from(const char *json) {
    return qv_test_spec(json);
}

static const char key1[] =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test";

static void test_seed_defaults(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from("{\"name\":\"web-\",\"image\":\"i\"}");
    assert_true(s->seed);
    assert_false(s->ssh_generate);
    assert_string_equal(s->user, "qvisor");
    assert_non_null(s->ssh_keys);
    assert_null(s->ssh_keys[0]);
    assert_null(s->user_data);
    assert_null(s->network_config);
    /* the VM name, without the trailing '-' a host name cannot have */
    assert_string_equal(s->hostname, "web");
    json_t *j = sv_vmspec_to_json(s);
    assert_string_equal(json_string_value(json_object_get(j, "hostname")), "web");
    assert_true(json_is_true(json_object_get(j, "seed")));
    assert_true(json_is_false(json_object_get(j, "ssh_generate")));
    assert_string_equal(json_string_value(json_object_get(j, "user")), "qvisor");
    /* unset values stay absent */
    assert_null(json_object_get(j, "ssh_keys"));
    assert_null(json_object_get(j, "user_data"));
    assert_null(json_object_get(j, "network_config"));
    json_decref(j);

    /* without a seed, nothing is filled in */
    _cleanup_(sv_vmspec_freep) sv_vmspec *off = spec_from("{\"name\":\"x\",\"image\":\"i\",\"seed\":false}");
    assert_false(off->seed);
    assert_null(off->hostname);
}

static void test_seed_fields_round_trip(void **state) {
    (void)state;
    const char *y = "name: web\n"
                    "image: debian-12\n"
                    "hostname: web.lab.example\n"
                    "user: alice\n"
                    "ssh_generate: true\n"
                    "ssh_keys:\n"
                    "  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test\n"
                    "user_data: |\n"
                    "  #cloud-config\n"
                    "  runcmd: [ls]\n"
                    "network_config: |\n"
                    "  version: 2\n"
                    "  ethernets: {}\n";
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    if (sv_vmspec_from_yaml("vm.yaml", y, strlen(y), &s, &err) < 0)
        fail_msg("%s", err.msg);
    assert_string_equal(s->hostname, "web.lab.example");
    assert_string_equal(s->user, "alice");
    assert_true(s->ssh_generate);
    assert_string_equal(s->ssh_keys[0], key1);
    assert_null(s->ssh_keys[1]);
    assert_string_equal(s->user_data, "#cloud-config\nruncmd: [ls]\n");
    assert_string_equal(s->network_config, "version: 2\nethernets: {}\n");

    /* spec.json and the wire: the same values come back */
    json_t *j = sv_vmspec_to_json(s);
    _cleanup_(sv_vmspec_freep) sv_vmspec *again = NULL;
    if (sv_vmspec_from_json(j, &again, &err) < 0)
        fail_msg("%s", err.msg);
    json_decref(j);
    assert_string_equal(again->hostname, s->hostname);
    assert_string_equal(again->user, s->user);
    assert_true(again->ssh_generate);
    assert_string_equal(again->ssh_keys[0], key1);
    assert_null(again->ssh_keys[1]);
    assert_string_equal(again->user_data, s->user_data);
    assert_string_equal(again->network_config, s->network_config);

    /* an empty user-data is a user-data (cloud-init then does nothing) */
    _cleanup_(sv_vmspec_freep) sv_vmspec *empty = spec_from("{\"name\":\"x\",\"image\":\"i\",\"user_data\":\"\"}");
    assert_string_equal(empty->user_data, "");
    j = sv_vmspec_to_json(empty);
    assert_string_equal(json_string_value(json_object_get(j, "user_data")), "");
    json_decref(j);
}

static void test_seed_field_errors(void **state) {
    (void)state;
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"hostname\":\"web_1\"}",
                      "spec: hostname: 'web_1' is not a valid host name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"hostname\":\"\"}", "spec: hostname: must not be empty");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"user\":\"Root\"}", "spec: user: 'Root' is not a valid user name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"ssh_keys\":\"ssh-ed25519 AAAA\"}",
                      "spec: ssh_keys: expected a list of strings");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"ssh_keys\":[\"ssh-ed25519 AAAA\"]}",
                      "spec: ssh_keys[0]: 'ssh-ed25519 AAAA…' is not an SSH public key");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"ssh_keys\":[\"/home/a/.ssh/id_ed25519.pub\"]}",
                      "it should start with its type");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"user_data\":\"#cloud-config\\nfoo: [1, 2\\n\"}",
                      "spec: user_data: not valid YAML: line 3");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"user_data\":\"#cloud-config\\n- a\\n\"}",
                      "spec: user_data: line 2: the top level must be a mapping");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"network_config\":\"- eth0\\n\"}",
                      "spec: network_config: line 1: the top level must be a mapping");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"network_config\":\"\"}", "spec: network_config: must not be empty");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":\"maybe\"}", "spec: seed: expected true or false");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":false,\"hostname\":\"h\"}",
                      "spec: hostname needs the cloud-init seed, which seed: false turns off");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":false,\"ssh_generate\":true}", "spec: ssh_generate needs");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":false,\"user_data\":\"\"}", "spec: user_data needs");

    /* from a spec file: the item's line and column */
    const char *y = "name: db\nimage: i\nssh_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep\n"
                    "  - ssh-rsa bm9wZQ==\n";
    sv_vmspec *bad = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_yaml("db.yaml", y, strlen(y), &bad, &err), -EINVAL);
    assert_string_equal(err.msg, "db.yaml:5:5: ssh_keys: 'ssh-rsa bm9wZQ==…' is not an SSH public key: the key data "
                                 "does not belong to a ssh-rsa key (truncated or mixed up?)");
    const char *u = "name: db\nimage: i\nuser_data: |\n  #cloud-config\n  a: [\n";
    assert_int_equal(sv_vmspec_from_yaml("db.yaml", u, strlen(u), &bad, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "db.yaml:3:12: user_data: not valid YAML: line 3"));
}

/* password_hash, packages and runcmd: what goes into the generated user-data */
static void test_user_data_keys(void **state) {
    (void)state;
    const char *y = "name: web\n"
                    "image: debian-12\n"
                    "password_hash: $6$rounds=5000$saltsalt$Xx9r/Yw.Ab3\n"
                    "packages:\n"
                    "  - qemu-guest-agent\n"
                    "  - nginx=1.22.1-9\n"
                    "  - libc6=2:2.36~rc1+b1\n"
                    "runcmd:\n"
                    "  - 'echo \"a: b\"; ls'\n"
                    "  - \"printf '%s\\\\n' yes > /root/ok\"\n"
                    "  - - not a string\n";
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    /* a nested list is no command */
    assert_int_equal(sv_vmspec_from_yaml("vm.yaml", y, strlen(y), &s, &err), -EINVAL);
    assert_string_equal(err.msg, "vm.yaml:11:5: runcmd: list items must be single values (strings)");
    size_t good = strstr(y, "  - - not") - y;
    if (sv_vmspec_from_yaml("vm.yaml", y, good, &s, &err) < 0)
        fail_msg("%s", err.msg);
    assert_string_equal(s->password_hash, "$6$rounds=5000$saltsalt$Xx9r/Yw.Ab3");
    assert_string_equal(s->packages[0], "qemu-guest-agent");
    assert_string_equal(s->packages[1], "nginx=1.22.1-9");
    assert_string_equal(s->packages[2], "libc6=2:2.36~rc1+b1");
    assert_null(s->packages[3]);
    assert_string_equal(s->runcmd[0], "echo \"a: b\"; ls");
    assert_string_equal(s->runcmd[1], "printf '%s\\n' yes > /root/ok");
    assert_null(s->runcmd[2]);

    /* spec.json and the wire: the same values come back */
    json_t *j = sv_vmspec_to_json(s);
    _cleanup_(sv_vmspec_freep) sv_vmspec *again = NULL;
    if (sv_vmspec_from_json(j, &again, &err) < 0)
        fail_msg("%s", err.msg);
    json_decref(j);
    assert_string_equal(again->password_hash, s->password_hash);
    assert_string_equal(again->packages[2], s->packages[2]);
    assert_null(again->packages[3]);
    assert_string_equal(again->runcmd[0], s->runcmd[0]);
    assert_null(again->runcmd[2]);

    /* unset: absent from the JSON, empty lists */
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain = spec_from("{\"name\":\"x\",\"image\":\"i\"}");
    assert_null(plain->password_hash);
    assert_non_null(plain->packages);
    assert_null(plain->packages[0]);
    assert_non_null(plain->runcmd);
    assert_null(plain->runcmd[0]);
    j = sv_vmspec_to_json(plain);
    assert_null(json_object_get(j, "password_hash"));
    assert_null(json_object_get(j, "packages"));
    assert_null(json_object_get(j, "runcmd"));
    json_decref(j);

    /* every crypt method libxcrypt knows, as /etc/shadow holds them */
    static const char *const hashes[] = {
        "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
        "$gy$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
        "$7$CU..../....1dJLx2.L2QgQLv5/0e5LB.$Mzt4brnO7dTMdiTUFgpyW0YVqDRTg2KTn5Nr8QUjyTA",
        "$2b$12$EXRkfkdmXn2gzds2SSitu.MW9.gAVqa9eLS1//RYtYCmB1eLHg.9q",
        "$2a$05$bvIG6Nmid91Mu9RcmmWZfO5HJIMCT8riNW0hEp8f6/FuA2/mHZFpe",
        "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/",
        "$5$rounds=80000$wnsT7Yr92oJoP28r$cKhJImk5mfuSKV9b3mumNzlbstFUplKtQXXMo4G6Ep5",
        "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
        "$sha1$40000$jtNX3nZ2$hBNaIXkt4wBI2o5rsi8KejSjNqIq",
        "$6$$emptysalt",
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(hashes); i++) {
        json_t *h = json_pack("{s:s, s:s, s:s}", "name", "h", "image", "i", "password_hash", hashes[i]);
        _cleanup_(sv_vmspec_freep) sv_vmspec *hs = NULL;
        if (sv_vmspec_from_json(h, &hs, &err) < 0)
            fail_msg("%s: %s", hashes[i], err.msg);
        json_decref(h);
    }
}

static void test_user_data_key_errors(void **state) {
    (void)state;
    /* plain text: refused, not quoted (it may be the password) */
    static const char *const not_hashes[] = {
        "hunter2", "secret password", "$ecret$pass$word", "$6$onlysalt", "$6$salt$", "$6salt$hash",
        "$6$salt$ha sh", "$6$salt$hash\n", "$6$salt$h\xc3\xa4sh", "abJnggxhB/yWI", "!$6$salt$hash",
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(not_hashes); i++) {
        json_t *h = json_pack("{s:s, s:s, s:s}", "name", "h", "image", "i", "password_hash", not_hashes[i]);
        _cleanup_(sv_vmspec_freep) sv_vmspec *hs = NULL;
        qv_error err = {0};
        assert_int_equal(sv_vmspec_from_json(h, &hs, &err), -EINVAL);
        json_decref(h);
        if (!strstr(err.msg, "spec: password_hash: ") || !strstr(err.msg, "not the password itself") ||
            !strstr(err.msg, "mkpasswd -m sha-512"))
            fail_msg("'%s': %s", not_hashes[i], err.msg);
        if (strlen(not_hashes[i]) > 3 && strstr(err.msg, not_hashes[i] + 1))
            fail_msg("'%s' is quoted in: %s", not_hashes[i], err.msg);
    }
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"password_hash\":\"hunter2\"}",
                      "spec: password_hash: this does not look like a password hash (it does not start with $ID$ of "
                      "a crypt method): pass a crypt(3) hash such as $6$SALT$HASH or $y$…, not the password itself "
                      "(e.g. from `mkpasswd -m sha-512` or `openssl passwd -6`)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"password_hash\":\"$6$salt$hash\\n\"}",
                      "spec: password_hash: the password hash must be one line without control characters");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"password_hash\":\"$6$ab$c d\"}",
                      "spec: password_hash: this does not look like a password hash (it has characters a crypt "
                      "hash has not, such as spaces)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"password_hash\":\"$6$salt\"}",
                      "spec: password_hash: this does not look like a password hash (no SALT$HASH after the method)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"password_hash\":\"\"}", "spec: password_hash: must not be empty");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"password_hash\":[\"$6$a$b\"]}",
                      "spec: password_hash: expected a single value");

    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":\"curl\"}", "spec: packages: expected a list of strings");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"curl\",\"\"]}",
                      "spec: packages[1]: list items must not be empty");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"curl wget\"]}",
                      "spec: packages[0]: 'curl wget' is not one package name: give one package per item");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"curl\",\"-oAPT::Get::Foo=1\"]}",
                      "spec: packages[1]: '-oAPT::Get::Foo=1' is not a package name (NAME or NAME=VERSION: a letter "
                      "or digit, then letters, digits and + . _ -; a version may also hold ~ and :)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"curl;reboot\"]}",
                      "spec: packages[0]: 'curl;reboot' is not a package name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"nginx=\"]}",
                      "spec: packages[0]: 'nginx=' is not a package name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"a=1=2\"]}",
                      "spec: packages[0]: 'a=1=2' is not a package name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"packages\":[\"nginx\\tcurl\"]}",
                      "spec: packages[0]: a package name must not hold control characters");

    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":\"ls\"}", "spec: runcmd: expected a list of strings");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":[[\"ls\",\"-l\"]]}", "spec: runcmd[0]: expected a string");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":[\"ls\",\"echo a\\necho b\"]}",
                      "spec: runcmd[1]: a command must be one line: give each command its own item (a multi-line "
                      "script belongs in user_data)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":[\"echo\\ta\"]}",
                      "spec: runcmd[0]: the command holds the control character U+0009 (only printable text is "
                      "taken: no tabs, NUL or escapes)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":[\"echo \\u001b[2J\"]}",
                      "spec: runcmd[0]: the command holds the control character U+001B");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":[\"echo \\u0085\"]}",
                      "spec: runcmd[0]: the command holds the control character U+0085");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"runcmd\":[\"\"]}", "spec: runcmd[0]: list items must not be empty");

    /* sizes: 4096 bytes per command, 64 commands, 256 packages */
    char cmd[CI_RUNCMD_MAX + 2];
    memset(cmd, 'x', sizeof cmd - 1);
    cmd[sizeof cmd - 1] = '\0';
    json_t *runcmd = json_array();
    json_array_append_new(runcmd, json_stringn(cmd, CI_RUNCMD_MAX));
    json_t *j = json_pack("{s:s, s:s, s:o}", "name", "ok", "image", "i", "runcmd", runcmd);
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    if (sv_vmspec_from_json(j, &s, &err) < 0)
        fail_msg("%s", err.msg);
    json_array_append_new(runcmd, json_string(cmd));
    assert_int_equal(sv_vmspec_from_json(j, &s, &err), -EINVAL);
    assert_string_equal(err.msg, "spec: runcmd[1]: command 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…' is longer than "
                                 "4096 bytes (a script belongs in user_data)");
    json_array_clear(runcmd);
    for (int i = 0; i < SV_RUNCMD_MAX; i++)
        json_array_append_new(runcmd, json_string("true"));
    sv_vmspec_free(s);
    s = NULL;
    if (sv_vmspec_from_json(j, &s, &err) < 0)
        fail_msg("%s", err.msg);
    json_array_append_new(runcmd, json_string("true"));
    assert_int_equal(sv_vmspec_from_json(j, &s, &err), -EINVAL);
    assert_string_equal(err.msg, "spec: runcmd: at most 64 items, got 65");
    json_t *pkgs = json_array();
    for (int i = 0; i <= SV_PACKAGES_MAX; i++)
        json_array_append_new(pkgs, json_string("curl"));
    json_object_set_new(j, "runcmd", json_array());
    json_object_set_new(j, "packages", pkgs);
    assert_int_equal(sv_vmspec_from_json(j, &s, &err), -EINVAL);
    assert_string_equal(err.msg, "spec: packages: at most 256 items, got 257");
    json_decref(j);

    /* with the user's own user-data there is no generated one to put them in */
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"user_data\":\"#!/bin/sh\\n\",\"packages\":[\"curl\"]}",
                      "spec: packages and user_data exclude each other: user_data replaces the generated user-data, "
                      "where packages would go (set it in your own user-data instead)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"user_data\":\"\",\"runcmd\":[\"ls\"]}",
                      "spec: runcmd and user_data exclude each other");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"user_data\":\"#cloud-config\\n\",\"password_hash\":\"$6$a$b\"}",
                      "spec: password_hash and user_data exclude each other");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":false,\"runcmd\":[\"ls\"]}", "spec: runcmd needs the cloud-init seed");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":false,\"packages\":[\"a\"]}", "spec: packages needs");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"seed\":false,\"password_hash\":\"$6$a$b\"}",
                      "spec: password_hash needs");

    /* from a spec file: line and column of the value or item */
    static const struct {
        const char *yaml, *msg;
    } file_cases[] = {
        {"name: db\nimage: i\npassword_hash: hunter2\n",
         "db.yaml:3:16: password_hash: this does not look like a password hash (it does not start with $ID$ of a "
         "crypt method): pass a crypt(3) hash such as $6$SALT$HASH or $y$…, not the password itself (e.g. from "
         "`mkpasswd -m sha-512` or `openssl passwd -6`)"},
        {"name: db\nimage: i\npackages:\n  - curl\n  - curl wget\n",
         "db.yaml:5:5: packages: 'curl wget' is not one package name: give one package per item"},
        {"name: db\nimage: i\nruncmd:\n  - ls\n  - \"echo a\\necho b\"\n",
         "db.yaml:5:5: runcmd: a command must be one line: give each command its own item (a multi-line script "
         "belongs in user_data)"},
        /* unquoted, "a: b" makes a mapping: refused, not taken apart */
        {"name: db\nimage: i\nruncmd:\n  - echo a: b\n", "db.yaml:4:5: runcmd: list items must be single values (strings)"},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(file_cases); i++) {
        sv_vmspec *bad = NULL;
        assert_int_equal(sv_vmspec_from_yaml("db.yaml", file_cases[i].yaml, strlen(file_cases[i].yaml), &bad, &err),
                         -EINVAL);
        assert_string_equal(err.msg, file_cases[i].msg);
    }
}

static void test_golden_tcg_default(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from("{\"name\":\"web-1\",\"image\":\"debian-12\"}");
    /* as launch() makes it with the default config: QEMU drops to
     * qvisor-qemu, the VM's files come as fds after the sockets */
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = false, .sandbox = true, .run_as = "qvisor-qemu"};
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/web-1/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/web-1/serial.log",
                     .pidfile = "/run/qvisor/vm/web-1/qemu.pid",
                     .qga_fd = 4,
                     .console_fd = 5,
                     .qmp_fd = 3,
                     .disk_fd = 6,
                     .base_fd = 7,
                     .serial_fd = 8,
                     .ssh_port = 40022};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("tcg-default", argv);
    sv_argv_free(argv);
}

static void test_golden_kvm_seed_kernel_runas(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"gpu-box\",\"image\":\"ubuntu\",\"cpus\":16,\"memory\":\"64G\",\"disk\":\"200G\","
        "\"kernel\":\"/boot/vmlinuz\",\"initrd\":\"/boot/initrd.img\",\"append\":\"console=ttyS0 root=/dev/vda1\"}");
    sv_qemu_env env = {.binary = "/usr/bin/qemu-system-x86_64", .kvm = true, .sandbox = true, .run_as = "qvisor-qemu"};
    sv_vm_paths p = {.disk = "/srv/vms/gpu-box/disk.qcow2",
                     .serial_log = "/srv/vms/gpu-box/serial.log",
                     .pidfile = "/run/qvisor/vm/gpu-box/qemu.pid",
                     .qga_fd = 6,
                     .seed_iso = "/srv/vms/gpu-box/seed.iso",
                     .qmp_fd = 5,
                     .disk_fd = 7,
                     .base_fd = 8,
                     .seed_fd = 9,
                     .serial_fd = 10,
                     .kernel_fd = 11,
                     .initrd_fd = 12,
                     .ssh_port = 0};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("kvm-seed-kernel-runas", argv);
    sv_argv_free(argv);
}

static void test_golden_kvm_two_gpus(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"ml-1\",\"image\":\"ubuntu\",\"cpus\":8,\"memory\":\"32G\","
        "\"gpus\":[\"0000:01:00.0\",\"0000:41:00.0,keep\"]}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = true, .sandbox = true};
    /* the first GPU with its audio function, the second a lone 3D controller */
    sv_hostdev devs[] = {{"0000:01:00.0", 0, 0}, {"0000:01:00.1", 0, 1}, {"0000:41:00.0", 1, 0}};
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/ml-1/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/ml-1/serial.log",
                     .pidfile = "/run/qvisor/vm/ml-1/qemu.pid",
                     .qmp_fd = 3,
                     .hostdevs = devs,
                     .n_hostdevs = 3};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("kvm-two-gpus", argv);
    sv_argv_free(argv);
}

static void test_gpus_in_the_spec(void **state) {
    (void)state;
    sv_vmspec *s = NULL;
    qv_error err = {0};
    const char *y = "name: a\nimage: i\ngpus: [\"01:00.0\", \"1,keep\", \"0000:41:00.0,take-group,keep\"]\n";
    assert_int_equal(sv_vmspec_from_yaml("a.yaml", y, strlen(y), &s, &err), 0);
    assert_string_equal(s->gpus[0], "01:00.0");
    assert_string_equal(s->gpus[2], "0000:41:00.0,take-group,keep");
    assert_null(s->gpus[3]);
    sv_vmspec_free(s);
    const char *bad = "name: a\nimage: i\ngpus: [\"01:00.0,turbo\"]\n";
    assert_int_equal(sv_vmspec_from_yaml("a.yaml", bad, strlen(bad), &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "a.yaml:3:"));
    assert_non_null(strstr(err.msg, "unknown option 'turbo'"));
    const char *bad2 = "name: a\nimage: i\ngpus: [\"my-gpu\"]\n";
    assert_int_equal(sv_vmspec_from_yaml("a.yaml", bad2, strlen(bad2), &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "PCI address"));
}

/* The lists are parsed once, when the spec is read, and again whenever
 * their text is replaced through sv_vmspec_parse_lists(). */
static void test_lists_parsed_at_load(void **state) {
    (void)state;
    sv_vmspec *s = NULL;
    qv_error err = {0};
    const char *y = "name: a\nimage: i\nnets: [\"nat,ip=192.168.100.7\", \"bridge,bridge=ovl0,vlan=7\"]\n"
                    "gpus: [\"01:00.0,keep\", \"1,take-group\"]\nnuma: \"1\"\npin: \"7,2-3\"\n";
    assert_int_equal(sv_vmspec_from_yaml("a.yaml", y, strlen(y), &s, &err), 0);
    assert_int_equal(s->n_nics, 2);
    assert_int_equal(s->nics[0].mode, ND_MODE_NAT);
    assert_string_equal(s->nics[0].ip, "192.168.100.7");
    assert_string_equal(s->nics[0].mac, ""); /* create assigns it */
    assert_int_equal(s->nics[1].mode, ND_MODE_BRIDGE);
    assert_string_equal(s->nics[1].bridge, "ovl0");
    assert_int_equal(s->nics[1].vlan, 7);
    assert_int_equal(s->n_gpu_opts, 2);
    assert_string_equal(s->gpu_opts[0].bdf, "0000:01:00.0");
    assert_true(s->gpu_opts[0].keep && !s->gpu_opts[0].take_group);
    assert_string_equal(s->gpu_opts[1].bdf, ""); /* an index: create turns it into an address */
    assert_true(!s->gpu_opts[1].keep && s->gpu_opts[1].take_group);
    assert_int_equal(s->numa_want.mode, SV_NUMA_NODE);
    assert_int_equal(s->numa_want.node, 1);
    assert_int_equal(s->n_pin_cpus, 3);
    assert_true(s->pin_cpus[0] == 2 && s->pin_cpus[1] == 3 && s->pin_cpus[2] == 7);

    /* the text changes (as create completes it): the parsed view follows */
    free(s->gpus[1]);
    assert_non_null(s->gpus[1] = strdup("0000:41:00.0,take-group"));
    free(s->numa);
    assert_non_null(s->numa = strdup("auto"));
    free(s->pin);
    s->pin = NULL;
    assert_int_equal(sv_vmspec_parse_lists(s, &err), 0);
    assert_string_equal(s->gpu_opts[1].bdf, "0000:41:00.0");
    assert_int_equal(s->numa_want.mode, SV_NUMA_AUTO);
    assert_null(s->pin_cpus);
    assert_int_equal(s->n_pin_cpus, 0);

    /* text the schema refuses: its message, and the parsed view stays */
    free(s->numa);
    assert_non_null(s->numa = strdup("near"));
    assert_int_equal(sv_vmspec_parse_lists(s, &err), -EINVAL);
    assert_string_equal(err.msg, "spec: numa: 'near': expected auto or a NUMA node number");
    assert_int_equal(s->numa_want.mode, SV_NUMA_AUTO);
    free(s->nets[1]);
    assert_non_null(s->nets[1] = strdup("nat,vlan=3"));
    assert_int_equal(sv_vmspec_parse_lists(s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "spec: nets[1]: "));
    assert_non_null(strstr(err.msg, "vlan is not a setting of a nat NIC"));
    assert_int_equal(s->nics[1].mode, ND_MODE_BRIDGE);
    sv_vmspec_free(s);

    /* nothing set: nothing parsed (sv_net_nics adds the default user NIC) */
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain = spec_from("{\"name\":\"p\",\"image\":\"i\"}");
    assert_true(plain->n_nics == 0 && !plain->nics && plain->n_gpu_opts == 0 && !plain->gpu_opts);
    assert_int_equal(plain->numa_want.mode, SV_NUMA_NONE);
    assert_true(plain->n_pin_cpus == 0 && !plain->pin_cpus);
}

/* Two pointers of a copy and its original: both NULL, or apart. */
static void apart(const void *a, const void *b, const char *what) {
    if (a && a == b)
        fail_msg("%s: the copy shares the original's pointer", what);
    if (!a != !b)
        fail_msg("%s: set in one of them only", what);
}

static void strv_apart(char *const *a, char *const *b, const char *what) {
    apart(a, b, what);
    for (size_t i = 0; a && b && (a[i] || b[i]); i++)
        apart(a[i], b[i], what);
}

static void check_dup(const sv_vmspec *s) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *c = sv_vmspec_dup(s);
    assert_non_null(c);
    json_t *js = sv_vmspec_to_json(s), *jc = sv_vmspec_to_json(c);
    assert_true(json_equal(js, jc));
    json_decref(js);
    json_decref(jc);
    /* what the JSON does not show: the parsed lists */
    assert_int_equal(c->n_nics, s->n_nics);
    assert_int_equal(c->n_gpu_opts, s->n_gpu_opts);
    assert_int_equal(c->n_pin_cpus, s->n_pin_cpus);
    assert_memory_equal(&c->numa_want, &s->numa_want, sizeof s->numa_want);
    if (s->n_nics)
        assert_memory_equal(c->nics, s->nics, s->n_nics * sizeof *s->nics);
    if (s->n_gpu_opts)
        assert_memory_equal(c->gpu_opts, s->gpu_opts, s->n_gpu_opts * sizeof *s->gpu_opts);
    if (s->n_pin_cpus)
        assert_memory_equal(c->pin_cpus, s->pin_cpus, s->n_pin_cpus * sizeof *s->pin_cpus);
    const struct {
        const void *a, *b;
        const char *what;
    } ptrs[] = {
        {s->name, c->name, "name"},
        {s->image, c->image, "image"},
        {s->kernel, c->kernel, "kernel"},
        {s->initrd, c->initrd, "initrd"},
        {s->append, c->append, "append"},
        {s->pool, c->pool, "pool"},
        {s->storage_pool, c->storage_pool, "storage_pool"},
        {s->numa, c->numa, "numa"},
        {s->pin, c->pin, "pin"},
        {s->firmware_code, c->firmware_code, "firmware_code"},
        {s->firmware_vars, c->firmware_vars, "firmware_vars"},
        {s->cpu_model, c->cpu_model, "cpu_model"},
        {s->hostname, c->hostname, "hostname"},
        {s->user, c->user, "user"},
        {s->password_hash, c->password_hash, "password_hash"},
        {s->user_data, c->user_data, "user_data"},
        {s->network_config, c->network_config, "network_config"},
        {s->nics, c->nics, "nics"},
        {s->gpu_opts, c->gpu_opts, "gpu_opts"},
        {s->pin_cpus, c->pin_cpus, "pin_cpus"},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(ptrs); i++)
        apart(ptrs[i].a, ptrs[i].b, ptrs[i].what);
    strv_apart(s->gpus, c->gpus, "gpus");
    strv_apart(s->nets, c->nets, "nets");
    strv_apart(s->ssh_keys, c->ssh_keys, "ssh_keys");
    strv_apart(s->packages, c->packages, "packages");
    strv_apart(s->runcmd, c->runcmd, "runcmd");
}

static void test_dup(void **state) {
    (void)state;
    /* every key set (user_data, which excludes three of them, below) */
    char json[4096];
    snprintf(json, sizeof json,
             "{\"name\":\"full\",\"image\":\"debian-12\",\"cpus\":4,\"memory\":\"8G\",\"disk\":\"40G\","
             "\"stop_timeout\":\"90s\",\"restart\":\"on-failure\",\"restart_limit\":3,\"kernel\":\"/boot/vmlinuz\","
             "\"initrd\":\"/boot/initrd.img\",\"append\":\"console=ttyS0\",\"agent\":false,"
             "\"gpus\":[\"0000:01:00.0,keep\",\"0000:41:00.0,take-group\"],"
             "\"nets\":[\"user,mac=0a:51:76:00:00:01\",\"nat,ip=192.168.100.7,mac=0a:51:76:00:00:02\","
             "\"bridge,bridge=ovl0,vlan=100,ip=10.0.0.5/24,gw=10.0.0.1\"],"
             "\"pool\":\"batch\",\"storage_pool\":\"fast\",\"hugepages\":\"1G\",\"numa\":\"1\",\"pin\":\"2-3,7\","
             "\"firmware\":\"uefi\",\"firmware_code\":\"/usr/share/OVMF/OVMF_CODE.fd\","
             "\"firmware_vars\":\"/usr/share/OVMF/OVMF_VARS.fd\",\"cpu_model\":\"EPYC\","
             "\"hostname\":\"full.example\",\"user\":\"alice\",\"ssh_keys\":[\"%s\"],\"ssh_generate\":true,"
             "\"password_hash\":\"$6$rounds=5000$saltsalt$Xx9r/Yw.Ab3\",\"packages\":[\"nginx\",\"curl\"],"
             "\"runcmd\":[\"ls\"],\"network_config\":\"version: 2\\nethernets: {}\\n\",\"owner\":1001,"
             "\"slurm_job\":4242}",
             key1);
    _cleanup_(sv_vmspec_freep) sv_vmspec *full = spec_from(json);
    assert_int_equal(full->n_nics, 3);
    assert_int_equal(full->n_pin_cpus, 3);
    check_dup(full);
    _cleanup_(sv_vmspec_freep) sv_vmspec *ud =
        spec_from("{\"name\":\"ud\",\"image\":\"i\",\"numa\":\"auto\",\"user_data\":\"#cloud-config\\n\"}");
    check_dup(ud);
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain = spec_from("{\"name\":\"p\",\"image\":\"i\"}");
    check_dup(plain);
    _cleanup_(sv_vmspec_freep) sv_vmspec *empty = sv_vmspec_new();
    check_dup(empty);
}

static void test_golden_three_nics(void **state) {
    (void)state;
    /* as the daemon completes them at create: MACs and the nat address filled in */
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"edge\",\"image\":\"debian\",\"nets\":[\"user,mac=0a:51:76:00:00:01\","
        "\"nat,ip=192.168.100.7,mac=0a:51:76:00:00:02\",\"bridge,bridge=ovl0,vlan=100,mac=0a:51:76:00:00:03\"]}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = true, .sandbox = true};
    /* fds as QEMU sees them: 3 is the monitor, then the TAPs and vhost-net */
    int taps[ND_NICS_MAX] = {-1, 4, 6, -1, -1, -1, -1, -1}, vhost[ND_NICS_MAX] = {-1, 5, -1, -1, -1, -1, -1, -1};
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/edge/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/edge/serial.log",
                     .pidfile = "/run/qvisor/vm/edge/qemu.pid",
                     .qmp_fd = 3,
                     .ssh_port = 2222,
                     .tap_fds = taps,
                     .vhost_fds = vhost};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("kvm-three-nics", argv);
    sv_argv_free(argv);

    /* a TAP NIC without its fd is a bug of the caller, not a QEMU error */
    p.tap_fds = NULL;
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), -EINVAL);
    assert_string_equal(err.msg, "NIC 1 (nat) has no TAP");
}

static void test_nets_in_the_spec(void **state) {
    (void)state;
    sv_vmspec *s = NULL;
    qv_error err = {0};
    const char *y = "name: a\nimage: i\nnets:\n  - nat\n  - bridge,bridge=ovl0,vlan=7\n";
    assert_int_equal(sv_vmspec_from_yaml("a.yaml", y, strlen(y), &s, &err), 0);
    assert_string_equal(s->nets[1], "bridge,bridge=ovl0,vlan=7");
    json_t *j = sv_vmspec_to_json(s);
    assert_int_equal(json_array_size(json_object_get(j, "nets")), 2);
    json_decref(j);
    sv_vmspec_free(s);
    const char *bad = "name: a\nimage: i\nnets: [\"nat,vlan=3\"]\n";
    assert_int_equal(sv_vmspec_from_yaml("a.yaml", bad, strlen(bad), &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "a.yaml:3:"));
    assert_non_null(strstr(err.msg, "vlan is not a setting of a nat NIC"));
    /* no nets: not in the JSON, and one user NIC */
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain = spec_from("{\"name\":\"p\",\"image\":\"i\"}");
    j = sv_vmspec_to_json(plain);
    assert_null(json_object_get(j, "nets"));
    json_decref(j);
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"nets\":[\"user\",\"user\",\"user\",\"user\",\"user\","
                      "\"user\",\"user\",\"user\",\"user\"]}",
                      "spec: nets: at most 8 NICs per VM");
}

static void test_golden_minimal_no_agent_no_sandbox(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s =
        spec_from("{\"name\":\"tiny\",\"image\":\"busybox\",\"cpus\":1,\"memory\":\"128M\",\"agent\":false}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = false, .sandbox = false};
    sv_vm_paths p = {.disk = "/tmp/i/tiny/disk.qcow2", .serial_log = "/tmp/i/tiny/serial.log",
                     .pidfile = "/tmp/r/tiny/qemu.pid", .qga_fd = 4, .qmp_fd = 3};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("minimal-no-agent-no-sandbox", argv);
    sv_argv_free(argv);
}

static void test_golden_numa_bind(void **state) {
    (void)state;
    /* --numa 1: guest RAM bound to node 1, no hugepages */
    _cleanup_(sv_vmspec_freep) sv_vmspec *s =
        spec_from("{\"name\":\"db-1\",\"image\":\"debian-12\",\"cpus\":4,\"memory\":\"8G\",\"numa\":\"1\"}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = true, .sandbox = true};
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/db-1/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/db-1/serial.log",
                     .pidfile = "/run/qvisor/vm/db-1/qemu.pid",
                     .qga_fd = 4,
                     .qmp_fd = 3,
                     .ssh_port = 40023,
                     .numa_bind = true,
                     .numa_node = 1};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("kvm-numa-bind", argv);
    sv_argv_free(argv);
}

static void test_golden_hugepages_2m_on_node(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"hp-2m\",\"image\":\"debian-12\",\"cpus\":2,\"memory\":\"3G\",\"hugepages\":\"2M\","
        "\"numa\":\"auto\"}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = true, .sandbox = true};
    /* auto chose node 0 */
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/hp-2m/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/hp-2m/serial.log",
                     .pidfile = "/run/qvisor/vm/hp-2m/qemu.pid",
                     .qga_fd = 4,
                     .qmp_fd = 3,
                     .ssh_port = 40024,
                     .numa_bind = true,
                     .numa_node = 0};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("kvm-hugepages-2m-node0", argv);
    sv_argv_free(argv);
}

static void test_golden_hugepages_1g(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"hp-1g\",\"image\":\"debian-12\",\"cpus\":8,\"memory\":\"16G\",\"hugepages\":\"1G\"}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = true, .sandbox = true};
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/hp-1g/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/hp-1g/serial.log",
                     .pidfile = "/run/qvisor/vm/hp-1g/qemu.pid",
                     .qga_fd = 4,
                     .qmp_fd = 3};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), 0);
    check_golden("kvm-hugepages-1g", argv);
    sv_argv_free(argv);

    /* RAM that is not a whole number of pages: QEMU could not map it */
    _cleanup_(sv_vmspec_freep) sv_vmspec *odd = spec_from(
        "{\"name\":\"hp-odd\",\"image\":\"debian-12\",\"memory\":\"1536M\",\"hugepages\":\"1G\"}");
    assert_int_equal(sv_qemu_argv(odd, &env, &p, &argv, &err), -EINVAL);
    assert_string_equal(err.msg, "memory 1536M is not a whole number of 1G hugepages");
}

static void test_commas_refused(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from("{\"name\":\"x\",\"image\":\"y\"}");
    sv_qemu_env env = {.binary = "qemu-system-x86_64"};
    sv_vm_paths p = {.disk = "/tmp/a,b/disk.qcow2", .serial_log = "/tmp/s", .pidfile = "/tmp/p", .qmp_fd = 3};
    char **argv = NULL;
    qv_error err = {0};
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "disk path '/tmp/a,b/disk.qcow2' contains a comma"));
}

/* ---- firmware and CPU model ---- */

static void test_firmware_and_cpu_model_keys(void **state) {
    (void)state;
    /* bios by default, and always written out: an old spec.json without the
     * key keeps meaning what it meant */
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain = spec_from("{\"name\":\"p\",\"image\":\"i\"}");
    assert_int_equal(plain->firmware, SV_FIRMWARE_BIOS);
    assert_null(plain->cpu_model);
    json_t *j = sv_vmspec_to_json(plain);
    assert_string_equal(json_string_value(json_object_get(j, "firmware")), "bios");
    assert_null(json_object_get(j, "firmware_code"));
    assert_null(json_object_get(j, "firmware_vars"));
    assert_null(json_object_get(j, "cpu_model"));
    json_decref(j);

    const char *y = "name: u\nimage: i\nfirmware: uefi-secure\ncpu_model: Skylake-Client-v4\n"
                    "firmware_code: /usr/share/OVMF/OVMF_CODE_4M.ms.fd\nfirmware_vars: /usr/share/OVMF/OVMF_VARS_4M.ms.fd\n";
    sv_vmspec *s = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_yaml("u.yaml", y, strlen(y), &s, &err), 0);
    assert_int_equal(s->firmware, SV_FIRMWARE_UEFI_SECURE);
    assert_string_equal(s->cpu_model, "Skylake-Client-v4");
    _cleanup_(sv_config_freep) sv_config *c = node();
    assert_int_equal(sv_vmspec_complete(s, c, &err), 0);
    j = sv_vmspec_to_json(s);
    assert_string_equal(json_string_value(json_object_get(j, "firmware")), "uefi-secure");
    assert_string_equal(json_string_value(json_object_get(j, "firmware_code")), "/usr/share/OVMF/OVMF_CODE_4M.ms.fd");
    assert_string_equal(json_string_value(json_object_get(j, "cpu_model")), "Skylake-Client-v4");
    json_decref(j);
    sv_vmspec_free(s);

    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"firmware\":\"efi\"}",
                      "spec: firmware: expected one of bios, uefi, uefi-secure, got 'efi'");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"cpu_model\":\"max,+vmx\"}",
                      "spec: cpu_model: 'max,+vmx' is not a CPU model name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"cpu_model\":\"-help\"}", "is not a CPU model name");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"cpu_model\":\"\"}", "spec: cpu_model: must not be empty");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"firmware_code\":\"/x\",\"firmware_vars\":\"/y\"}",
                      "spec: firmware_code needs firmware uefi or uefi-secure");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"firmware\":\"uefi\",\"firmware_code\":\"/x\"}",
                      "spec: firmware_code and firmware_vars go together");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"firmware\":\"uefi\",\"firmware_vars\":\"vars.fd\"}",
                      "spec: firmware_vars: must be an absolute path");
}

/* owner and slurm_job (docs/protocol.md, "Who may do what"): optional,
 * absent from the JSON when unset, each limit taken and one past refused. */
static void test_owner_and_slurm_job_keys(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *plain = spec_from("{\"name\":\"p\",\"image\":\"i\"}");
    assert_true(plain->owner == SV_UNSET);
    assert_true(plain->slurm_job == SV_UNSET);
    json_t *j = sv_vmspec_to_json(plain);
    assert_null(json_object_get(j, "owner"));
    assert_null(json_object_get(j, "slurm_job"));
    json_decref(j);

    _cleanup_(sv_vmspec_freep) sv_vmspec *job =
        spec_from("{\"name\":\"j\",\"image\":\"i\",\"owner\":1001,\"slurm_job\":\"4242\"}");
    assert_int_equal(job->owner, 1001);
    assert_int_equal(job->slurm_job, 4242);
    j = sv_vmspec_to_json(job);
    assert_int_equal(json_integer_value(json_object_get(j, "owner")), 1001);
    assert_int_equal(json_integer_value(json_object_get(j, "slurm_job")), 4242);
    /* what spec.json stores reads back the same */
    sv_vmspec *back = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_json(j, &back, &err), 0);
    json_decref(j);
    assert_int_equal(back->owner, 1001);
    assert_int_equal(back->slurm_job, 4242);
    sv_vmspec_free(back);

    _cleanup_(sv_vmspec_freep) sv_vmspec *edges =
        spec_from("{\"name\":\"e\",\"image\":\"i\",\"owner\":2147483646,\"slurm_job\":4294967294}");
    assert_int_equal(edges->owner, SV_OWNER_MAX);
    assert_int_equal(edges->slurm_job, SV_SLURM_JOB_MAX);
    _cleanup_(sv_vmspec_freep) sv_vmspec *root = spec_from("{\"name\":\"r\",\"image\":\"i\",\"owner\":0,\"slurm_job\":1}");
    assert_int_equal(root->owner, 0);
    assert_int_equal(root->slurm_job, 1);
    const char *y = "name: y\nimage: i\nowner: 1002\nslurm_job: 77\n";
    sv_vmspec *s = NULL;
    assert_int_equal(sv_vmspec_from_yaml("y.yaml", y, strlen(y), &s, &err), 0);
    assert_int_equal(s->owner, 1002);
    assert_int_equal(s->slurm_job, 77);
    sv_vmspec_free(s);

    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"owner\":-1}", "spec: owner: expected a single value");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"owner\":\"-1\"}", "spec: owner: expected a whole number");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"owner\":2147483647}",
                      "spec: owner: 2147483647 is out of range (0 to 2147483646)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"owner\":4294967295}", "spec: owner: 4294967295 is out of range");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"owner\":\"alice\"}", "spec: owner: expected a whole number");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"slurm_job\":0}",
                      "spec: slurm_job: 0 is out of range (1 to 4294967294)");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"slurm_job\":4294967295}",
                      "spec: slurm_job: 4294967295 is out of range");
    expect_json_error("{\"name\":\"ok\",\"image\":\"i\",\"slurm_job\":true}", "spec: slurm_job: expected a whole number");
}

static char **uefi_argv(const char *json, bool kvm, const char *vars) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(json);
    sv_qemu_env env = {.binary = "qemu-system-x86_64", .kvm = kvm, .sandbox = true};
    sv_vm_paths p = {.disk = "/var/lib/qvisor/instances/efi-1/disk.qcow2",
                     .serial_log = "/var/lib/qvisor/instances/efi-1/serial.log",
                     .pidfile = "/run/qvisor/vm/efi-1/qemu.pid",
                     .seed_iso = "/var/lib/qvisor/instances/efi-1/seed.iso",
                     .firmware_vars = vars,
                     .qga_fd = 4,
                     .qmp_fd = 3,
                     .disk_fd = 5,
                     .base_fd = 6,
                     .seed_fd = 7,
                     .fw_code_fd = vars ? 8 : 0,
                     .fw_vars_fd = vars ? 9 : 0,
                     .serial_fd = 10,
                     .ssh_port = 40025};
    char **argv = NULL;
    qv_error err = {0};
    if (sv_qemu_argv(s, &env, &p, &argv, &err) < 0)
        fail_msg("%s", err.msg);
    return argv;
}

static void test_golden_uefi(void **state) {
    (void)state;
    char **argv = uefi_argv("{\"name\":\"efi-1\",\"image\":\"debian-12\",\"firmware\":\"uefi\","
                            "\"firmware_code\":\"/usr/share/OVMF/OVMF_CODE_4M.fd\","
                            "\"firmware_vars\":\"/usr/share/OVMF/OVMF_VARS_4M.fd\"}",
                            false, "/var/lib/qvisor/instances/efi-1/efivars.fd");
    check_golden("tcg-uefi", argv);
    sv_argv_free(argv);
}

static void test_golden_uefi_secure(void **state) {
    (void)state;
    char **argv = uefi_argv("{\"name\":\"efi-1\",\"image\":\"debian-12\",\"firmware\":\"uefi-secure\","
                            "\"firmware_code\":\"/usr/share/OVMF/OVMF_CODE_4M.ms.fd\","
                            "\"firmware_vars\":\"/usr/share/OVMF/OVMF_VARS_4M.ms.fd\",\"hugepages\":\"2M\"}",
                            true, "/var/lib/qvisor/instances/efi-1/efivars.fd");
    check_golden("kvm-uefi-secure-hugepages", argv);
    sv_argv_free(argv);
}

static void test_golden_cpu_model(void **state) {
    (void)state;
    /* a named model wins over host (KVM) and max (TCG) */
    char **argv = uefi_argv("{\"name\":\"efi-1\",\"image\":\"debian-12\",\"cpu_model\":\"EPYC-Rome\"}", true, NULL);
    check_golden("kvm-cpu-model", argv);
    sv_argv_free(argv);
}

static void test_uefi_argv_errors(void **state) {
    (void)state;
    sv_qemu_env env = {.binary = "qemu-system-x86_64"};
    sv_vm_paths p = {.disk = "/tmp/d", .serial_log = "/tmp/s", .pidfile = "/tmp/p", .qmp_fd = 3,
                     .firmware_vars = "/tmp/a,b/efivars.fd"};
    char **argv = NULL;
    qv_error err = {0};
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec_from(
        "{\"name\":\"x\",\"image\":\"y\",\"firmware\":\"uefi\",\"firmware_code\":\"/c\",\"firmware_vars\":\"/v\"}");
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "firmware variables path '/tmp/a,b/efivars.fd' contains a comma"));
    p.firmware_vars = NULL;
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), -EINVAL);
    assert_string_equal(err.msg, "firmware uefi without its variable store");
    free(s->firmware_code);
    s->firmware_code = strdup("/a,b/OVMF_CODE_4M.fd");
    p.firmware_vars = "/tmp/v";
    assert_int_equal(sv_qemu_argv(s, &env, &p, &argv, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "firmware code path '/a,b/OVMF_CODE_4M.fd' contains a comma"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_sizes),
        cmocka_unit_test(test_defaults_from_node),
        cmocka_unit_test(test_long_values_survive_json),
        cmocka_unit_test(test_yaml_spec_file),
        cmocka_unit_test(test_golden_tcg_default),
        cmocka_unit_test(test_golden_kvm_two_gpus),
        cmocka_unit_test(test_golden_three_nics),
        cmocka_unit_test(test_nets_in_the_spec),
        cmocka_unit_test(test_gpus_in_the_spec),
        cmocka_unit_test(test_golden_kvm_seed_kernel_runas),
        cmocka_unit_test(test_golden_minimal_no_agent_no_sandbox),
        cmocka_unit_test(test_golden_numa_bind),
        cmocka_unit_test(test_golden_hugepages_2m_on_node),
        cmocka_unit_test(test_golden_hugepages_1g),
        cmocka_unit_test(test_commas_refused),
        cmocka_unit_test(test_seed_defaults),
        cmocka_unit_test(test_seed_fields_round_trip),
        cmocka_unit_test(test_seed_field_errors),
        cmocka_unit_test(test_user_data_keys),
        cmocka_unit_test(test_user_data_key_errors),
        cmocka_unit_test(test_lists_parsed_at_load),
        cmocka_unit_test(test_dup),
        cmocka_unit_test(test_firmware_and_cpu_model_keys),
        cmocka_unit_test(test_owner_and_slurm_job_keys),
        cmocka_unit_test(test_golden_uefi),
        cmocka_unit_test(test_golden_uefi_secure),
        cmocka_unit_test(test_golden_cpu_model),
        cmocka_unit_test(test_uefi_argv_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
