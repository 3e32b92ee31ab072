/* The pre-check in front of libyaml (common/yamlguard.c) and the parsers
 * that run it: deep or large input is refused quickly, ordinary YAML is not. */
#include "testlib.h"

#include "cleanup.h"
#include "cloudinit/nocloud.h"
#include "spec/config.h"
#include "spec/vmspec.h"
#include "yamlguard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yaml.h>

/* prefix + n copies of unit + suffix, in a new buffer */
static char *repeat(const char *prefix, const char *unit, size_t n, const char *suffix) {
    size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
    char *b = malloc(pl + ul * n + sl + 1);
    assert_non_null(b);
    memcpy(b, prefix, pl);
    for (size_t i = 0; i < n; i++)
        memcpy(b + pl + i * ul, unit, ul);
    memcpy(b + pl + ul * n, suffix, sl + 1);
    return b;
}

static int guard(const char *s, qv_yaml_guard_error *e) {
    return qv_yaml_guard(s, strlen(s), e);
}

static void test_ordinary_yaml_passes(void **state) {
    (void)state;
    static const char *ok[] = {
        "",
        "#cloud-config\n"
        "users:\n"
        "  - name: ann\n"
        "    ssh_authorized_keys: [ssh-ed25519 AAAA x@y]\n"
        "runcmd:\n"
        "  - [sh, -c, 'echo \"[[[[\" > /x']\n"
        "  - |\n"
        "    if [ -f /x ]; then echo '{{{{{'; fi\n"
        "    [[ -d /y ]] && echo ok\n"
        "write_files:\n"
        "  - path: /etc/x\n"
        "    content: >-\n"
        "      folded [text {here\n"
        "# a comment [[[[[[[[[[[[\n"
        "key: value # [[[[[[\n"
        "plain: it's fine [ and on\n"
        "  the next line 'too\n"
        "other: {a: [1, 2, {b: c}], 'd': \"e\"}\n",
        "network:\n  version: 2\n  ethernets:\n    nic0:\n      match: {macaddress: \"52:54:00:12:34:56\"}\n"
        "      dhcp4: true\n",
        "--- |\n  text [[[[\n...\n",
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(ok); i++) {
        qv_yaml_guard_error e = {0};
        if (guard(ok[i], &e) != 0)
            fail_msg("case %zu refused: line %zu: %s", i, e.line, e.why);
    }
    /* exactly the limit */
    _cleanup_free_ char *flow = repeat("a: ", "[", QV_YAML_MAX_DEPTH, "");
    assert_int_equal(guard(flow, NULL), 0);
    _cleanup_free_ char *seq = repeat("", "- ", QV_YAML_MAX_DEPTH, "x\n");
    assert_int_equal(guard(seq, NULL), 0);
    /* brackets in quotes and comments are not nesting (up to the raw limit) */
    _cleanup_free_ char *quoted = repeat("a: '", "[", QV_YAML_MAX_RAW_BRACKETS, "'\n");
    assert_int_equal(guard(quoted, NULL), 0);
    /* an escaped quote does not end the scalar */
    _cleanup_free_ char *escaped = repeat("a: \"x\\\"\nd: ", "[", 200, "\"\n");
    assert_int_equal(guard(escaped, NULL), 0);
    _cleanup_free_ char *doubled = repeat("a: 'x''\nd: ", "[", 200, "'\n");
    assert_int_equal(guard(doubled, NULL), 0);
}

static void test_deep_flow_refused(void **state) {
    (void)state;
    qv_yaml_guard_error e = {0};
    _cleanup_free_ char *flow = repeat("x: 1\na: ", "[", QV_YAML_MAX_DEPTH + 1, "");
    assert_int_equal(guard(flow, &e), -ELOOP);
    assert_int_equal(e.line, 2);
    assert_int_equal(e.column, 4 + QV_YAML_MAX_DEPTH);
    assert_non_null(strstr(e.why, "more than 64 nested"));
    _cleanup_free_ char *mixed = repeat("a: ", "{b: [", 40, "");
    assert_int_equal(guard(mixed, NULL), -ELOOP);
    /* one per line, in a flow collection */
    _cleanup_free_ char *lines = repeat("a:\n", "  [\n", 100, "");
    assert_int_equal(guard(lines, NULL), -ELOOP);
}

