/* The capability probe against the real qemu-system-x86_64 on this host.
 * KVM may or may not work here, so only its consistency is checked; the
 * probe guest itself is proven under TCG. */
#include "testlib.h"

#include "cleanup.h"
#include "util.h"
#include "host/qemucaps.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *qemu_binary(void) {
    const char *q = getenv("QVISOR_TEST_QEMU");
    return q && *q ? q : "qemu-system-x86_64";
}

static void test_tcg_guest_runs_to_the_end(void **state) {
    (void)state;
    /* with and without the sandbox */
    for (int sandbox = 0; sandbox <= 1; sandbox++) {
        sv_qemu_guest_run g;
        qv_error err = {0};
        int r = sv_qemu_probe_guest(qemu_binary(), false, sandbox, (int)qv_test_timeout_ms(10000), &g, &err);
        if (r == -ENOENT)
            skip();
        assert_int_equal(r, 0);
        if (!g.completed)
            fail_msg("TCG probe guest (sandbox %d) failed: %s (stages '%s')", sandbox, g.detail, g.stages);
        assert_int_equal(g.exit_status, SV_QEMU_PROBE_EXIT_STATUS);
        assert_false(g.timed_out);
        assert_string_equal(g.stages, "RPL");
    }
}

static void test_probe(void **state) {
    (void)state;
    sv_qemu_caps c;
    qv_error err = {0};
    uint64_t t0 = qv_now_ms();
    int r = sv_qemu_caps_probe(qemu_binary(), true, &c, &err);
    uint64_t took = qv_now_ms() - t0;
    if (r == -ENOENT)
        skip();
    if (r < 0)
        fail_msg("probe failed: %s", err.msg);
    fprintf(stderr,
            "# probe took %llu ms: version %d.%d.%d ('%s'), sandbox %s (%s), kvm %s (%s)\n",
            (unsigned long long)took, c.major, c.minor, c.micro, c.version, c.sandbox ? "yes" : "no",
            c.sandbox_detail, c.kvm ? "yes" : "no", c.kvm_detail);

    assert_true(c.major >= 7);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%d.%d.%d", c.major, c.minor, c.micro);
    assert_true(strncmp(c.version, prefix, strlen(prefix)) == 0);
    /* Debian's QEMU is built with seccomp */
    assert_true(c.sandbox);
    assert_string_equal(c.sandbox_detail, "sandbox works");
    /* the CPU models of `-cpu help` (Debian's 7.2 lists about 115) */
    assert_true(c.n_cpu_models > 20);
    assert_true(sv_qemu_caps_has_cpu_model(&c, "max"));
    assert_true(sv_qemu_caps_has_cpu_model(&c, "host"));
    assert_true(sv_qemu_caps_has_cpu_model(&c, "qemu64"));
    if (c.kvm) {
        assert_string_equal(c.kvm_detail, "KVM works");
    } else {
        assert_true(c.kvm_detail[0] != '\0');
        assert_string_not_equal(c.kvm_detail, "KVM works");
        assert_null(strstr(c.kvm_detail, "not probed"));
    }

    /* whatever KVM did, auto resolves and says why when it falls back */
    bool kvm;
    char warning[512];
    assert_int_equal(sv_qemu_accel_resolve("auto", &c, &kvm, warning, sizeof warning, &err), 0);
    assert_int_equal(kvm, c.kvm);
    assert_int_equal(warning[0] != '\0', !c.kvm);
    assert_int_equal(sv_qemu_accel_resolve("kvm", &c, &kvm, NULL, 0, &err), c.kvm ? 0 : -ENODEV);
}

static void test_probe_without_kvm(void **state) {
    (void)state;
    sv_qemu_caps c;
    qv_error err = {0};
    int r = sv_qemu_caps_probe(qemu_binary(), false, &c, &err);
    if (r == -ENOENT)
        skip();
    assert_int_equal(r, 0);
    assert_false(c.kvm);
    assert_string_equal(c.kvm_detail, "not probed (accelerator: tcg)");
    assert_true(c.sandbox);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcg_guest_runs_to_the_end),
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_probe_without_kvm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
