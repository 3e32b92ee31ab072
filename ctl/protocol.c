/* The control protocol's messages (see protocol.h and docs/protocol.md),
 * and the framing helpers ctl/'s server and client share (ctl-internal.h). */
#include "ctl/protocol.h"
#include "ctl/ctl-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(SV_CTL_MAX_FDS <= 253, "SCM_MAX_FD");

int sv_ctl_request_parse(const char *line, size_t len, size_t n_fds, sv_ctl_request *ret, qv_error *err) {
    *ret = (sv_ctl_request){0};
    json_error_t jerr;
    json_t *msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!msg)
        return qv_error_set(err, EBADMSG, "invalid JSON at byte %d: %s", jerr.position, jerr.text);
    ret->msg = msg;
    json_t *id = json_object_get(msg, "id");
    json_t *method = json_object_get(msg, "method");
    json_t *params = json_object_get(msg, "params");
    json_t *progress = json_object_get(msg, "progress");
    json_t *nfds = json_object_get(msg, "fds");
    if (json_is_integer(id) || json_is_string(id))
        ret->id = id;
    if (!json_is_object(msg))
        return qv_error_set(err, EINVAL, "a request must be a JSON object");
    if (!ret->id)
        return qv_error_set(err, EINVAL, "a request needs an \"id\" (number or string)");
    if (!json_is_string(method))
        return qv_error_set(err, EINVAL, "a request needs a \"method\" string");
    if (params && !json_is_object(params) && !json_is_null(params))
        return qv_error_set(err, EINVAL, "\"params\" must be an object");
    if (progress && !json_is_boolean(progress))
        return qv_error_set(err, EINVAL, "\"progress\" must be true or false");
    if (nfds && (!json_is_integer(nfds) || json_integer_value(nfds) < 0 || json_integer_value(nfds) > SV_CTL_MAX_FDS))
        return qv_error_set(err, EINVAL,
                            "\"fds\" must be the number of file descriptors sent with the request (at most 8)");
    if ((size_t)json_integer_value(nfds) != n_fds) /* descriptors nobody asked for, or fewer than announced: no guessing */
        return qv_error_set(err, EINVAL, "the request says \"fds\": %lld, but %zu file descriptors came with it",
                            (long long)json_integer_value(nfds), n_fds);
    ret->method = json_string_value(method);
    ret->params = json_is_object(params) ? params : NULL;
    ret->progress = json_is_true(progress);
    return 0;
}

json_t *sv_ctl_msg_request(json_int_t id, const char *method, json_t *params, bool progress, size_t n_fds) {
    json_t *req = json_pack("{s:I, s:s, s:O?}", "id", id, "method", method, "params", params);
    if (req && progress)
        json_object_set_new(req, "progress", json_true());
    if (req && n_fds)
        json_object_set_new(req, "fds", json_integer((json_int_t)n_fds));
    return req;
}

json_t *sv_ctl_msg_result(json_t *id, json_t *result) {
    if (!result)
        result = json_object();
    return json_pack("{s:O, s:o}", "id", id, "result", result);
}

json_t *sv_ctl_msg_error(json_t *id, int code, const char *message) {
    json_t *error = json_pack("{s:s, s:s}", "code", qv_errno_name(code), "message", message);
    return json_pack("{s:O?, s:o}", "id", id, "error", error);
}

json_t *sv_ctl_msg_progress(json_t *id, json_t *progress) {
    return json_pack("{s:O, s:O}", "id", id, "progress", progress);
}

sv_ctl_msg_kind sv_ctl_msg_kind_of(json_t *msg, json_int_t id) {
    json_t *mid = json_object_get(msg, "id");
    if (json_is_integer(mid) && json_integer_value(mid) == id) {
        if (json_object_get(msg, "progress") && !json_object_get(msg, "result") && !json_object_get(msg, "error"))
            return SV_CTL_MSG_PROGRESS;
        return SV_CTL_MSG_REPLY;
    }
    if (json_is_null(mid) && json_object_get(msg, "error"))
        return SV_CTL_MSG_REFUSED;
    return SV_CTL_MSG_OTHER;
}

int sv_ctl_msg_outcome(json_t *reply, json_t **ret_result, qv_error *err) {
    json_t *e = json_object_get(reply, "error");
    if (e) {
        int code = qv_errno_from_name(json_string_value(json_object_get(e, "code")));
        const char *m = json_string_value(json_object_get(e, "message"));
        return qv_error_set(err, code, "%s", m ? m : qv_strerror(code));
    }
    json_t *result = json_object_get(reply, "result");
    if (ret_result)
        *ret_result = json_incref(result ? result : json_null());
    return 0;
}

char *sv_ctl_msg_line(json_t *msg, size_t flags, size_t *ret_len) {
    char *text = json_dumps(msg, flags);
    if (!text)
        return NULL;
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps leaves room only for the NUL: reuse it */
    *ret_len = len + 1;
    return text;
}

/* ---- shared by ctl/server.c and ctl/client.c (ctl-internal.h) ------------ */

int sv_ctl__sockaddr(const char *path, struct sockaddr_un *ret) {
    size_t len = strlen(path);
    if (len >= sizeof ret->sun_path)
        return -ENAMETOOLONG;
    *ret = (struct sockaddr_un){.sun_family = AF_UNIX};
    memcpy(ret->sun_path, path, len + 1);
    return 0;
}

size_t sv_ctl__newline_at(const char *chunk, size_t chunk_len, const char *line, size_t len) {
    if (line >= chunk && line < chunk + chunk_len)
        return (size_t)(line - chunk) + len;
    return (size_t)((const char *)memchr(chunk, '\n', chunk_len) - chunk);
}
