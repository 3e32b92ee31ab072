/* Libraries loaded on first use (common/dlib): symbols resolved, a missing
 * library or symbol refused with a message that names it, the outcome kept
 * for later callers, and one load when threads race for it. */
#include "testlib.h"

#include "dlib.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* libm is not linked into this test (nothing here calls it directly), so
 * the lookup really goes through dlopen */
#define LIBM_FUNCTIONS(X, s) X(s, cos) X(s, sqrt)
QV_DLIB_DEFINE(M, LIBM_FUNCTIONS, "libm.so.6", "the test");

static void test_loads_and_resolves(void **state) {
    (void)state;
    qv_error err = {0};
    assert_null(M.cos);
    assert_int_equal(qv_dlib_load(&M_lib, &err), 0);
    assert_non_null(M.cos);
    assert_true(M.cos(0.0) == 1.0);
    assert_true(M.sqrt(49.0) == 7.0);
    /* a second call is a no-op that succeeds */
    assert_int_equal(qv_dlib_load(&M_lib, NULL), 0);
}

static void test_missing_library(void **state) {
    (void)state;
    static void (*p_x)(void);
    static const qv_dlsym syms[] = {QV_DLSYM(p_x, "x")};
    static qv_dlib lib = QV_DLIB_INIT("libqvisor-absent.so.9", "GPU discovery", syms);
    qv_error err = {0};
    assert_int_equal(qv_dlib_load(&lib, &err), -EOPNOTSUPP);
    assert_int_equal(err.code, EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "GPU discovery needs libqvisor-absent.so.9"));
    assert_null(p_x);
    /* remembered: the same answer again, with the same message */
    qv_error again = {0};
    assert_int_equal(qv_dlib_load(&lib, &again), -EOPNOTSUPP);
    assert_string_equal(again.msg, err.msg);
}

static void test_missing_symbol(void **state) {
    (void)state;
    static double (*p_ok)(double);
    static void (*p_absent)(void);
    static const qv_dlsym syms[] = {QV_DLSYM(p_ok, "cos"), QV_DLSYM(p_absent, "qvisor_no_such_function")};
    static qv_dlib lib = QV_DLIB_INIT("libm.so.6", "the NAT network", syms);
    qv_error err = {0};
    assert_int_equal(qv_dlib_load(&lib, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "libm.so.6 has no symbol qvisor_no_such_function"));
    assert_non_null(strstr(err.msg, "the NAT network needs libm.so.6"));
}

static double (*p_tan)(double);
static const qv_dlsym race_syms[] = {QV_DLSYM(p_tan, "tan")};
static qv_dlib race_lib = QV_DLIB_INIT("libm.so.6", "the test", race_syms);

static void *race(void *arg) {
    (void)arg;
    return (void *)(intptr_t)qv_dlib_load(&race_lib, NULL);
}

static void test_threads_race(void **state) {
    (void)state;
    pthread_t t[8];
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race, NULL), 0);
    for (size_t i = 0; i < 8; i++) {
        void *rc;
        assert_int_equal(pthread_join(t[i], &rc), 0);
        assert_int_equal((intptr_t)rc, 0);
    }
    assert_true(p_tan(0.0) == 0.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loads_and_resolves),
        cmocka_unit_test(test_missing_library),
        cmocka_unit_test(test_missing_symbol),
        cmocka_unit_test(test_threads_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
