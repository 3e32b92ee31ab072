/* Framing: partial reads, many lines per read, oversize, garbage. */
#include "testlib.h"

#include "linebuf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char lines[16][64];
    int n;
    int stop_after;
} collected;

static int collect(const char *line, size_t len, void *userdata) {
    collected *c = userdata;
    assert_true(c->n < 16);
    assert_true(len < 64);
    memcpy(c->lines[c->n], line, len);
    c->lines[c->n][len] = '\0';
    c->n++;
    return c->stop_after && c->n == c->stop_after ? 42 : 0;
}

static void test_one_byte_at_a_time(void **state) {
    (void)state;
    qv_linebuf lb;
    qv_linebuf_init(&lb, 1024);
    collected c = {0};
    const char *in = "{\"a\":1}\n{\"b\":2}\n{\"c\"";
    for (size_t i = 0; i < strlen(in); i++)
        assert_int_equal(qv_linebuf_feed(&lb, in + i, 1, collect, &c), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.lines[0], "{\"a\":1}");
    assert_string_equal(c.lines[1], "{\"b\":2}");
    assert_int_equal(qv_linebuf_pending(&lb), 4);
    assert_int_equal(qv_linebuf_feed(&lb, ":3}\n", 4, collect, &c), 0);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.lines[2], "{\"c\":3}");
    assert_int_equal(qv_linebuf_pending(&lb), 0);
    qv_linebuf_free(&lb);
}

static void test_many_in_one_read(void **state) {
    (void)state;
    qv_linebuf lb;
    qv_linebuf_init(&lb, 1024);
    collected c = {0};
    const char *in = "one\ntwo\r\n\nthree\n";
    assert_int_equal(qv_linebuf_feed(&lb, in, strlen(in), collect, &c), 0);
    assert_int_equal(c.n, 4);
    assert_string_equal(c.lines[0], "one");
    assert_string_equal(c.lines[1], "two\r");
    assert_string_equal(c.lines[2], "");
    assert_string_equal(c.lines[3], "three");
    qv_linebuf_free(&lb);
}

static void test_stop_returns_callback_value(void **state) {
    (void)state;
    qv_linebuf lb;
    qv_linebuf_init(&lb, 1024);
    collected c = {.stop_after = 1};
    assert_int_equal(qv_linebuf_feed(&lb, "a\nb\n", 4, collect, &c), 42);
    assert_int_equal(c.n, 1);
    qv_linebuf_free(&lb);
}

static void test_oversize_line(void **state) {
    (void)state;
    qv_linebuf lb;
    qv_linebuf_init(&lb, 8);
    collected c = {0};
    /* exactly at the limit passes */
    assert_int_equal(qv_linebuf_feed(&lb, "12345678\n", 9, collect, &c), 0);
    assert_int_equal(c.n, 1);
    /* one more byte, in one piece and split over reads */
    assert_int_equal(qv_linebuf_feed(&lb, "123456789\n", 10, collect, &c), -EMSGSIZE);
    qv_linebuf_reset(&lb);
    assert_int_equal(qv_linebuf_feed(&lb, "12345", 5, collect, &c), 0);
    assert_int_equal(qv_linebuf_feed(&lb, "6789", 4, collect, &c), -EMSGSIZE);
    assert_int_equal(c.n, 1);
    qv_linebuf_free(&lb);
}

static int count_len(const char *line, size_t len, void *userdata) {
    (void)line;
    *(size_t *)userdata = len;
    return 0;
}

/* A long line's buffer is released once the line is handed over (and on a
 * reset): one long message does not pin its memory for the connection's
 * life.  A short line's buffer is kept for the next. */
static void test_long_line_buffer_released(void **state) {
    (void)state;
    qv_linebuf lb;
    qv_linebuf_init(&lb, 1u << 20);
    size_t got = 0;
    enum { CHUNK = 4096 };
    char chunk[CHUNK];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 64; i++) /* 256 KiB in pieces: buffered */
        assert_int_equal(qv_linebuf_feed(&lb, chunk, sizeof chunk, count_len, &got), 0);
    assert_true(lb.cap > QV_LINEBUF_KEEP);
    assert_int_equal(qv_linebuf_feed(&lb, "\n", 1, count_len, &got), 0);
    assert_int_equal(got, 64 * CHUNK);
    assert_null(lb.buf);
    assert_int_equal(lb.cap, 0);
    /* short lines keep their (small) buffer */
    assert_int_equal(qv_linebuf_feed(&lb, "abc", 3, count_len, &got), 0);
    assert_int_equal(qv_linebuf_feed(&lb, "def\n", 4, count_len, &got), 0);
    assert_int_equal(got, 6);
    assert_non_null(lb.buf);
    assert_true(lb.cap <= QV_LINEBUF_KEEP);
    /* a long partial line dropped by a reset goes too */
    for (int i = 0; i < 32; i++)
        assert_int_equal(qv_linebuf_feed(&lb, chunk, sizeof chunk, count_len, &got), 0);
    assert_true(lb.cap > QV_LINEBUF_KEEP);
    qv_linebuf_reset(&lb);
    assert_null(lb.buf);
    assert_int_equal(qv_linebuf_pending(&lb), 0);
    qv_linebuf_free(&lb);
}

static void test_garbage_and_nul_bytes(void **state) {
    (void)state;
    qv_linebuf lb;
    qv_linebuf_init(&lb, 64);
    collected c = {0};
    const char in[] = {'\xff', '\0', 'x', '\n', '\x01'};
    assert_int_equal(qv_linebuf_feed(&lb, in, sizeof in, collect, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(qv_linebuf_pending(&lb), 1);
    qv_linebuf_free(&lb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_byte_at_a_time),
        cmocka_unit_test(test_many_in_one_read),
        cmocka_unit_test(test_stop_returns_callback_value),
        cmocka_unit_test(test_oversize_line),
        cmocka_unit_test(test_garbage_and_nul_bytes),
        cmocka_unit_test(test_long_line_buffer_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
