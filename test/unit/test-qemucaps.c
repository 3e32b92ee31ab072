/* Accelerator resolution (every combination) and how the probe reads a
 * QEMU that fails, driven by a scripted fake QEMU. */
#include "testlib.h"

#include "cleanup.h"
#include "host/qemucaps.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static sv_qemu_caps caps_with(bool kvm, const char *detail) {
    sv_qemu_caps c = {.major = 7, .minor = 2, .micro = 22, .sandbox = true, .kvm = kvm};
    snprintf(c.version, sizeof c.version, "7.2.22");
    snprintf(c.kvm_detail, sizeof c.kvm_detail, "%s", detail);
    return c;
}

static void test_resolve_kvm_works(void **state) {
    (void)state;
    sv_qemu_caps c = caps_with(true, "KVM works");
    const char *accels[] = {"auto", "kvm", "tcg"};
    const bool want[] = {true, true, false};
    for (size_t i = 0; i < 3; i++) {
        bool kvm = !want[i];
        char warning[256] = "stale";
        qv_error err = {0};
        assert_int_equal(sv_qemu_accel_resolve(accels[i], &c, &kvm, warning, sizeof warning, &err), 0);
        assert_int_equal(kvm, want[i]);
        assert_string_equal(warning, "");
        assert_int_equal(err.code, 0);
    }
}

static void test_resolve_kvm_broken(void **state) {
    (void)state;
    sv_qemu_caps c = caps_with(false, "QEMU aborted: failed to set MSR 0x10a to 0x69");

    /* auto: TCG, and one warning line that says why */
    bool kvm = true;
    char warning[256] = "stale";
    qv_error err = {0};
    assert_int_equal(sv_qemu_accel_resolve("auto", &c, &kvm, warning, sizeof warning, &err), 0);
    assert_false(kvm);
    assert_non_null(strstr(warning, "KVM is unusable on this node (QEMU aborted: failed to set MSR 0x10a to 0x69)"));
    assert_non_null(strstr(warning, "falls back to TCG"));
    assert_null(strchr(warning, '\n'));

    /* kvm: refused, out-parameters untouched */
    kvm = true;
    snprintf(warning, sizeof warning, "untouched");
    assert_int_equal(sv_qemu_accel_resolve("kvm", &c, &kvm, warning, sizeof warning, &err), -ENODEV);
    assert_int_equal(err.code, ENODEV);
    assert_string_equal(err.msg, "accelerator kvm is configured but KVM is unusable on this node: "
                                 "QEMU aborted: failed to set MSR 0x10a to 0x69");
    assert_true(kvm);
    assert_string_equal(warning, "untouched");

    /* tcg: TCG, nothing to warn about */
    kvm = true;
    assert_int_equal(sv_qemu_accel_resolve("tcg", &c, &kvm, warning, sizeof warning, NULL), 0);
    assert_false(kvm);
    assert_string_equal(warning, "");
}

static void test_resolve_not_probed(void **state) {
    (void)state;
    sv_qemu_caps c = caps_with(false, "not probed (accelerator: tcg)");
    bool kvm = true;
    qv_error err = {0};
    /* no warning buffer: fine */
    assert_int_equal(sv_qemu_accel_resolve("auto", &c, &kvm, NULL, 0, &err), 0);
    assert_false(kvm);
    /* NULL caps: tcg needs none; the others count it as not probed */
    kvm = true;
    assert_int_equal(sv_qemu_accel_resolve("tcg", NULL, &kvm, NULL, 0, &err), 0);
    assert_false(kvm);
    assert_int_equal(sv_qemu_accel_resolve("kvm", NULL, &kvm, NULL, 0, &err), -ENODEV);
    assert_non_null(strstr(err.msg, "not probed"));
    char warning[8]; /* a short buffer is truncated, still terminated */
    kvm = true;
    assert_int_equal(sv_qemu_accel_resolve("auto", NULL, &kvm, warning, sizeof warning, NULL), 0);
    assert_false(kvm);
    assert_string_equal(warning, "KVM is ");
}

