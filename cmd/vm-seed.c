/* Seed files of `qvisor vm create` (see vm-seed.h). */
#include "vm-seed.h"

#include "cleanup.h"
#include "fileio.h"
#include "cloudinit/nocloud.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int read_input(const char *what, const char *path, size_t max, char **ret, size_t *ret_len, qv_error *err) {
    int r = qv_read_regular_file(path, max, ret, ret_len); /* a FIFO would hang us */
    if (r == -EFBIG)
        return qv_error_set(err, EINVAL, "%s file %s is larger than %zu KiB", what, path, max >> 10);
    if (r < 0)
        return qv_error_set(err, -r, "cannot read %s file %s: %s", what, path, strerror(-r));
    if (memchr(*ret, '\0', *ret_len)) {
        free(*ret);
        return qv_error_set(err, EINVAL, "%s file %s: binary content (a NUL byte)", what, path);
    }
    return 0;
}

int qv_cli_read_ssh_keys(const char *path, json_t *keys, qv_error *err) {
    _cleanup_free_ char *data = NULL;
    size_t len;
    /* a few keys; an authorized_keys file may hold many */
    int r = read_input("SSH key", path, 1u << 20, &data, &len, err);
    if (r < 0)
        return r;
    size_t found = 0, line_no = 0;
    for (char *line = data, *next; line && *line; line = next) {
        line_no++;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
            line[--n] = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#')
            continue;
        qv_error e = {0};
        if (ci_ssh_key_check(line, &e) < 0)
            return qv_error_set(err, EINVAL, "%s: line %zu: %s", path, line_no, e.msg);
        json_t *s = json_string(line);
        if (!s)
            return qv_error_set(err, EINVAL, "%s: line %zu: not UTF-8 text", path, line_no);
        json_array_append_new(keys, s);
        found++;
    }
    if (!found)
        return qv_error_set(err, EINVAL, "%s: no SSH public key in the file", path);
    return 0;
}

int qv_cli_read_seed_file(const char *what, const char *path, json_t **ret, qv_error *err) {
    _cleanup_free_ char *data = NULL;
    size_t len;
    int r = read_input(what, path, CI_INPUT_MAX, &data, &len, err);
    if (r < 0)
        return r;
    r = strcmp(what, "user-data") == 0 ? ci_user_data_check(path, data, len, err)
                                       : ci_yaml_mapping_check(path, data, len, err);
    if (r < 0)
        return r;
    json_t *s = json_stringn(data, len);
    if (!s)
        return qv_error_set(err, EINVAL, "%s file %s is not UTF-8 text", what, path);
    *ret = s;
    return 0;
}
