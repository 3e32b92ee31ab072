/* The replies of guest-exec, guest-exec-status and guest-file-*, checked
 * (qga.h).  Pure: no connection, no allocation. */
#include "qmp/qga.h"

#include "base64.h"

#include <string.h>

int qga_parse_exec(json_t *result, int64_t *ret_pid) {
    json_t *pid = json_object_get(result, "pid");
    if (!json_is_integer(pid) || json_integer_value(pid) <= 0 || json_integer_value(pid) > INT32_MAX)
        return QMP_EBADREPLY;
    *ret_pid = json_integer_value(pid);
    return 0;
}

/* An optional boolean: absent is false. */
static int opt_bool(json_t *o, const char *key, bool *ret) {
    json_t *v = json_object_get(o, key);
    if (v && !json_is_boolean(v))
        return QMP_EBADREPLY;
    *ret = json_is_true(v);
    return 0;
}

/* An optional integer in [min, max]: absent is -1. */
static int opt_int(json_t *o, const char *key, json_int_t min, json_int_t max, int *ret) {
    json_t *v = json_object_get(o, key);
    if (!v) {
        *ret = -1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return QMP_EBADREPLY;
    *ret = (int)json_integer_value(v);
    return 0;
}

static int exec_output(json_t *o, const char *data_key, const char *trunc_key, qga_exec_output *ret) {
    *ret = (qga_exec_output){0};
    json_t *d = json_object_get(o, data_key);
    if (opt_bool(o, trunc_key, &ret->truncated) < 0)
        return QMP_EBADREPLY;
    if (!d)
        return 0;
    if (!json_is_string(d))
        return QMP_EBADREPLY;
    ret->b64 = json_string_value(d);
    ret->b64_len = json_string_length(d);
    if (qv_base64_check(ret->b64, ret->b64_len, QGA_EXEC_MAX_OUTPUT, &ret->len) < 0)
        return QMP_EBADREPLY;
    return 0;
}

int qga_parse_exec_status(json_t *result, qga_exec_status *ret) {
    qga_exec_status s = {0};
    json_t *exited = json_object_get(result, "exited");
    if (!json_is_object(result) || !json_is_boolean(exited))
        return QMP_EBADREPLY;
    s.exited = json_is_true(exited);
    if (opt_int(result, "exitcode", 0, 255, &s.exitcode) < 0 || opt_int(result, "signal", 1, 127, &s.signal) < 0 ||
        exec_output(result, "out-data", "out-truncated", &s.out) < 0 ||
        exec_output(result, "err-data", "err-truncated", &s.err) < 0)
        return QMP_EBADREPLY;
    if (s.exited && (s.exitcode >= 0) == (s.signal >= 0))
        return QMP_EBADREPLY;
    if (!s.exited && (s.exitcode >= 0 || s.signal >= 0 || s.out.b64 || s.err.b64 || s.out.truncated ||
                      s.err.truncated))
        return QMP_EBADREPLY;
    *ret = s;
    return 0;
}

int qga_parse_file_open(json_t *result, int64_t *ret_handle) {
    if (!json_is_integer(result) || json_integer_value(result) <= 0)
        return QMP_EBADREPLY;
    *ret_handle = json_integer_value(result);
    return 0;
}

/* "count": an integer in [0, max]. */
static int count_of(json_t *result, size_t max, size_t *ret) {
    json_t *c = json_object_get(result, "count");
    if (!json_is_integer(c) || json_integer_value(c) < 0 || (uint64_t)json_integer_value(c) > max)
        return QMP_EBADREPLY;
    *ret = (size_t)json_integer_value(c);
    return 0;
}

int qga_parse_file_read(json_t *result, size_t asked, qga_file_chunk *ret) {
    qga_file_chunk c = {0};
    json_t *buf = json_object_get(result, "buf-b64");
    json_t *eof = json_object_get(result, "eof");
    if (!json_is_object(result) || !json_is_string(buf) || !json_is_boolean(eof) ||
        count_of(result, asked, &c.count) < 0)
        return QMP_EBADREPLY;
    c.b64 = json_string_value(buf);
    c.b64_len = json_string_length(buf);
    size_t n;
    if (qv_base64_check(c.b64, c.b64_len, asked, &n) < 0 || n != c.count)
        return QMP_EBADREPLY;
    c.eof = json_is_true(eof);
    *ret = c;
    return 0;
}

int qga_parse_file_write(json_t *result, size_t sent, size_t *ret_count) {
    json_t *eof = json_object_get(result, "eof");
    size_t n;
    if (!json_is_object(result) || (eof && !json_is_boolean(eof)) || count_of(result, sent, &n) < 0)
        return QMP_EBADREPLY;
    *ret_count = n;
    return 0;
}