static void test_resolve_unknown(void **state) {
    (void)state;
    sv_qemu_caps c = caps_with(true, "KVM works");
    const char *bad[] = {"", "KVM", "hvf", "kvm ", NULL};
    for (size_t i = 0; i < QV_ARRAY_SIZE(bad); i++) {
        bool kvm = false;
        qv_error err = {0};
        assert_int_equal(sv_qemu_accel_resolve(bad[i], &c, &kvm, NULL, 0, &err), -EINVAL);
        assert_int_equal(err.code, EINVAL);
        assert_non_null(strstr(err.msg, "expected auto, kvm or tcg"));
    }
}

/* A fake QEMU whose behaviour QV_FAKE_QEMU_MODE picks. */
static const char fake_qemu[] =
    "#!/bin/sh\n"
    "if [ \"$1\" = -version ]; then\n"
    "  case \"$QV_FAKE_QEMU_MODE\" in\n"
    "  badversion) echo 'hello'; exit 0;;\n"
    "  failversion) echo 'fake-qemu: cannot start' >&2; exit 2;;\n"
    "  esac\n"
    "  echo 'QEMU emulator version 9.1.50 (v9.1.0-1234-gdeadbeef)  '\n"
    "  echo 'Copyright (c) 2003-2024 Fabrice Bellard and the QEMU Project developers'\n"
    "  exit 0\n"
    "fi\n"
    "if [ \"$1\" = -cpu ]; then\n"
    "  case \"$QV_FAKE_QEMU_MODE\" in\n"
    "  nocpus) echo 'fake-qemu: -cpu help: unsupported' >&2; exit 1;;\n"
    "  esac\n"
    "  printf 'Available CPUs:\\nx86 486                   (alias configured by machine type)\\n'\n"
    "  printf 'x86 EPYC-Rome-v1         AMD EPYC-Rome Processor\\nx86 Skylake-Client-v4  Intel Core\\n'\n"
    "  printf 'x86 host                  processor with all supported host features \\n'\n"
    "  printf 'x86 max                   Enables all features\\n\\nRecognized CPUID flags:\\n  3dnow avx\\n'\n"
    "  exit 0\n"
    "fi\n"
    "case \"$QV_FAKE_QEMU_MODE\" in\n"
    "ok) printf RPL; exit 85;;\n"
    "abort)\n"
    "  echo \"fake-qemu: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]\" >&2\n"
    "  echo 'fake-qemu: error: failed to set MSR 0x10a to 0x69' >&2\n"
    "  echo \"fake-qemu: kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\" >&2\n"
    "  kill -ABRT $$;;\n"
    "internal)\n"
    "  printf R\n"
    "  printf 'KVM internal error. Suberror: 1\\nextra data[0]: 0x0\\nemulation failure\\nEAX=00000000\\n' >&2\n"
    "  exec sleep 30;;\n"
    "hang) printf RP; exec sleep 30;;\n"
    "nosandbox) echo 'fake-qemu: -sandbox is not supported by this QEMU build' >&2; exit 1;;\n"
    "reset) printf R; exit 0;;\n"
    "esac\n"
    "exit 3\n";

static char *fake_dir;
static char fake_path[PATH_MAX];

static int fake_setup(void **state) {
    (void)state;
    fake_dir = qv_test_mkdtemp("qv-qemucaps");
    qv_test_write(fake_dir, "fake-qemu", fake_qemu);
    snprintf(fake_path, sizeof fake_path, "%s/fake-qemu", fake_dir);
    assert_int_equal(chmod(fake_path, 0755), 0);
    return 0;
}

static int fake_teardown(void **state) {
    (void)state;
    qv_test_rm_rf(fake_dir);
    free(fake_dir);
    fake_dir = NULL;
    unsetenv("QV_FAKE_QEMU_MODE");
    return 0;
}

static sv_qemu_guest_run fake_guest(const char *mode, int timeout_ms) {
    setenv("QV_FAKE_QEMU_MODE", mode, 1);
    sv_qemu_guest_run g;
    qv_error err = {0};
    assert_int_equal(sv_qemu_probe_guest(fake_path, true, false, timeout_ms, &g, &err), 0);
    return g;
}

