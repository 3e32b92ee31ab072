/* Helpers shared by every verb. */
#include "output.h"
#include "cli.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int qv_cli_fail(const qv_cli *cli, const qv_error *err) {
    (void)cli;
    qv_fprintf(stderr, "qvisor: error: %s\n", err->msg[0] ? err->msg : qv_strerror(err->code));
    return qv_exit_code_for_errno(err->code ? err->code : EIO);
}

int qv_cli_usage_error(const char *help_path, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("qvisor: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    qv_fprintf(stderr, "\nTry 'qvisor %s--help'.\n", help_path);
    return QV_EXIT_USAGE;
}

int qv_cli_getopt(qv_cli *cli, int argc, char **argv, const char *shortopts, const struct option *longopts,
                  const char *help) {
    for (;;) {
        int c = getopt_long(argc, argv, shortopts, longopts, NULL);
        if (c == QV_CLI_OPT_JSON) {
            cli->json = true;
            continue;
        }
        if (c == 'h') {
            fputs(help, stdout);
            return -2;
        }
        return c;
    }
}

int qv_cli_config(qv_cli *cli, const sv_config **ret, qv_error *err) {
    if (!cli->config && sv_config_load_or_default(cli->config_path, cli->config_explicit, &cli->config, NULL, err) < 0) {
        err->code = QV_ECONFIG;
        return -QV_ECONFIG;
    }
    *ret = cli->config;
    return 0;
}

int qv_cli_call(qv_cli *cli, const char *method, json_t *params, json_t **ret_result, qv_error *err) {
    return qv_cli_call_progress(cli, method, params, NULL, NULL, ret_result, err);
}

int qv_cli_socket_path(qv_cli *cli, const char **ret, qv_error *err) {
    if (cli->socket_path) {
        *ret = cli->socket_path;
        return 0;
    }
    const sv_config *c;
    int r = qv_cli_config(cli, &c, err);
    if (r < 0)
        return r;
    *ret = c->socket_path;
    return 0;
}

int qv_cli_call_progress(qv_cli *cli, const char *method, json_t *params, sv_ctl_progress_fn on_progress,
                         void *userdata, json_t **ret_result, qv_error *err) {
    const char *path;
    int r = qv_cli_socket_path(cli, &path, err);
    if (r < 0) {
        json_decref(params);
        return r;
    }
    r = sv_ctl_call_progress(path, method, params, (int)cli->timeout_ms, on_progress, userdata, ret_result, err);
    json_decref(params);
    return r;
}

int qv_cli_call_fds(qv_cli *cli, const char *method, json_t *params, const int *fds, size_t n_fds,
                    sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result, qv_error *err) {
    const char *path;
    int r = qv_cli_socket_path(cli, &path, err);
    if (r == 0)
        r = sv_ctl_call_fds(path, method, params, fds, n_fds, (int)cli->timeout_ms, on_progress, userdata, ret_result,
                            err);
    json_decref(params);
    return r;
}

int qv_cli_open_input(const char *what, const char *path, int *ret_fd, char **ret_name, qv_error *err) {
    _cleanup_close_ int fd = qv_open_regular_file(path);
    if (fd == -ENOENT || fd == -ENOTDIR)
        return qv_error_set(err, ENOENT, "%s %s: no such file", what, path);
    if (fd == -EACCES || fd == -EPERM)
        return qv_error_set(err, EACCES, "%s %s: permission denied (qvisor reads it with your rights)", what, path);
    if (fd == -EINVAL)
        return qv_error_set(err, EINVAL, "%s %s is not a regular file", what, path);
    if (fd < 0)
        return qv_error_set(err, -fd, "%s %s: %s", what, path, strerror(-fd));
    char abs[PATH_MAX];
    char *name = strdup(path[0] == '/' || !realpath(path, abs) ? path : abs);
    if (!name)
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret_name = name;
    *ret_fd = TAKE_FD(fd);
    return 0;
}

int qv_cli_call_long(qv_cli *cli, const char *method, json_t *params, uint64_t wait_ms, json_t **ret_result,
                     qv_error *err) {
    uint64_t saved = cli->timeout_ms;
    if (!cli->timeout_explicit)
        cli->timeout_ms = wait_ms;
    int r = qv_cli_call(cli, method, params, ret_result, err);
    cli->timeout_ms = saved;
    return r;
}
