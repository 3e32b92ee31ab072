/* Control methods for the guest agent of a VM (docs/guest.md): vm.exec,
 * vm.exec_status, vm.file_open, vm.file_read, vm.file_write, vm.file_close,
 * and vm.copy_in and vm.copy_out, a whole copy into or out of the guest
 * that the engine runs (sv_vm_copy_in, sv_vm_copy_out), reporting
 * progress.  The others are one agent command, judged by the engine's state table and sent
 * on the engine's agent connection (sv_vm_guest); the daemon keeps nothing
 * between them.  The CLI opens and writes the local files itself, with its
 * own rights (docs/protocol.md, "File descriptors with a request"): the
 * daemon only relays bytes between the control socket and the agent. */
#include "supervisor/daemon-internal.h"

#include "base64.h"
#include "cleanup.h"
#include "supervisor/vm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GUEST_CMD_TIMEOUT_MS 10000u /* exec, open, close */
#define GUEST_IO_TIMEOUT_MS 60000u  /* a chunk, an exec status (its output: up to 2 x 16 MiB) */
#define GUEST_ARGS_MAX 4096u        /* argv and env entries */
#define GUEST_PATH_MAX 4096u        /* PATH_MAX in the guest */

static void guest_done(int status, json_t *result, const qv_error *err, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0)
        sv_ctl_reply_qv_error(req, err);
    else
        sv_ctl_reply(req, json_incref(result));
}

