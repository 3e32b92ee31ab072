/* The direct KVM probe: every outcome, through the scripted fake kernel
 * (test/lib/fakekvm.c), and the real open(2) of a device that is not there. */
#include "testlib.h"

#include "fakekvm.h"
#include "qv-build.h"
#include "host/kvmprobe.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static sv_kvm_probe probe_with(fake_kvm f, int timeout_ms) {
    fake_kvm_set(&f);
    sv_kvm_probe p;
    memset(&p, 0xa5, sizeof p);
    assert_int_equal(sv_kvm_probe_run(FAKE_KVM_DEVICE, &fake_kvm_ops, timeout_ms, &p), 0);
    /* no child is left behind, whatever happened */
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
    return p;
}

static sv_kvm_probe probe(fake_kvm f) {
    return probe_with(f, (int)qv_test_timeout_ms(5000));
}

static void test_works(void **state) {
    (void)state;
    /* E2BIG first: the probe grows its CPUID buffer */
    sv_kvm_probe p = probe((fake_kvm){.run = FAKE_RUN_WORKS, .cpuid_e2big = 2});
    assert_string_equal(p.detail, "API 12, vCPU runs (real, protected and long mode)");
    assert_int_equal(p.outcome, SV_KVM_WORKS);
    assert_int_equal(p.api_version, 12);
    assert_string_equal(p.stages, "RPL");
    assert_false(p.timed_out);
    assert_string_equal(p.call, "");
    assert_string_equal(sv_kvm_outcome_name(p.outcome), "works");
}

static void test_no_device(void **state) {
    (void)state;
    sv_kvm_probe p = probe((fake_kvm){.open_error = ENOENT});
    assert_int_equal(p.outcome, SV_KVM_ABSENT);
    assert_string_equal(p.detail, "No such file or directory");
    assert_string_equal(p.call, "open");
    assert_int_equal(p.api_version, -1);
    assert_string_equal(sv_kvm_outcome_name(p.outcome), "absent");

    /* the real open(2) of a path that does not exist */
    sv_kvm_probe q;
    assert_int_equal(sv_kvm_probe_run("/nonexistent/qvisor-test/kvm", NULL, (int)qv_test_timeout_ms(5000), &q), 0);
    assert_int_equal(q.outcome, SV_KVM_ABSENT);
}

static void test_denied(void **state) {
    (void)state;
    const int errs[] = {EACCES, EPERM};
    for (size_t i = 0; i < 2; i++) {
        sv_kvm_probe p = probe((fake_kvm){.open_error = errs[i]});
        assert_int_equal(p.outcome, SV_KVM_DENIED);
        assert_string_equal(p.detail, strerror(errs[i]));
    }
}

static void test_node_without_driver(void **state) {
    (void)state;
    sv_kvm_probe p = probe((fake_kvm){.open_error = ENXIO});
    assert_int_equal(p.outcome, SV_KVM_UNUSABLE);
    assert_string_equal(p.call, "open");
    assert_string_equal(p.detail, strerror(ENXIO));
}

static void test_wrong_api_version(void **state) {
    (void)state;
    sv_kvm_probe p = probe((fake_kvm){.api_version = 11});
    assert_int_equal(p.outcome, SV_KVM_UNUSABLE);
    assert_int_equal(p.api_version, 11);
    assert_string_equal(p.detail, "KVM API version 11, expected 12");
    assert_string_equal(p.call, "KVM_GET_API_VERSION");
}

static void test_create_vm_fails(void **state) {
    (void)state;
    sv_kvm_probe p = probe((fake_kvm){.create_vm_error = EINVAL});
    assert_int_equal(p.outcome, SV_KVM_UNUSABLE);
    assert_int_equal(p.api_version, 12);
    assert_string_equal(p.detail, "KVM_CREATE_VM: Invalid argument");
    assert_string_equal(p.call, "KVM_CREATE_VM");
}

static void test_internal_error(void **state) {
    (void)state;
    sv_kvm_probe p = probe((fake_kvm){.run = FAKE_RUN_INTERNAL_ERROR});
    assert_int_equal(p.outcome, SV_KVM_UNUSABLE);
    assert_string_equal(p.detail, "KVM_RUN: emulation failure entering protected mode");
    assert_string_equal(p.stages, "R");
    assert_string_equal(p.call, "KVM_RUN");
    assert_false(p.timed_out);
}

static void test_other_vcpu_failures(void **state) {
    (void)state;
    static const struct {
        fake_kvm_run run;
        const char *detail;
    } cases[] = {
        {FAKE_RUN_FAIL_ENTRY, "KVM_RUN: VM entry failed (hardware reason 0x80000021) in real mode, before the first marker"},
        {FAKE_RUN_SHUTDOWN, "KVM_RUN: the guest triple-faulted entering long mode"},
        {FAKE_RUN_EPERM, "KVM_RUN: Operation not permitted (in real mode, before the first marker)"},
        {FAKE_RUN_EARLY_HLT, "KVM_RUN: the guest halted early (markers 'R')"},
        {FAKE_RUN_CRASH, "the probe process died of signal 9 (Killed) during KVM_RUN"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sv_kvm_probe p = probe((fake_kvm){.run = cases[i].run});
        assert_int_equal(p.outcome, SV_KVM_UNUSABLE);
        assert_string_equal(p.detail, cases[i].detail);
        assert_string_equal(p.call, "KVM_RUN");
    }
}

static void test_hang_is_killed(void **state) {
    (void)state;
    int limit = (int)qv_test_timeout_ms(300);
    sv_kvm_probe p = probe_with((fake_kvm){.run = FAKE_RUN_HANG}, limit);
    assert_int_equal(p.outcome, SV_KVM_UNUSABLE);
    assert_true(p.timed_out);
    assert_string_equal(p.stages, "R");
    assert_string_equal(p.call, "KVM_RUN");
    char want[256];
    snprintf(want, sizeof want,
             "KVM_RUN did not return: the vCPU ran real-mode code, then made no progress entering protected "
             "mode (killed after %d ms)",
             limit);
    assert_string_equal(p.detail, want);
}

static void test_device_knob(void **state) {
    (void)state;
    unsetenv("QVISOR_TEST_KVM_DEVICE");
    assert_string_equal(sv_kvm_device(), "/dev/kvm");
#if !QV_TEST_HOOKS
    skip(); /* the knob exists only in builds with test hooks */
#endif
    setenv("QVISOR_TEST_KVM_DEVICE", "/nonexistent/kvm", 1);
    assert_string_equal(sv_kvm_device(), "/nonexistent/kvm");
    /* NULL device: the knob's */
    sv_kvm_probe p;
    assert_int_equal(sv_kvm_probe_run(NULL, NULL, (int)qv_test_timeout_ms(5000), &p), 0);
    assert_int_equal(p.outcome, SV_KVM_ABSENT);
    unsetenv("QVISOR_TEST_KVM_DEVICE");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_works),
        cmocka_unit_test(test_no_device),
        cmocka_unit_test(test_denied),
        cmocka_unit_test(test_node_without_driver),
        cmocka_unit_test(test_wrong_api_version),
        cmocka_unit_test(test_create_vm_fails),
        cmocka_unit_test(test_internal_error),
        cmocka_unit_test(test_other_vcpu_failures),
        cmocka_unit_test(test_hang_is_killed),
        cmocka_unit_test(test_device_knob),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
