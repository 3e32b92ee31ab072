/* Names, sizes, durations, errno mapping. */
#include "testlib.h"

#include "error.h"
#include "util.h"

#include <errno.h>
#include <string.h>

static void test_names(void **state) {
    (void)state;
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
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