static void call(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, sv_guest_cmd cmd, json_t *args, size_t limit,
                 uint64_t timeout_ms) {
    qv_error err = {0};
    if (!args) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    if (sv_vm_guest(d->vmctl, vm, cmd, args, limit, timeout_ms, guest_done, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
    json_decref(args);
}

/* A string without NUL bytes of 1..max bytes; NULL when it is not. */
static const char *text_param(json_t *v, size_t max) {
    if (!json_is_string(v))
        return NULL;
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    return n == 0 || n > max || strlen(s) != n ? NULL : s;
}

/* An array of 0..GUEST_ARGS_MAX such strings (entries at most max bytes);
 * `env`: each of the form K=V with a non-empty K. */
static bool strings_ok(json_t *a, bool env) {
    if (!json_is_array(a) || json_array_size(a) > GUEST_ARGS_MAX)
        return false;
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        if (json_is_string(v) && json_string_length(v) == 0 && !env)
            continue; /* an empty argument is an argument */
        const char *s = text_param(v, SIZE_MAX);
        if (!s || (env && (s[0] == '=' || !strchr(s, '='))))
            return false;
    }
    return true;
}

/* A positive integer up to max under key; 0 when it is not one. */
static int64_t id_param(json_t *params, const char *key, int64_t max) {
    json_t *v = json_object_get(params, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > max)
        return 0;
    return json_integer_value(v);
}

/* {"argv": [path, args…], "env": ["K=V", …] (optional), "input": base64
 * (optional)}: guest-exec with its output captured. */
void sv_api_vm_exec(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    json_t *argv = json_object_get(params, "argv"), *env = json_object_get(params, "env");
    json_t *input = json_object_get(params, "input");
    if (!strings_ok(argv, false) || json_array_size(argv) == 0 || !text_param(json_array_get(argv, 0), GUEST_PATH_MAX)) {
        sv_ctl_reply_error(req, EINVAL, "\"argv\" must be a non-empty array of strings (at most %u) without NUL bytes",
                           GUEST_ARGS_MAX);
        return;
    }
    if (env && !strings_ok(env, true)) {
        sv_ctl_reply_error(req, EINVAL, "\"env\" must be an array of \"NAME=VALUE\" strings (at most %u)",
                           GUEST_ARGS_MAX);
        return;
    }
    size_t n;
    if (input && (!json_is_string(input) ||
                  qv_base64_check(json_string_value(input), json_string_length(input), SIZE_MAX, &n) < 0)) {
        sv_ctl_reply_error(req, EINVAL, "\"input\" must be base64");
        return;
    }
    json_t *args = json_pack("{s:O, s:o, s:b}", "path", json_array_get(argv, 0), "arg", json_array(),
                             "capture-output", 1);
    for (size_t i = 1; args && i < json_array_size(argv); i++)
        json_array_append(json_object_get(args, "arg"), json_array_get(argv, i));
    if (args && env)
        json_object_set(args, "env", env);
    if (args && input)
        json_object_set(args, "input-data", input);
    call(d, req, vm, SV_GUEST_EXEC, args, 0, GUEST_CMD_TIMEOUT_MS);
}

/* {"pid": N}: guest-exec-status. */
void sv_api_vm_exec_status(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    int64_t pid = id_param(params, "pid", INT32_MAX);
    if (!pid) {
        sv_ctl_reply_error(req, EINVAL, "\"pid\" must be a positive integer (a pid vm.exec gave)");
        return;
    }
    call(d, req, vm, SV_GUEST_EXEC_STATUS, json_pack("{s:I}", "pid", (json_int_t)pid), 0, GUEST_IO_TIMEOUT_MS);
}

/* {"path": P, "mode": "r"|"w"}: guest-file-open. */
void sv_api_vm_file_open(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    const char *path = text_param(json_object_get(params, "path"), GUEST_PATH_MAX);
    const char *mode = json_string_value(json_object_get(params, "mode"));
    if (!path || path[0] != '/') {
        sv_ctl_reply_error(req, EINVAL, "\"path\" must be an absolute path of at most %u bytes", GUEST_PATH_MAX);
        return;
    }
    if (!mode || (strcmp(mode, "r") != 0 && strcmp(mode, "w") != 0)) {
        sv_ctl_reply_error(req, EINVAL, "\"mode\" must be \"r\" or \"w\"");
        return;
    }
    call(d, req, vm, SV_GUEST_FILE_OPEN, json_pack("{s:s, s:s}", "path", path, "mode", mode), 0,
         GUEST_CMD_TIMEOUT_MS);
}

static int64_t handle_param(sv_ctl_req *req, json_t *params) {
    int64_t h = id_param(params, "handle", INT64_MAX);
    if (!h)
        sv_ctl_reply_error(req, EINVAL, "\"handle\" must be a positive integer (a handle vm.file_open gave)");
    return h;
}

/* {"handle": H, "count": N}: guest-file-read of at most N bytes. */
void sv_api_vm_file_read(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    int64_t h = handle_param(req, params);
    if (!h)
        return;
    int64_t count = id_param(params, "count", SV_GUEST_CHUNK_MAX);
    if (!count) {
        sv_ctl_reply_error(req, EINVAL, "\"count\" must be between 1 and %u", SV_GUEST_CHUNK_MAX);
        return;
    }
    call(d, req, vm, SV_GUEST_FILE_READ, json_pack("{s:I, s:I}", "handle", (json_int_t)h, "count", (json_int_t)count),
         (size_t)count, GUEST_IO_TIMEOUT_MS);
}

/* {"handle": H, "data": base64}: guest-file-write of the data. */
void sv_api_vm_file_write(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    int64_t h = handle_param(req, params);
    if (!h)
        return;
    json_t *data = json_object_get(params, "data");
    size_t n = 0;
    if (!json_is_string(data) ||
        qv_base64_check(json_string_value(data), json_string_length(data), SV_GUEST_CHUNK_MAX, &n) < 0) {
        sv_ctl_reply_error(req, EINVAL, "\"data\" must be base64 of at most %u bytes", SV_GUEST_CHUNK_MAX);
        return;
    }
    call(d, req, vm, SV_GUEST_FILE_WRITE,
         json_pack("{s:I, s:O, s:I}", "handle", (json_int_t)h, "buf-b64", data, "count", (json_int_t)n), n,
         GUEST_IO_TIMEOUT_MS);
}

/* {"handle": H}: guest-file-close. */
void sv_api_vm_file_close(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    int64_t h = handle_param(req, params);
    if (!h)
        return;
    call(d, req, vm, SV_GUEST_FILE_CLOSE, json_pack("{s:I}", "handle", (json_int_t)h), 0, GUEST_CMD_TIMEOUT_MS);
}

/* ---- vm.copy_in ------------------------------------------------------------------- */

/* The regular file the client passed as params[what + "_fd"] (params[what]
 * is its name, shown only): 0 with *ret_fd, or a negative errno with err.
 * The daemon opens no file a client names. */
static int take_client_file(sv_ctl_req *req, json_t *params, const char *what, const char *label, const char *how,
                            int *ret_fd, qv_error *err) {
    char key[32];
    snprintf(key, sizeof key, "%s_fd", what);
    int r = sv_api_take_file(req, params, key, what, label, ret_fd, err);
    if (r == 0)
        r = qv_error_set(err, EINVAL, "\"%s\" missing: the client %s the file and sends it with the request "
                                      "(\"%s\" is only its name)",
                         key, how, what);
    return r < 0 ? r : 0;
}

static void copy_progress(uint64_t bytes, uint64_t total, void *userdata) {
    json_t *p = json_pack("{s:I, s:I}", "bytes", (json_int_t)bytes, "total", (json_int_t)total);
    if (p)
        json_object_set_new(p, "percent", json_real(total ? (double)bytes * 100.0 / (double)total : 100.0));
    sv_ctl_progress(userdata, p);
}

static bool copy_client_gone(void *userdata) {
    return sv_ctl_req_client_gone(userdata);
}

/* {"path": absolute guest path (a file, or a directory the file goes into),
 * "filename": the file's name in such a directory (optional), "force",
 * "mode": permission bits, "source_fd": the file the client opened,
 * "source": its name (shown, never opened)} */
void sv_api_vm_copy_in(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    const char *path = text_param(json_object_get(params, "path"), GUEST_PATH_MAX);
    json_t *fnj = json_object_get(params, "filename"), *force = json_object_get(params, "force");
    json_t *mode = json_object_get(params, "mode"), *srcj = json_object_get(params, "source");
    const char *filename = fnj && !json_is_null(fnj) ? text_param(fnj, 255) : NULL;
    if (!path || path[0] != '/') {
        sv_ctl_reply_error(req, EINVAL, "\"path\" must be an absolute path of at most %u bytes", GUEST_PATH_MAX);
        return;
    }
    if (fnj && !json_is_null(fnj) &&
        (!filename || strchr(filename, '/') || strcmp(filename, ".") == 0 || strcmp(filename, "..") == 0)) {
        sv_ctl_reply_error(req, EINVAL, "\"filename\" must be a file name (no '/', not . or ..) of at most 255 bytes");
        return;
    }
    if ((force && !json_is_boolean(force)) ||
        (mode && (!json_is_integer(mode) || json_integer_value(mode) < 0 || json_integer_value(mode) > 07777)) ||
        (srcj && !json_is_string(srcj))) {
        sv_ctl_reply_error(req, EINVAL, "\"force\" must be a boolean, \"mode\" permission bits (0 to 07777), "
                                        "\"source\" a string");
        return;
    }
    const char *src = srcj ? json_string_value(srcj) : "the source";
    qv_error err = {0};
    _cleanup_close_ int fd = -1;
    int r = take_client_file(req, params, "source", src, "opens", &fd, &err);
    struct stat st;
    if (r >= 0 && fstat(fd, &st) < 0)
        r = qv_error_set(&err, errno, "source %s: %s", src, strerror(errno));
    if (r < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    sv_vm_copy_args a = {
        .fd = fd,
        .size = (uint64_t)st.st_size,
        .path = path,
        .filename = filename,
        .force = json_is_true(force),
        .mode = mode ? (unsigned)json_integer_value(mode) : (unsigned)(st.st_mode & 07777),
        .progress = sv_ctl_req_wants_progress(req) ? copy_progress : NULL,
        .gone = copy_client_gone,
    };
    log_info("VM %s: copy of %s (pid %d's file) into %s", sv_vm_name(vm), src, (int)sv_ctl_req_peer(req)->pid, path);
    if (sv_vm_copy_in(d->vmctl, vm, &a, guest_done, req, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    TAKE_FD(fd); /* the copy's now */
}

/* ---- vm.copy_out ------------------------------------------------------------------ */

static void copy_out_progress(uint64_t bytes, uint64_t total, void *userdata) {
    (void)total; /* the agent has no stat */
    sv_ctl_progress(userdata, json_pack("{s:I}", "bytes", (json_int_t)bytes));
}

/* {"path": absolute guest path of a file, "target_fd": a regular file the
 * client made and opened for writing, "target": its name (shown, never
 * opened)} */
void sv_api_vm_copy_out(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    const char *path = text_param(json_object_get(params, "path"), GUEST_PATH_MAX);
    json_t *dstj = json_object_get(params, "target");
    if (!path || path[0] != '/') {
        sv_ctl_reply_error(req, EINVAL, "\"path\" must be an absolute path of at most %u bytes", GUEST_PATH_MAX);
        return;
    }
    if (dstj && !json_is_string(dstj)) {
        sv_ctl_reply_error(req, EINVAL, "\"target\" must be a string");
        return;
    }
    const char *dst = dstj ? json_string_value(dstj) : "the target";
    qv_error err = {0};
    _cleanup_close_ int fd = -1;
    int r = take_client_file(req, params, "target", dst, "makes", &fd, &err);
    int fl = r >= 0 ? fcntl(fd, F_GETFL) : 0;
    if (r >= 0 && (fl < 0 || ((fl & O_ACCMODE) != O_WRONLY && (fl & O_ACCMODE) != O_RDWR)))
        r = qv_error_set(&err, EINVAL, "target %s is not open for writing", dst);
    if (r < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    sv_vm_copy_args a = {
        .fd = fd,
        .path = path,
        .progress = sv_ctl_req_wants_progress(req) ? copy_out_progress : NULL,
        .gone = copy_client_gone,
    };
    log_info("VM %s: copy of %s out of the guest into %s (pid %d's file)", sv_vm_name(vm), path, dst,
             (int)sv_ctl_req_peer(req)->pid);
    if (sv_vm_copy_out(d->vmctl, vm, &a, guest_done, req, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    TAKE_FD(fd); /* the copy's now */
}
