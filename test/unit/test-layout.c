/* Where a VM's files are (supervisor/vm/layout.h): the names built, the
 * inverse parsers (leftovers, -pidfile) and their refusals. */
#include "testlib.h"

#include "supervisor/vm/layout.h"

#include <errno.h>
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_leftover_name),
        cmocka_unit_test(test_pidfile_vm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