static void test_guest_outcomes(void **state) {
    (void)state;
    int t = (int)qv_test_timeout_ms(3000);

    sv_qemu_guest_run g = fake_guest("ok", t);
    assert_true(g.completed);
    assert_int_equal(g.exit_status, SV_QEMU_PROBE_EXIT_STATUS);
    assert_string_equal(g.stages, "RPL");
    assert_string_equal(g.detail, "guest reached long mode");

    g = fake_guest("abort", t);
    assert_false(g.completed);
    assert_false(g.timed_out);
    assert_int_equal(g.exit_status, -1);
    assert_string_equal(g.detail, "QEMU aborted: failed to set MSR 0x10a to 0x69");

    g = fake_guest("nosandbox", t);
    assert_false(g.completed);
    assert_int_equal(g.exit_status, 1);
    assert_string_equal(g.detail, "QEMU exited with status 1: -sandbox is not supported by this QEMU build");

    g = fake_guest("reset", t);
    assert_false(g.completed);
    assert_int_equal(g.exit_status, 0);
    assert_non_null(strstr(g.detail, "reset"));
    assert_non_null(strstr(g.detail, "entering protected mode"));

    g = fake_guest("other", t);
    assert_int_equal(g.exit_status, 3);
    assert_string_equal(g.detail, "QEMU exited with status 3: no guest instruction ran");
}

static void test_guest_hangs(void **state) {
    (void)state;
    /* long enough for the shell to print before it is killed */
    int t = (int)qv_test_timeout_ms(500);

    sv_qemu_guest_run g = fake_guest("internal", t);
    assert_false(g.completed);
    assert_true(g.timed_out);
    assert_int_equal(g.exit_status, -1);
    assert_string_equal(g.stages, "R");
    assert_string_equal(g.detail, "KVM internal error: emulation failure");

    g = fake_guest("hang", t);
    assert_true(g.timed_out);
    assert_string_equal(g.stages, "RP");
    char want[256];
    snprintf(want, sizeof want,
             "the guest reached protected mode, then stopped making progress entering long mode "
             "(QEMU killed after %d ms)",
             t);
    assert_string_equal(g.detail, want);
}

static void test_caps_from_fake(void **state) {
    (void)state;
    sv_qemu_caps c;
    qv_error err = {0};

    setenv("QV_FAKE_QEMU_MODE", "ok", 1);
    assert_int_equal(sv_qemu_caps_probe(fake_path, false, &c, &err), 0);
    assert_int_equal(c.major, 9);
    assert_int_equal(c.minor, 1);
    assert_int_equal(c.micro, 50);
    assert_string_equal(c.version, "9.1.50 (v9.1.0-1234-gdeadbeef)");
    assert_true(c.sandbox);
    assert_string_equal(c.sandbox_detail, "sandbox works");
    assert_false(c.kvm);
    assert_string_equal(c.kvm_detail, "not probed (accelerator: tcg)");

    /* the CPU models, in QEMU's order, without the flags after the list */
    assert_int_equal(c.n_cpu_models, 5);
    assert_true(sv_qemu_caps_has_cpu_model(&c, "EPYC-Rome-v1"));
    assert_true(sv_qemu_caps_has_cpu_model(&c, "max"));
    assert_false(sv_qemu_caps_has_cpu_model(&c, "avx"));
    assert_false(sv_qemu_caps_has_cpu_model(&c, "Available"));

    setenv("QV_FAKE_QEMU_MODE", "nocpus", 1);
    assert_int_equal(sv_qemu_caps_probe(fake_path, false, &c, &err), 0);
    assert_int_equal(c.n_cpu_models, 0);
    assert_non_null(strstr(c.cpu_models_detail, "-cpu help' exited with status 1"));

    setenv("QV_FAKE_QEMU_MODE", "nosandbox", 1);
    assert_int_equal(sv_qemu_caps_probe(fake_path, false, &c, &err), 0);
    assert_false(c.sandbox);
    assert_non_null(strstr(c.sandbox_detail, "-sandbox is not supported"));

    setenv("QV_FAKE_QEMU_MODE", "badversion", 1);
    assert_int_equal(sv_qemu_caps_probe(fake_path, false, &c, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "printed no QEMU version: 'hello'"));

    setenv("QV_FAKE_QEMU_MODE", "failversion", 1);
    assert_int_equal(sv_qemu_caps_probe(fake_path, false, &c, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "exited with status 2: cannot start"));
}

