/* cmd/output.c: what human output lets through to the terminal. */
#include "testlib.h"

#include "cmd/output.h"

#include <stdlib.h>
#include <string.h>

static void check(const char *in, bool keep_lines, const char *want) {
    char *got = qv_term_safe(in, keep_lines);
    if (strcmp(got, want) != 0)
        fail_msg("'%s' became '%s', want '%s'", in, got, want);
    free(got);
}

static void test_controls_are_escaped(void **state) {
    (void)state;
    check("10.0.0.1", false, "10.0.0.1");
    check("\x1b]0;pwned\x07\x1b[2J10.0.0.1 evil", false, "\\x1B]0;pwned\\x07\\x1B[2J10.0.0.1 evil");
    check("a\rb\x7f", true, "a\\x0Db\\x7F");
    check("line\nnext\tcol", false, "line\\x0Anext\\x09col");
    check("line\nnext\tcol", true, "line\nnext\tcol");
    /* C1 controls in UTF-8 (U+009B is a CSI to many terminals) */
    check("a\xc2\x9b" "2Jb", false, "a\\xC2\\x9B2Jb");
    /* other UTF-8 stays as it is */
    check("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", false, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    /* not UTF-8: a lone continuation, an overlong form, a truncated sequence */
    check("\x80x", false, "\\x80x");
    check("\xc0\x9b", false, "\\xC0\\x9B");
    check("\xe2\x82", false, "\\xE2\\x82");
    check("", false, "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_controls_are_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
