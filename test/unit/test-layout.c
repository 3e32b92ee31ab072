/* Where a VM's files are (supervisor/vm/layout.h): the names built, the
 * inverse parsers (leftovers, -pidfile) and their refusals. */
#include "testlib.h"

#include "supervisor/vm/layout.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static sv_config conf(void) {
    sv_config c = {0};
    c.instances_dir = (char *)"/var/lib/qvisor/instances";
    c.run_dir = (char *)"/run/qvisor";
    return c;
}

static void test_paths(void **state) {
    (void)state;
    sv_config c = conf();
    char buf[256];
    assert_int_equal(sv_layout_instance_dir(&c, "web-1", buf, sizeof buf), 0);
    assert_string_equal(buf, "/var/lib/qvisor/instances/web-1");
    char file[300];
    assert_int_equal(sv_layout_instance_file(buf, SV_VM_DISK_FILE, file, sizeof file), 0);
    assert_string_equal(file, "/var/lib/qvisor/instances/web-1/disk.qcow2");
    assert_int_equal(sv_layout_run_path(&c, "web-1", SV_VM_QMP_SOCK, buf, sizeof buf), 0);
    assert_string_equal(buf, "/run/qvisor/vm/web-1/qmp.sock");
    assert_int_equal(sv_layout_run_path(&c, "web-1", NULL, buf, sizeof buf), 0);
    assert_string_equal(buf, "/run/qvisor/vm/web-1");
    assert_int_equal(sv_layout_run_root(&c, buf, sizeof buf), 0);
    assert_string_equal(buf, "/run/qvisor/vm");
    assert_int_equal(sv_layout_leftover("web-1", true, buf, sizeof buf), 0);
    assert_string_equal(buf, ".web-1.creating");
    assert_int_equal(sv_layout_leftover("web-1", false, buf, sizeof buf), 0);
    assert_string_equal(buf, ".web-1.removing");
    /* what does not fit is refused, never cut */
    char small[20];
    assert_int_equal(sv_layout_run_path(&c, "web-1", SV_VM_QMP_SOCK, small, sizeof small), -ENAMETOOLONG);
    assert_int_equal(sv_layout_instance_dir(&c, "web-1", small, sizeof small), -ENAMETOOLONG);
}

