/* Pure helpers of vm exec and vm cp (guest-util.h). */
#include "guest-util.h"

#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int qv_guest_arg_parse(const char *arg, char *name, size_t name_size, const char **ret_path) {
    const char *colon = strchr(arg, ':');
    if (!colon)
        return 0;
    size_t n = (size_t)(colon - arg);
    if (n == 0 || n > QV_NAME_MAX || n + 1 > name_size || memchr(arg, '/', n))
        return 0;
    char buf[QV_NAME_MAX + 1];
    memcpy(buf, arg, n);
    buf[n] = '\0';
    if (!qv_name_valid(buf))
        return 0;
    if (colon[1] != '/')
        return -EINVAL;
    memcpy(name, buf, n + 1);
    *ret_path = colon + 1;
    return 1;
}

int qv_exec_exit_status(int exitcode, int signal) {
    if (signal > 0)
        return 128 + signal;
    return exitcode >= 0 && exitcode <= 255 ? exitcode : 1;
}

size_t qv_cp_write_chunk(uint64_t max_request) {
    const uint64_t room = 1024; /* the method, the name, the handle, the JSON around the data */
    if (max_request <= room)
        return 0;
    uint64_t n = (max_request - room) / 4 * 3;
    if (n > QV_CP_WRITE_MAX)
        n = QV_CP_WRITE_MAX;
    n -= n % (3 * 4096);
    return (size_t)n;
}

void qv_path_base(const char *path, char *buf, size_t size) {
    size_t end = strlen(path);
    while (end > 0 && path[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && path[start - 1] != '/')
        start--;
    snprintf(buf, size, "%.*s", (int)(end - start), path + start);
}

void qv_path_dir(const char *path, char *buf, size_t size) {
    size_t end = strlen(path);
    while (end > 1 && path[end - 1] == '/')
        end--;
    while (end > 0 && path[end - 1] != '/')
        end--;
    if (end == 0) {
        snprintf(buf, size, ".");
        return;
    }
    while (end > 1 && path[end - 1] == '/')
        end--;
    snprintf(buf, size, "%.*s", (int)end, path);
}