static void test_deep_block_refused(void **state) {
    (void)state;
    qv_yaml_guard_error e = {0};
    _cleanup_free_ char *seq = repeat("", "- ", QV_YAML_MAX_DEPTH + 1, "x\n");
    assert_int_equal(guard(seq, &e), -ELOOP);
    assert_non_null(strstr(e.why, "indented more than 64"));
    /* a mapping nested by indentation */
    char *b = malloc(200 * 300);
    size_t n = 0;
    for (int i = 0; i < 100; i++)
        n += (size_t)sprintf(b + n, "%*sk%d:\n", i, "", i);
    assert_int_equal(qv_yaml_guard(b, n, &e), -ELOOP);
    assert_int_equal(e.line, QV_YAML_MAX_DEPTH + 1);
    free(b);
}

/* Places where a quote is text to libyaml (or a name ends early): the model
 * must not take them for the start of a quoted scalar, or swallow the ':',
 * and then skip the brackets after.  200 brackets: fewer than the raw
 * backstop counts, so only the model can refuse these. */
static void test_quotes_that_are_text(void **state) {
    (void)state;
    static const char *prefixes[] = {
        "a: b\n  'c\nd: ",            /* plain scalar continued on the next line */
        "a: [b\n'c, ",                /* the same inside a flow collection */
        "a: it's\nb: ",               /* a quote inside a plain scalar */
        "a: |\n  'c\nd: ",            /* a quote in a block scalar */
        "- a\n  'b\n- ",              /* a plain item continued: libyaml's indent is the "- " */
        "- a: b\n  ",                 /* not a continuation: the mapping is at column 2 */
        "*d: ",                       /* an alias as a key (found by fuzz-cidata) */
        "&a: ",                       /* an anchor's name ends where [0-9A-Za-z_-] do */
        /* found by comparing with libyaml on random token soup (below) */
        "[]",                         /* a token starts right after ']' */
        "''",                         /* ... and after a closing quote */
        "|#\n\n",                     /* a block scalar's text is indented at least 1 */
        "a: |\n    \n  x\n",          /* ... and at least as deep as blank lines before it */
        "%YAML 1.1\n\n",              /* a directive is not a plain scalar */
        "a: b\r",                     /* CR alone breaks a line */
        "a: b\xc2\x85",                /* so does NEL */
        "\xef\xbb\xbf",                 /* libyaml skips a byte order mark */
        "!t : \n\n  \n    ---\n",      /* a tag starts a key: the mapping is at its column */
        "[:\" #'b c'[[: \"",           /* in flow, ':' is an indicator wherever a token starts */
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(prefixes); i++) {
        _cleanup_free_ char *s = repeat(prefixes[i], "[", 200, "");
        if (guard(s, NULL) != -ELOOP)
            fail_msg("case %zu not refused", i);
    }
    /* and should the model ever be fooled, every bracket counts */
    _cleanup_free_ char *raw = repeat("a: '", "[", QV_YAML_MAX_RAW_BRACKETS + 1, "'\n");
    assert_int_equal(guard(raw, NULL), -ELOOP);
}

/* libyaml's scanner itself is the reference: whatever the pre-check lets
 * through must not open more than QV_YAML_MAX_DEPTH flow collections in
 * it.  Random sequences of YAML's tricky tokens, then 100 '['. */