static void test_leftover_name(void **state) {
    (void)state;
    char name[64];
    bool creating = false;
    assert_true(sv_layout_leftover_name(".web-1.creating", name, &creating));
    assert_string_equal(name, "web-1");
    assert_true(creating);
    assert_true(sv_layout_leftover_name(".a.removing", name, &creating));
    assert_string_equal(name, "a");
    assert_false(creating);
    static const char *const bad[] = {
        "web-1",          ".creating",       "..creating",      ".Web.creating", ".web-1.creating.x",
        "web-1.creating", ".web/1.removing", ".web-1.partial",  "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(sv_layout_leftover_name(bad[i], name, &creating));
    char longest[80];
    snprintf(longest, sizeof longest, ".%063d.creating", 0);
    assert_true(sv_layout_leftover_name(longest, name, &creating));
    snprintf(longest, sizeof longest, ".%064d.creating", 0);
    assert_false(sv_layout_leftover_name(longest, name, &creating));
}

static void test_pidfile_vm(void **state) {
    (void)state;
    sv_config c = conf();
    char name[64];
    assert_true(sv_layout_pidfile_vm(&c, "/run/qvisor/vm/web-1/qemu.pid", name));
    assert_string_equal(name, "web-1");
    static const char *const bad[] = {
        "/run/qvisor/vm/web-1/qemu.pid.x", "/run/qvisor/vm/web-1/other.pid", "/run/qvisor/vmx/web-1/qemu.pid",
        "/run/qvisor/vm/Web/qemu.pid",     "/run/qvisor/vm//qemu.pid",       "/run/other/vm/web-1/qemu.pid",
        "/run/qvisor/vm/a/b/qemu.pid",     "/run/qvisor/vm/web-1",           "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(sv_layout_pidfile_vm(&c, bad[i], name));
}

static void test_copy_mark(void **state) {
    (void)state;
    char buf[256];
    assert_int_equal(sv_layout_copy_mark(0x0123456789abcdefull, buf, sizeof buf), 0);
    assert_string_equal(buf, "copy-in.0123456789abcdef");
    assert_true(sv_layout_copy_mark_entry(buf));
    assert_false(sv_layout_copy_mark_entry("copy-in.0123456789ABCDEF"));
    assert_false(sv_layout_copy_mark_entry("copy-in.0123456789abcde"));
    assert_false(sv_layout_copy_mark_entry("copy-in.0123456789abcdef0"));
    assert_false(sv_layout_copy_mark_entry("copy-in.0123456789abcdef.tmp"));
    assert_false(sv_layout_copy_mark_entry("state.json"));
    assert_int_equal(sv_layout_guest_tmp("/root/data.bin", 0xabcull, buf, sizeof buf), 0);
    assert_string_equal(buf, "/root/.data.bin.qvisor-0000000000000abc");
    assert_int_equal(sv_layout_guest_tmp("/x", 1, buf, sizeof buf), 0);
    assert_string_equal(buf, "/.x.qvisor-0000000000000001");
    assert_int_equal(sv_layout_guest_tmp("/root/", 1, buf, sizeof buf), -EINVAL);
    assert_int_equal(sv_layout_guest_tmp("rel", 1, buf, sizeof buf), -EINVAL);
    char small[10];
    assert_int_equal(sv_layout_guest_tmp("/root/data.bin", 1, small, sizeof small), -ENAMETOOLONG);
}

/* What the daemon reads back from a mark before removing that path in the
 * guest: only a temporary name of its own making passes. */
static void test_copy_mark_parse(void **state) {
    (void)state;
    char out[SV_GUEST_PATH_MAX + 1];
    const char *good[] = {"/root/.data.bin.qvisor-0123456789abcdef", "/root/.data.bin.qvisor-0123456789abcdef\n",
                          "/.x.qvisor-ffffffffffffffff", "/a b/.\xc3\xa9.qvisor-0000000000000000"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        assert_int_equal(sv_layout_copy_mark_parse(good[i], strlen(good[i]), out, sizeof out), 0);
        assert_int_equal(strncmp(out, good[i], strlen(out)), 0);
        assert_true(strchr(out, '\n') == NULL);
    }
    const char *bad[] = {
        "",
        "\n",
        "/etc/passwd",
        "/",
        "relative/.x.qvisor-0123456789abcdef",
        "/root/..qvisor-0123456789abcdef",           /* no X */
        "/root/x.qvisor-0123456789abcdef",           /* no leading dot */
        "/root/.x.qvisor-0123456789ABCDEF",          /* upper case */
        "/root/.x.qvisor-0123456789abcde",           /* 15 digits */
        "/root/.x.qvisor-0123456789abcdefa",         /* 17 */
        "/root/.x.qvisor-0123456789abcdef/",         /* a directory */
        "/root/.x.qvisor-0123456789abcdef/passwd",   /* below one */
        "/root/.x.qvisor-0123456789abcdef\n\n",      /* two lines */
        "/etc/passwd\n/root/.x.qvisor-0123456789abcdef",
        "/root/.x.qvisor-0123456789abcdef\r",
        "/root/\x01.x.qvisor-0123456789abcdef",
        "/root/.x.qvisor_0123456789abcdef",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sv_layout_copy_mark_parse(bad[i], strlen(bad[i]), out, sizeof out), -EINVAL);
    /* a NUL inside: the length says there is more than the string */
    static const char nul[] = "/etc/passwd\0/root/.x.qvisor-0123456789abcdef";
    assert_int_equal(sv_layout_copy_mark_parse(nul, sizeof nul - 1, out, sizeof out), -EINVAL);
    /* too long for the guest */
    char *longp = malloc(SV_GUEST_PATH_MAX + 64);
    assert_non_null(longp);
    memset(longp, 'a', SV_GUEST_PATH_MAX + 63);
    longp[0] = '/';
    strcpy(longp + SV_GUEST_PATH_MAX + 63 - 27, "/.x.qvisor-0123456789abcdef");
    assert_int_equal(sv_layout_copy_mark_parse(longp, strlen(longp), out, sizeof out), -EINVAL);
    free(longp);
    char small[8];
    assert_int_equal(sv_layout_copy_mark_parse(good[0], strlen(good[0]), small, sizeof small), -ENAMETOOLONG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_leftover_name),
        cmocka_unit_test(test_pidfile_vm),
        cmocka_unit_test(test_copy_mark),
        cmocka_unit_test(test_copy_mark_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
