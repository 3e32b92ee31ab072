/* Names, sizes, durations, CPU lists, errno mapping. */
#include "testlib.h"

#include "error.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_names(void **state) {
    (void)state;
    assert_true(qv_has_suffix(".web.creating", ".creating"));
    assert_false(qv_has_suffix(".creating", ".creating")); /* nothing before it */
    assert_false(qv_has_suffix("web.creatin", ".creating"));
    assert_false(qv_has_suffix("", "x"));
    assert_true(qv_name_valid("web-1"));
    assert_true(qv_name_valid("0"));
    assert_true(qv_name_valid("a23456789012345678901234567890123456789012345678901234567890123"));
    assert_false(qv_name_valid("a234567890123456789012345678901234567890123456789012345678901234"));
    assert_false(qv_name_valid(""));
    assert_false(qv_name_valid(NULL));
    assert_false(qv_name_valid("../x"));
    assert_false(qv_name_valid("a/b"));
    assert_false(qv_name_valid("-a"));
    assert_false(qv_name_valid("Web"));
    assert_false(qv_name_valid("a.b"));
    assert_false(qv_name_valid("a b"));
}

static void test_sizes(void **state) {
    (void)state;
    uint64_t v;
    assert_int_equal(qv_parse_size("20G", &v), 0);
    assert_true(v == 20ull << 30);
    assert_int_equal(qv_parse_size("512M", &v), 0);
    assert_true(v == 512ull << 20);
    assert_int_equal(qv_parse_size("1TiB", &v), 0);
    assert_true(v == 1ull << 40);
    assert_int_equal(qv_parse_size("4096B", &v), 0);
    assert_true(v == 4096);
    assert_int_equal(qv_parse_size("0", &v), 0);
    assert_true(v == 0);
    /* the reference system's `--vm-disk 100` meant 100 bytes: never again */
    assert_int_equal(qv_parse_size("100", &v), -EINVAL);
    assert_int_equal(qv_parse_size("10X", &v), -EINVAL);
    assert_int_equal(qv_parse_size("-1G", &v), -EINVAL);
    assert_int_equal(qv_parse_size("1.5G", &v), -EINVAL);
    assert_int_equal(qv_parse_size("", &v), -EINVAL);
    assert_int_equal(qv_parse_size("99999999999T", &v), -ERANGE);
    char buf[32];
    qv_format_size(20ull << 30, buf, sizeof buf);
    assert_string_equal(buf, "20G");
    qv_format_size(1536ull << 10, buf, sizeof buf);
    assert_string_equal(buf, "1536K");
    qv_format_size(123, buf, sizeof buf);
    assert_string_equal(buf, "123B");
}

static void test_durations(void **state) {
    (void)state;
    uint64_t v;
    assert_int_equal(qv_parse_duration_ms("60", &v), 0);
    assert_true(v == 60000);
    assert_int_equal(qv_parse_duration_ms("500ms", &v), 0);
    assert_true(v == 500);
    assert_int_equal(qv_parse_duration_ms("2m", &v), 0);
    assert_true(v == 120000);
    assert_int_equal(qv_parse_duration_ms("1h", &v), 0);
    assert_true(v == 3600000);
    assert_int_equal(qv_parse_duration_ms("1d", &v), -EINVAL);
    assert_int_equal(qv_parse_duration_ms("s", &v), -EINVAL);
    char buf[32];
    qv_format_duration_ms(60000, buf, sizeof buf);
    assert_string_equal(buf, "60s");
    qv_format_duration_ms(1500, buf, sizeof buf);
    assert_string_equal(buf, "1500ms");
}

static void test_uint(void **state) {
    (void)state;
    uint64_t v;
    assert_int_equal(qv_parse_uint("8", 1, 8, &v), 0);
    assert_true(v == 8);
    assert_int_equal(qv_parse_uint("9", 1, 8, &v), -ERANGE);
    assert_int_equal(qv_parse_uint("0", 1, 8, &v), -ERANGE);
    assert_int_equal(qv_parse_uint("1x", 1, 8, &v), -EINVAL);
    assert_int_equal(qv_parse_uint("99999999999999999999999", 0, UINT64_MAX, &v), -ERANGE);
}

