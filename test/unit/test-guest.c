/* vm exec / vm cp, the pure parts: strict base64 (common/base64.c), the
 * checks of the guest agent's guest-exec and guest-file-* replies (a hostile
 * guest's answers: qmp/qga-guest.c), and the CLI's helpers (cmd/guest-util.c:
 * NAME:PATH, exit statuses, chunk sizes, path parts). */
#include "testlib.h"

#include "base64.h"
#include "cmd/guest-util.h"
#include "qmp/qga.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- base64 ---------------------------------------------------------------- */

static void roundtrip(const char *in, size_t n, const char *want) {
    char out[64];
    assert_int_equal(qv_base64_encode(in, n, out), strlen(want));
    assert_string_equal(out, want);
    assert_int_equal(qv_base64_encoded_len(n), strlen(want));
    unsigned char back[64];
    size_t len = 99;
    assert_int_equal(qv_base64_decode(want, strlen(want), back, sizeof back, &len), 0);
    assert_int_equal(len, n);
    assert_memory_equal(back, in, n);
}

static void test_base64_roundtrip(void **state) {
    (void)state;
    roundtrip("", 0, "");
    roundtrip("f", 1, "Zg==");
    roundtrip("fo", 2, "Zm8=");
    roundtrip("foo", 3, "Zm9v");
    roundtrip("foobar", 6, "Zm9vYmFy");
    roundtrip("\x00\xff\xfe\x01", 4, "AP/+AQ==");
    /* every byte value, through a buffer exactly as large as the data */
    unsigned char all[256], back[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    char b64[400];
    size_t n = qv_base64_encode(all, sizeof all, b64), len;
    assert_int_equal(qv_base64_decode(b64, n, back, sizeof back, &len), 0);
    assert_int_equal(len, 256);
    assert_memory_equal(all, back, 256);
}

static void test_base64_strict_and_bounded(void **state) {
    (void)state;
    size_t len = 1234;
    unsigned char out[16] = {0};
    static const char *const bad[] = {
        "Zg=",      /* not a multiple of 4 */
        "Zg",       /* unpadded */
        "Z===",     /* three '=' */
        "Zg=a",     /* '=' before the end */
        "====",     /* only padding */
        "Zm9v\n",   /* white space */
        "Zm 9",     /* a space */
        "Zm9-",     /* the URL alphabet */
        "Zh==",     /* bits the padding drops are not zero */
        "Zm9=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (qv_base64_check(bad[i], strlen(bad[i]), 100, &len) != -EINVAL)
            fail_msg("'%s' was taken for base64", bad[i]);
        assert_int_equal(qv_base64_decode(bad[i], strlen(bad[i]), out, sizeof out, &len), -EINVAL);
    }
    assert_int_equal(len, 1234); /* untouched on failure */
    /* a bound on the decoded size, checked before a byte is written */
    assert_int_equal(qv_base64_check("Zm9vYmFy", 8, 6, &len), 0);
    assert_int_equal(len, 6);
    assert_int_equal(qv_base64_check("Zm9vYmFy", 8, 5, &len), -EMSGSIZE);
    memset(out, 0xaa, sizeof out);
    assert_int_equal(qv_base64_decode("Zm9vYmFy", 8, out, 5, &len), -EMSGSIZE);
    assert_int_equal(out[0], 0xaa);
    /* an embedded NUL is not base64 (lengths are given, not strlen'd) */
    assert_int_equal(qv_base64_check("Zm\0v", 4, 10, &len), -EINVAL);
}

/* ---- the agent's replies ---------------------------------------------------- */

static json_t *j(const char *text) {
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    if (!v)
        fail_msg("bad JSON in the test: %s: %s", text, e.text);
    return v;
}

static int status_of(const char *text, qga_exec_status *s) {
    json_t *v = j(text);
    int r = qga_parse_exec_status(v, s);
    json_decref(v);
    return r;
}

static void test_exec_status(void **state) {
    (void)state;
    qga_exec_status s;
    assert_int_equal(status_of("{\"exited\": false}", &s), 0);
    assert_false(s.exited);
    assert_int_equal(s.exitcode, -1);
    assert_int_equal(s.signal, -1);
    assert_null(s.out.b64);

    json_t *v = j("{\"exited\": true, \"exitcode\": 3, \"out-data\": \"b3V0Cg==\", \"err-data\": \"ZXJyCg==\"}");
    assert_int_equal(qga_parse_exec_status(v, &s), 0);
    assert_true(s.exited);
    assert_int_equal(s.exitcode, 3);
    assert_int_equal(s.signal, -1);
    assert_int_equal(s.out.len, 4);
    assert_int_equal(s.err.len, 4);
    assert_string_equal(s.out.b64, "b3V0Cg==");
    assert_false(s.out.truncated);
    json_decref(v);

    assert_int_equal(status_of("{\"exited\": true, \"signal\": 15, \"out-truncated\": true}", &s), 0);
    assert_int_equal(s.signal, 15);
    assert_true(s.out.truncated);
    assert_false(s.err.truncated);

    static const char *const bad[] = {
        "[]",
        "{}",
        "{\"exited\": 1}",
        "{\"exited\": true}",                                   /* ended, but how? */
        "{\"exited\": true, \"exitcode\": 0, \"signal\": 9}",   /* both */
        "{\"exited\": true, \"exitcode\": 256}",
        "{\"exited\": true, \"exitcode\": -1}",
        "{\"exited\": true, \"exitcode\": 1.5}",
        "{\"exited\": true, \"signal\": 0}",
        "{\"exited\": true, \"signal\": 128}",
        "{\"exited\": false, \"exitcode\": 0}",                 /* still running */
        "{\"exited\": false, \"out-data\": \"\"}",
        "{\"exited\": true, \"exitcode\": 0, \"out-data\": \"not base64!\"}",
        "{\"exited\": true, \"exitcode\": 0, \"out-data\": 7}",
        "{\"exited\": true, \"exitcode\": 0, \"err-truncated\": \"yes\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (status_of(bad[i], &s) != QMP_EBADREPLY)
            fail_msg("taken: %s", bad[i]);
}

static void test_exec_output_bound(void **state) {
    (void)state;
    /* exactly the agent's 16 MiB: taken; one byte more: refused */
    size_t n = QGA_EXEC_MAX_OUTPUT;
    unsigned char *raw = calloc(n + 3, 1);
    char *b64 = malloc(qv_base64_encoded_len(n + 3) + 1);
    assert_non_null(raw);
    assert_non_null(b64);
    qga_exec_status s;
    for (int extra = 0; extra <= 1; extra++) {
        size_t len = qv_base64_encode(raw, n + (size_t)extra, b64);
        json_t *v = json_pack("{s:b, s:i, s:s%}", "exited", 1, "exitcode", 0, "out-data", b64, len);
        assert_int_equal(qga_parse_exec_status(v, &s), extra ? QMP_EBADREPLY : 0);
        if (!extra)
            assert_int_equal(s.out.len, n);
        json_decref(v);
    }
    free(raw);
    free(b64);
}

static void test_exec_pid_and_handles(void **state) {
    (void)state;
    int64_t id;
    json_t *v = j("{\"pid\": 4242}");
    assert_int_equal(qga_parse_exec(v, &id), 0);
    assert_int_equal(id, 4242);
    json_decref(v);
    static const char *const bad_pids[] = {"{}", "{\"pid\": 0}", "{\"pid\": -5}", "{\"pid\": \"1\"}",
                                           "{\"pid\": 4294967296}", "[1]"};
    for (size_t i = 0; i < sizeof bad_pids / sizeof *bad_pids; i++) {
        v = j(bad_pids[i]);
        if (qga_parse_exec(v, &id) != QMP_EBADREPLY)
            fail_msg("pid taken: %s", bad_pids[i]);
        json_decref(v);
    }
    v = j("1000");
    assert_int_equal(qga_parse_file_open(v, &id), 0);
    assert_int_equal(id, 1000);
    json_decref(v);
    static const char *const bad_handles[] = {"0", "-1", "\"7\"", "{\"handle\": 7}", "1.0"};
    for (size_t i = 0; i < sizeof bad_handles / sizeof *bad_handles; i++) {
        v = j(bad_handles[i]);
        if (qga_parse_file_open(v, &id) != QMP_EBADREPLY)
            fail_msg("handle taken: %s", bad_handles[i]);
        json_decref(v);
    }
}

static int read_of(const char *text, size_t asked, qga_file_chunk *c) {
    json_t *v = j(text);
    int r = qga_parse_file_read(v, asked, c);
    json_decref(v);
    return r;
}

static void test_file_read_and_write(void **state) {
    (void)state;
    qga_file_chunk c;
    json_t *v = j("{\"count\": 3, \"buf-b64\": \"Zm9v\", \"eof\": false}");
    assert_int_equal(qga_parse_file_read(v, 4, &c), 0);
    assert_int_equal(c.count, 3);
    assert_string_equal(c.b64, "Zm9v");
    assert_false(c.eof);
    json_decref(v);
    assert_int_equal(read_of("{\"count\": 0, \"buf-b64\": \"\", \"eof\": true}", 4, &c), 0);
    assert_true(c.eof);
    static const char *const bad[] = {
        "{\"count\": 2, \"buf-b64\": \"Zm9v\", \"eof\": false}",                      /* count != data */
        "{\"count\": 6, \"buf-b64\": \"Zm9vYmFy\", \"eof\": false}",                  /* more than asked */
        "{\"count\": 3, \"buf-b64\": \"Zm9v\"}",                                      /* no eof */
        "{\"count\": 3, \"buf-b64\": \"Zm9\", \"eof\": true}",                        /* not base64 */
        "{\"count\": -1, \"buf-b64\": \"\", \"eof\": true}",
        "{\"buf-b64\": \"\", \"eof\": true}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (read_of(bad[i], 4, &c) != QMP_EBADREPLY)
            fail_msg("read taken: %s", bad[i]);

    size_t n;
    v = j("{\"count\": 10, \"eof\": false}");
    assert_int_equal(qga_parse_file_write(v, 10, &n), 0);
    assert_int_equal(n, 10);
    assert_int_equal(qga_parse_file_write(v, 9, &n), QMP_EBADREPLY); /* wrote more than sent */
    json_decref(v);
    v = j("{\"eof\": false}");
    assert_int_equal(qga_parse_file_write(v, 9, &n), QMP_EBADREPLY);
    json_decref(v);
}

/* ---- the CLI's helpers ------------------------------------------------------ */

static void test_guest_arg_parse(void **state) {
    (void)state;
    char name[QV_NAME_MAX + 1];
    const char *path = NULL;
    assert_int_equal(qv_guest_arg_parse("web:/etc/hosts", name, sizeof name, &path), 1);
    assert_string_equal(name, "web");
    assert_string_equal(path, "/etc/hosts");
    assert_int_equal(qv_guest_arg_parse("job-77:/a:b", name, sizeof name, &path), 1);
    assert_string_equal(name, "job-77");
    assert_string_equal(path, "/a:b");
    /* local paths */
    assert_int_equal(qv_guest_arg_parse("file.txt", name, sizeof name, &path), 0);
    assert_int_equal(qv_guest_arg_parse("./web:/x", name, sizeof name, &path), 0);
    assert_int_equal(qv_guest_arg_parse("/tmp/web:/x", name, sizeof name, &path), 0);
    assert_int_equal(qv_guest_arg_parse("Web:/x", name, sizeof name, &path), 0); /* no VM has that name */
    assert_int_equal(qv_guest_arg_parse(":/x", name, sizeof name, &path), 0);
    /* a VM's path must be absolute */
    assert_int_equal(qv_guest_arg_parse("web:etc/hosts", name, sizeof name, &path), -EINVAL);
    assert_int_equal(qv_guest_arg_parse("web:", name, sizeof name, &path), -EINVAL);
    /* a name too long for a VM is a local path */
    char longname[80];
    memset(longname, 'a', 70);
    strcpy(longname + 70, ":/x");
    assert_int_equal(qv_guest_arg_parse(longname, name, sizeof name, &path), 0);
}

static void test_exit_status_and_chunks(void **state) {
    (void)state;
    assert_int_equal(qv_exec_exit_status(0, -1), 0);
    assert_int_equal(qv_exec_exit_status(3, -1), 3);
    assert_int_equal(qv_exec_exit_status(255, -1), 255);
    assert_int_equal(qv_exec_exit_status(-1, 9), 137);
    assert_int_equal(qv_exec_exit_status(-1, 15), 143);
    /* the default 1 MiB request holds a write of 756 KiB, base64 and all */
    size_t c = qv_cp_write_chunk(1u << 20);
    assert_int_equal(c, 756u << 10);
    assert_true(qv_base64_encoded_len(c) + 1024 <= (1u << 20));
    assert_int_equal(c % 3, 0);
    /* a large request bound is capped at what the daemon takes */
    assert_int_equal(qv_cp_write_chunk(64ull << 20), QV_CP_WRITE_MAX - QV_CP_WRITE_MAX % (3 * 4096));
    assert_true(qv_cp_write_chunk(64ull << 20) <= QV_CP_WRITE_MAX);
    /* the smallest max_request_size (4 KiB) still moves data */
    c = qv_cp_write_chunk(4096);
    assert_true(c == 0 || qv_base64_encoded_len(c) + 1024 <= 4096);
    assert_int_equal(qv_cp_write_chunk(512), 0);
}

static void test_path_parts(void **state) {
    (void)state;
    char b[64];
    qv_path_base("/root/a.txt", b, sizeof b);
    assert_string_equal(b, "a.txt");
    qv_path_base("dir/sub/", b, sizeof b);
    assert_string_equal(b, "sub");
    qv_path_base("plain", b, sizeof b);
    assert_string_equal(b, "plain");
    qv_path_base("/", b, sizeof b);
    assert_string_equal(b, "");
    qv_path_dir("/root/a.txt", b, sizeof b);
    assert_string_equal(b, "/root");
    qv_path_dir("/a.txt", b, sizeof b);
    assert_string_equal(b, "/");
    qv_path_dir("a.txt", b, sizeof b);
    assert_string_equal(b, ".");
    qv_path_dir("x//y", b, sizeof b);
    assert_string_equal(b, "x");
    qv_path_dir("rel/dir/f", b, sizeof b);
    assert_string_equal(b, "rel/dir");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_roundtrip),
        cmocka_unit_test(test_base64_strict_and_bounded),
        cmocka_unit_test(test_exec_status),
        cmocka_unit_test(test_exec_output_bound),
        cmocka_unit_test(test_exec_pid_and_handles),
        cmocka_unit_test(test_file_read_and_write),
        cmocka_unit_test(test_guest_arg_parse),
        cmocka_unit_test(test_exit_status_and_chunks),
        cmocka_unit_test(test_path_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
