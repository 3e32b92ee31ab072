/* The control protocol's messages (ctl/protocol.h) on their own, without a
 * socket: parsing and checking requests, the bytes each message goes out
 * as, and what the client makes of what it reads.  The server and the
 * client over a real socket: test-ctl.c. */
#include "testlib.h"

#include "ctl/protocol.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* sv_ctl_request_parse() of a C string, err cleared first */
static int parse(const char *line, size_t n_fds, sv_ctl_request *rq, qv_error *err) {
    *err = (qv_error){0};
    return sv_ctl_request_parse(line, strlen(line), n_fds, rq, err);
}

static void test_protocol_request_parse(void **state) {
    (void)state;
    sv_ctl_request rq;
    qv_error err;
    assert_int_equal(parse("{\"id\": 7, \"method\": \"ping\", \"progress\": true, \"fds\": 1, \"params\": {\"a\": 1}}", 1,
                           &rq, &err), 0);
    assert_int_equal(json_integer_value(rq.id), 7);
    assert_string_equal(rq.method, "ping");
    assert_true(rq.progress);
    assert_int_equal(json_integer_value(json_object_get(rq.params, "a")), 1);
    json_decref(rq.msg);

    assert_int_equal(parse("{\"id\": \"x\", \"method\": \"ping\", \"params\": null}", 0, &rq, &err), 0);
    assert_string_equal(json_string_value(rq.id), "x");
    assert_null(rq.params);
    assert_false(rq.progress);
    json_decref(rq.msg);

    assert_int_equal(parse("{\"id\": 1,", 0, &rq, &err), -EBADMSG);
    assert_null(rq.msg);
    assert_null(rq.id);
    assert_non_null(strstr(err.msg, "invalid JSON at byte"));
    assert_int_equal(parse("{\"id\": 1, \"id\": 2, \"method\": \"ping\"}", 0, &rq, &err), -EBADMSG);

    /* refused with the request's id when it has a usable one, else null */
    struct {
        const char *line;
        size_t n_fds;
        json_int_t id; /* 0: none */
        const char *msg;
    } bad[] = {
        {"[1]", 0, 0, "a request must be a JSON object"},
        {"{\"id\": true, \"method\": \"ping\"}", 0, 0, "a request needs an \"id\" (number or string)"},
        {"{\"id\": 3}", 0, 3, "a request needs a \"method\" string"},
        {"{\"id\": 3, \"method\": \"ping\", \"params\": []}", 0, 3, "\"params\" must be an object"},
        {"{\"id\": 3, \"method\": \"ping\", \"progress\": 1}", 0, 3, "\"progress\" must be true or false"},
        {"{\"id\": 3, \"method\": \"ping\", \"fds\": 9}", 0, 3,
         "\"fds\" must be the number of file descriptors sent with the request (at most 8)"},
        {"{\"id\": 3, \"method\": \"ping\", \"fds\": 2}", 1, 3,
         "the request says \"fds\": 2, but 1 file descriptors came with it"},
        {"{\"id\": 3, \"method\": \"ping\"}", 1, 3, "the request says \"fds\": 0, but 1 file descriptors came with it"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(parse(bad[i].line, bad[i].n_fds, &rq, &err), -EINVAL);
        assert_int_equal(err.code, EINVAL);
        assert_string_equal(err.msg, bad[i].msg);
        if (bad[i].id)
            assert_int_equal(json_integer_value(rq.id), bad[i].id);
        else
            assert_null(rq.id);
        json_decref(rq.msg);
    }
}

/* msg as its line (released), NUL-terminated for comparing */
static char *line_of(json_t *msg, size_t flags) {
    assert_non_null(msg);
    size_t len = 0;
    char *line = sv_ctl_msg_line(msg, flags, &len);
    json_decref(msg);
    assert_non_null(line);
    assert_true(len > 0 && line[len - 1] == '\n');
    char *s = strndup(line, len);
    free(line);
    assert_non_null(s);
    return s;
}

static void test_protocol_messages(void **state) {
    (void)state;
    json_t *params = json_pack("{s:s}", "name", "a");
    char *s = line_of(sv_ctl_msg_request(5, "vm.show", params, true, 2), JSON_COMPACT);
    assert_string_equal(s, "{\"id\":5,\"method\":\"vm.show\",\"params\":{\"name\":\"a\"},\"progress\":true,\"fds\":2}\n");
    free(s);
    s = line_of(sv_ctl_msg_request(6, "ping", NULL, false, 0), JSON_COMPACT);
    assert_string_equal(s, "{\"id\":6,\"method\":\"ping\",\"params\":null}\n");
    free(s);

    json_t *id = json_integer(5);
    s = line_of(sv_ctl_msg_result(id, NULL), JSON_COMPACT);
    assert_string_equal(s, "{\"id\":5,\"result\":{}}\n");
    free(s);
    s = line_of(sv_ctl_msg_error(id, -ENOENT, "no VM 'x'"), JSON_COMPACT);
    assert_string_equal(s, "{\"id\":5,\"error\":{\"code\":\"ENOENT\",\"message\":\"no VM 'x'\"}}\n");
    free(s);
    s = line_of(sv_ctl_msg_error(NULL, QV_ECONFIG, "bad"), JSON_COMPACT);
    assert_string_equal(s, "{\"id\":null,\"error\":{\"code\":\"ECONFIG\",\"message\":\"bad\"}}\n");
    free(s);
    json_t *progress = json_pack("{s:f}", "percent", 42.1);
    s = line_of(sv_ctl_msg_progress(id, progress), JSON_COMPACT | JSON_REAL_PRECISION(12));
    assert_string_equal(s, "{\"id\":5,\"progress\":{\"percent\":42.1}}\n");
    free(s);

    /* what the client makes of what it reads */
    json_t *m = sv_ctl_msg_progress(id, progress);
    assert_int_equal(sv_ctl_msg_kind_of(m, 5), SV_CTL_MSG_PROGRESS);
    assert_int_equal(sv_ctl_msg_kind_of(m, 6), SV_CTL_MSG_OTHER);
    json_decref(m);
    m = sv_ctl_msg_result(id, json_pack("{s:i}", "n", 1));
    assert_int_equal(sv_ctl_msg_kind_of(m, 5), SV_CTL_MSG_REPLY);
    json_t *result = NULL;
    qv_error err = {0};
    assert_int_equal(sv_ctl_msg_outcome(m, &result, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(result, "n")), 1);
    json_decref(result);
    json_decref(m);
    m = sv_ctl_msg_error(NULL, EAGAIN, "too many control connections; try again");
    assert_int_equal(sv_ctl_msg_kind_of(m, 5), SV_CTL_MSG_REFUSED);
    result = NULL;
    assert_int_equal(sv_ctl_msg_outcome(m, &result, &err), -EAGAIN);
    assert_null(result);
    assert_string_equal(err.msg, "too many control connections; try again");
    json_decref(m);
    m = json_pack("{s:I, s:{s:s}}", "id", (json_int_t)5, "error", "code", "ECAPACITY");
    assert_int_equal(sv_ctl_msg_outcome(m, NULL, &err), -QV_ECAPACITY);
    assert_string_equal(err.msg, qv_strerror(QV_ECAPACITY));
    json_decref(m);
    m = json_pack("{s:I}", "id", (json_int_t)5);
    assert_int_equal(sv_ctl_msg_outcome(m, &result, &err), 0);
    assert_true(json_is_null(result));
    json_decref(result);
    json_decref(m);

    json_decref(progress);
    json_decref(id);
    json_decref(params);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol_request_parse),
        cmocka_unit_test(test_protocol_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