static void expect_cpulist(const char *s, const char *want) {
    unsigned *cpus = NULL;
    size_t n = 0;
    int r = qv_parse_cpulist(s, &cpus, &n);
    if (r < 0)
        fail_msg("'%s': %d", s, r);
    char buf[256];
    assert_int_equal(qv_format_cpulist(cpus, n, buf, sizeof buf), 0);
    if (strcmp(buf, want) != 0)
        fail_msg("'%s' gave '%s', want '%s'", s, buf, want);
    free(cpus);
}

static void test_cpulist(void **state) {
    (void)state;
    unsigned *cpus = NULL;
    size_t n = 0;
    assert_int_equal(qv_parse_cpulist("0-3,8,10-11", &cpus, &n), 0);
    assert_int_equal(n, 7);
    const unsigned want[] = {0, 1, 2, 3, 8, 10, 11};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(cpus[i], want[i]);
    free(cpus);

    expect_cpulist("0", "0");
    expect_cpulist("5-5", "5");
    expect_cpulist("0-3,8,10-11", "0-3,8,10-11");
    /* unsorted and overlapping items are merged, as the kernel does */
    expect_cpulist("8,0-3,2-4,4", "0-4,8");
    expect_cpulist("1,3,5,7", "1,3,5,7");
    expect_cpulist("8191", "8191");

    static const char *const bad[] = {
        "",      ",",    "0,",   ",0",   "0,,1", "3-1",  "-1",  "1-",   "1--2", "a",   "0x1",
        " 0",    "0 ",   "0\n", "0-3:2", "+1",   "1.0",  "0-1,a", "0;1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cpus = NULL;
        int r = qv_parse_cpulist(bad[i], &cpus, &n);
        if (r != -EINVAL)
            fail_msg("'%s': got %d, want -EINVAL", bad[i], r);
        assert_null(cpus);
    }
    assert_int_equal(qv_parse_cpulist("8192", &cpus, &n), -ERANGE);
    assert_int_equal(qv_parse_cpulist("0-99999999999999999999", &cpus, &n), -ERANGE);
    assert_int_equal(qv_parse_cpulist(NULL, &cpus, &n), -EINVAL);

    char buf[8];
    const unsigned many[] = {0, 2, 4, 6, 8};
    assert_int_equal(qv_format_cpulist(many, 5, buf, sizeof buf), -ENOBUFS);
    assert_string_equal(buf, "");
    assert_int_equal(qv_format_cpulist(many, 4, buf, sizeof buf), 0);
    assert_string_equal(buf, "0,2,4,6");
    assert_int_equal(qv_format_cpulist(NULL, 0, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
}

static void test_errors(void **state) {
    (void)state;
    qv_error err = {0};
    assert_int_equal(qv_error_set(&err, ENOENT, "no VM '%s'", "x"), -ENOENT);
    assert_int_equal(err.code, ENOENT);
    assert_string_equal(err.msg, "no VM 'x'");
    qv_error_prefix(&err, "stop %s", "x");
    assert_string_equal(err.msg, "stop x: no VM 'x'");
    assert_int_equal(qv_error_set(NULL, -EINVAL, "ignored"), -EINVAL);

    assert_int_equal(qv_exit_code_for_errno(0), 0);
    assert_int_equal(qv_exit_code_for_errno(-ENOENT), 66);
    assert_int_equal(qv_exit_code_for_errno(EEXIST), 73);
    assert_int_equal(qv_exit_code_for_errno(-EPERM), 77);
    assert_int_equal(qv_exit_code_for_errno(-EACCES), 77);
    assert_int_equal(qv_exit_code_for_errno(-ETIMEDOUT), 75);
    assert_int_equal(qv_exit_code_for_errno(-EINVAL), 65);
    assert_int_equal(qv_exit_code_for_errno(-ECONNREFUSED), 69);
    assert_int_equal(qv_exit_code_for_errno(-QV_ECONFIG), 78);
    assert_int_equal(qv_exit_code_for_errno(-QV_ECAPACITY), 75);
    assert_int_equal(qv_exit_code_for_errno(-ELOOP), 1);

    assert_string_equal(qv_errno_name(-ENOENT), "ENOENT");
    assert_string_equal(qv_errno_name(QV_ECONFIG), "ECONFIG");
    assert_int_equal(qv_errno_from_name("ECONFIG"), QV_ECONFIG);
    assert_int_equal(qv_errno_from_name("EPERM"), EPERM);
    assert_int_equal(qv_errno_from_name("nonsense"), EIO);
    assert_string_equal(qv_strerror(-QV_ECONFIG), "invalid configuration");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),      cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_durations),  cmocka_unit_test(test_uint),
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_cpulist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