static void test_cpu_model_check(void **state) {
    (void)state;
    sv_qemu_caps c = {0};
    snprintf(c.version, sizeof c.version, "7.2.22");
    snprintf(c.kvm_detail, sizeof c.kvm_detail, "QEMU aborted: failed to set MSR 0x10a to 0x69");
    const char *help = "Available CPUs:\n"
                       "x86 486                   (alias configured by machine type)\n"
                       "x86 Skylake-Client        (alias configured by machine type)\n"
                       "x86 Skylake-Client-IBRS   (alias of Skylake-Client-v2)\n"
                       "x86 Skylake-Client-v4     Intel Core Processor (Skylake) [IBRS, no TSX]\n"
                       "x86 Skylake-Server        (alias configured by machine type)\n"
                       "x86 qemu64                (alias configured by machine type)\n"
                       "x86 host                  processor with all supported host features \n"
                       "x86 max                   Enables all features supported by the accelerator\n"
                       "\n"
                       "Recognized CPUID flags:\n"
                       "  3dnow 3dnowext 3dnowprefetch abm ace2\n";
    assert_int_equal(sv_qemu_cpu_models_parse(help, &c), 8);
    qv_error err = {0};
    assert_int_equal(sv_qemu_cpu_model_check(&c, false, "Skylake-Client-v4", &err), 0);
    assert_int_equal(sv_qemu_cpu_model_check(&c, false, "max", &err), 0);
    assert_int_equal(sv_qemu_cpu_model_check(&c, true, "host", &err), 0);
    /* host under TCG: QEMU would refuse it at start */
    assert_int_equal(sv_qemu_cpu_model_check(&c, false, "host", &err), -EOPNOTSUPP);
    assert_string_equal(err.msg, "cpu_model host needs KVM, and VMs on this node run under TCG (KVM: QEMU aborted: "
                                 "failed to set MSR 0x10a to 0x69); use max, a named model, or leave cpu_model unset "
                                 "(host under KVM, max under TCG)");
    /* unknown: names similar ones, the same name in another case first */
    assert_int_equal(sv_qemu_cpu_model_check(&c, false, "skylake-client", &err), -EINVAL);
    assert_string_equal(err.msg, "cpu_model 'skylake-client': QEMU 7.2.22 has no such CPU model; similar: "
                                 "Skylake-Client, Skylake-Client-IBRS, Skylake-Client-v4 (the list: "
                                 "qemu-system-x86_64 -cpu help)");
    assert_int_equal(sv_qemu_cpu_model_check(&c, false, "Pentium9000", &err), -EINVAL);
    assert_string_equal(err.msg, "cpu_model 'Pentium9000': QEMU 7.2.22 has no such CPU model (the list: "
                                 "qemu-system-x86_64 -cpu help)");
    /* the flags after the list are not models */
    assert_int_equal(sv_qemu_cpu_model_check(&c, false, "abm", &err), -EINVAL);
    /* no list at all: cannot tell */
    sv_qemu_caps none = {0};
    assert_int_equal(sv_qemu_cpu_models_parse("qemu: unknown option\n", &none), 0);
    snprintf(none.cpu_models_detail, sizeof none.cpu_models_detail, "'qemu -cpu help' exited with status 1");
    assert_int_equal(sv_qemu_cpu_model_check(&none, false, "max", &err), -EPROTO);
    assert_non_null(strstr(err.msg, "QEMU listed no CPU models ('qemu -cpu help' exited with status 1)"));
}

static void test_caps_missing_binary(void **state) {
    (void)state;
    sv_qemu_caps c = {.major = 42};
    qv_error err = {0};
    assert_int_equal(sv_qemu_caps_probe("/nonexistent/qemu-system-x86_64", true, &c, &err), -ENOENT);
    assert_int_equal(err.code, ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/qemu-system-x86_64"));
    assert_int_equal(c.major, 42); /* untouched on failure */
    assert_int_equal(sv_qemu_caps_probe("qv-no-such-qemu", false, &c, &err), -ENOENT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_kvm_works),
        cmocka_unit_test(test_resolve_kvm_broken),
        cmocka_unit_test(test_resolve_not_probed),
        cmocka_unit_test(test_resolve_unknown),
        cmocka_unit_test_setup_teardown(test_guest_outcomes, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_guest_hangs, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_caps_from_fake, fake_setup, fake_teardown),
        cmocka_unit_test(test_caps_missing_binary),
        cmocka_unit_test(test_cpu_model_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
