/* Reading `qemu-img convert -p` progress from output chunks split anywhere. */
#include "testlib.h"

#include "supervisor/images/image.h"

#include <string.h>

static bool feed(sv_qemu_img_progress *p, const char *s) {
    return sv_qemu_img_progress_feed(p, s, strlen(s));
}

static void test_records_and_chunks(void **state) {
    (void)state;
    sv_qemu_img_progress p;
    sv_qemu_img_progress_init(&p);
    assert_true(p.percent < 0);
    assert_false(feed(&p, "    (0.00/100%)")); /* not ended yet */
    assert_true(feed(&p, "\r"));
    assert_true(p.percent == 0.0);
    assert_false(feed(&p, "    (0.00/100%)\r")); /* same value again */
    /* qemu-img as it comes: several records in one chunk, one split in two */
    assert_true(feed(&p, "    (2.00/100%)\r    (4.00/100%)\r    (6."));
    assert_true(p.percent == 4.0);
    assert_true(feed(&p, "50/100%)\r"));
    assert_true(p.percent == 6.5);
    /* byte by byte */
    const char *rec = "    (42.25/100%)\r";
    bool changed = false;
    for (const char *c = rec; *c; c++)
        changed |= sv_qemu_img_progress_feed(&p, c, 1);
    assert_true(changed);
    assert_true(p.percent == 42.25);
    assert_true(feed(&p, "    (100.00/100%)\n"));
    assert_true(p.percent == 100.0);
}

static void test_noise_is_ignored(void **state) {
    (void)state;
    sv_qemu_img_progress p;
    sv_qemu_img_progress_init(&p);
    assert_false(feed(&p, "\r\n\r"));
    assert_false(feed(&p, "some warning\n"));
    assert_false(feed(&p, "(12/99%)\r"));
    assert_false(feed(&p, "(abc/100%)\r"));
    assert_false(feed(&p, "    (101.00/100%)\r"));
    assert_false(feed(&p, "    (-1.00/100%)\r"));
    assert_false(feed(&p, "    (5.00/100%) trailing\r"));
    /* a record too long to be progress is skipped to its end, not cut */
    char big[300];
    memset(big, ' ', sizeof big);
    memcpy(big + sizeof big - 20, "    (7.00/100%)", 15);
    assert_false(sv_qemu_img_progress_feed(&p, big, sizeof big - 5));
    assert_false(feed(&p, "\r"));
    assert_true(p.percent < 0);
    /* and parsing goes on after it; a decimal comma is read too */
    assert_true(feed(&p, "    (8,50/100%)\r"));
    assert_true(p.percent == 8.5);
}

static void test_hostile_values(void **state) {
    (void)state;
    sv_qemu_img_progress p;
    sv_qemu_img_progress_init(&p);
    assert_false(feed(&p, "    (nan/100%)\r"));
    assert_false(feed(&p, "    (inf/100%)\r"));
    assert_false(feed(&p, "    (-0x1p3/100%)\r"));
    assert_false(feed(&p, "    (1e999/100%)\r"));
    assert_false(feed(&p, "(/100%)\r"));
    /* a NUL inside a record ends nothing early */
    static const char nul[] = "    (5\0junk/100%)\r";
    assert_false(sv_qemu_img_progress_feed(&p, nul, sizeof nul - 1));
    assert_true(p.percent < 0);
    assert_true(feed(&p, "(100.00/100%)\n"));
    assert_true(p.percent == 100);
}

static void test_convert_args(void **state) {
    (void)state;
    const char *args[SV_QEMU_IMG_CONVERT_ARGS_MAX];
    /* vm clone: an overlay on the base, only the differing clusters */
    size_t n = sv_qemu_img_convert_args("/proc/1/fd/5", "/proc/1/fd/6", "/img/base.qcow2", args);
    const char *const overlay[] = {"convert", "-p", "-f", "qcow2", "-O", "qcow2", "-B", "/img/base.qcow2",
                                   "-F", "qcow2", "/proc/1/fd/5", "/proc/1/fd/6"};
    assert_int_equal(n, sizeof overlay / sizeof *overlay);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(args[i], overlay[i]);
    assert_null(args[n]);
    /* image create --from-vm: flattened, no backing file */
    n = sv_qemu_img_convert_args("/proc/1/fd/5", "/proc/1/fd/6", NULL, args);
    const char *const flat[] = {"convert", "-p", "-f", "qcow2", "-O", "qcow2", "/proc/1/fd/5", "/proc/1/fd/6"};
    assert_int_equal(n, sizeof flat / sizeof *flat);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(args[i], flat[i]);
    assert_null(args[n]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_and_chunks),
        cmocka_unit_test(test_noise_is_ignored),
        cmocka_unit_test(test_hostile_values),
        cmocka_unit_test(test_convert_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