static int libyaml_flow_depth(const char *data, size_t size) {
    yaml_parser_t parser;
    assert_true(yaml_parser_initialize(&parser));
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, size);
    int deepest = 0;
    for (;;) {
        yaml_event_t ev;
        int ok = yaml_parser_parse(&parser, &ev);
        if (parser.flow_level > deepest)
            deepest = parser.flow_level;
        if (!ok)
            break;
        yaml_event_type_t t = ev.type;
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&parser);
    return deepest;
}

static void test_against_libyaml(void **state) {
    (void)state;
    static const char *tokens[] = {
        "- ", "-", ": ", ":", "'", "\"", "|", "|2", ">", "#", " #", "\n", "\n", "\n", " ", "  ", "    ",
        "*a", "&a", "!t ", "!t", "? ", ",", "{", "}", "]", "[", "a", "b c", "---\n", "...\n", "\\", "''",
        "\t", "%YAML 1.1\n", "k: ", "- k: ", "\n  ", "\n    ", "\r\n", "\r", "*a: ", "@",
    };
    uint32_t x = 2463534242u;
    char buf[1024];
    for (int it = 0; it < 200000; it++) {
        size_t n = 0;
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        int k = 1 + (int)(x % 12);
        for (int i = 0; i < k; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            const char *t = tokens[x % QV_ARRAY_SIZE(tokens)];
            memcpy(buf + n, t, strlen(t));
            n += strlen(t);
        }
        memset(buf + n, '[', 100);
        n += 100;
        if (qv_yaml_guard(buf, n, NULL) == 0 && libyaml_flow_depth(buf, n) > QV_YAML_MAX_DEPTH)
            fail_msg("let through: %.*s", (int)n - 100, buf);
    }
}

static void test_size_limit(void **state) {
    (void)state;
    size_t n = QV_YAML_MAX_SIZE + 1;
    char *b = malloc(n);
    memset(b, '#', n);
    qv_yaml_guard_error e = {0};
    assert_int_equal(qv_yaml_guard(b, n, &e), -EFBIG);
    assert_int_equal(e.line, 0);
    assert_int_equal(qv_yaml_guard(b, n - 1, NULL), 0);
    assert_int_equal(qv_yaml_guard("\xff\xfe[\0", 4, &e), -EILSEQ);
    free(b);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Issue 15: every YAML entry point refuses the attack, in milliseconds
 * rather than the minutes libyaml would take (generous bound: sanitizers). */
static void test_entry_points_refuse_the_attack(void **state) {
    (void)state;
    _cleanup_free_ char *ud = repeat("#cloud-config\na: ", "[", 200000, "");
    _cleanup_free_ char *spec = repeat("cpus: ", "[", 200000, "");
    _cleanup_free_ char *conf = repeat("daemon:\n  log_level: ", "[", 200000, "");
    double t = now();
    qv_error e = {0};
    assert_int_equal(ci_user_data_check("user-data", ud, strlen(ud), &e), -EINVAL);
    assert_string_equal(e.msg, "user-data: line 2, column 68: more than 64 nested [ ] / { } collections");
    assert_int_equal(ci_yaml_mapping_check("network-config", ud, strlen(ud), &e), -EINVAL);
    sv_vmspec *s = NULL;
    assert_int_equal(sv_vmspec_from_yaml("spec.yaml", spec, strlen(spec), &s, &e), -EINVAL);
    assert_string_equal(e.msg, "spec.yaml:1:71: more than 64 nested [ ] / { } collections");
    sv_config *c = NULL;
    assert_int_equal(sv_config_parse("qvisor.yaml", conf, strlen(conf), &c, &e), -QV_ECONFIG);
    assert_string_equal(e.msg, "qvisor.yaml:2:78: more than 64 nested [ ] / { } collections");
    assert_true(now() - t < (double)qv_test_timeout_ms(2000) / 1000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ordinary_yaml_passes),
        cmocka_unit_test(test_deep_flow_refused),
        cmocka_unit_test(test_deep_block_refused),
        cmocka_unit_test(test_quotes_that_are_text),
        cmocka_unit_test(test_against_libyaml),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_entry_points_refuse_the_attack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
