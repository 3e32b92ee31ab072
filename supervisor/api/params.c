/* Parameters every control method reads the same way (see
 * daemon-internal.h): a name, a file the client sent. */
#include "supervisor/daemon-internal.h"

#include "cleanup.h"
#include "util.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

const char *sv_api_name_param(sv_ctl_req *req, json_t *params, const char *what) {
    const char *name = json_string_value(json_object_get(params, "name"));
    if (!name) {
        sv_ctl_reply_error(req, EINVAL, "missing \"name\" of the %s", what);
        return NULL;
    }
    if (!qv_name_valid(name)) {
        sv_ctl_reply_error(req, EINVAL, "'%s' is not a valid %s name", name, what);
        return NULL;
    }
    return name;
}

int sv_api_take_file(sv_ctl_req *req, json_t *params, const char *key, const char *what, const char *label,
                     int *ret_fd, qv_error *err) {
    _cleanup_close_ int fd = -1;
    int r = sv_ctl_req_take_fd(req, params, key, &fd, err);
    if (r <= 0)
        return r;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return qv_error_set(err, errno, "%s %s: %s", what, label, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return qv_error_set(err, EINVAL, "%s %s is not a regular file (%s)", what, label,
                            S_ISDIR(st.st_mode)                        ? "a directory"
                            : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                            : S_ISFIFO(st.st_mode)                     ? "a FIFO"
                                                                        : "not a file");
    *ret_fd = TAKE_FD(fd);
    return 1;
}
