/* qvisor daemon | version */
#include "cli.h"
#include "output.h"

#include "qv-build.h"
#include "supervisor/daemon.h"

#include <errno.h>
#include <string.h>

static const char daemon_help[] =
    "Usage: qvisor [--config PATH] daemon\n"
    "\n"
    "Runs the qvisor daemon in the foreground (as a systemd Type=notify service:\n"
    "the unit qvisor.service).  It listens on the control socket of the\n"
    "config, supervises VMs, and re-reads the config on SIGHUP.  SIGTERM or\n"
    "SIGINT stop the daemon and leave VMs running; the next daemon adopts them.\n"
    "With metrics.listen set it also serves Prometheus metrics over HTTP\n"
    "(docs/metrics.md).\n"
    "\n"
    "Exit: 0 stopped cleanly, 73 another daemon is running, 77 permission\n"
    "denied on a directory or socket, 78 invalid config, 69 metrics.listen set\n"
    "but libmicrohttpd cannot be loaded, 1 other failures (metrics.listen's\n"
    "address in use, ...).\n";

int cmd_daemon(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, daemon_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        return qv_cli_usage_error("daemon ", "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error("daemon ", "takes no arguments");
    qv_log_set_ident("qvisor-daemon");
    sv_daemon_options opts = {
        .config_path = cli->config_path,
        .config_explicit = cli->config_explicit,
        .log_level_override = cli->verbosity < 0 ? QV_LOG_ERR : cli->verbosity > 0 ? QV_LOG_DEBUG : -1,
    };
    qv_error err = {0};
    int r = sv_daemon_run(&opts, &err);
    if (r < 0) {
        log_error("%s", err.msg);
        return qv_exit_code_for_errno(err.code ? err.code : r);
    }
    return QV_EXIT_OK;
}

static const char version_help[] =
    "Usage: qvisor version [--json]\n"
    "\n"
    "Prints the version of this command and, when it answers, of the running\n"
    "daemon (its pid and uptime too).  A daemon that is not running is reported,\n"
    "not an error.\n";

int cmd_version(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, version_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        return qv_cli_usage_error("version ", "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error("version ", "takes no arguments");
    qv_error err = {0};
    json_t *daemon = NULL;
    int r = qv_cli_call(cli, "ping", NULL, &daemon, &err);
    if (r < 0 && r != -ECONNREFUSED)
        return qv_cli_fail(cli, &err); /* a broken config or a hung daemon is worth an error */
    if (cli->json) {
        qv_print_json(json_pack("{s:s, s:o}", "client", QV_VERSION, "daemon", daemon ? daemon : json_null()),
                      stdout);
        return QV_EXIT_OK;
    }
    qv_printf("client: qvisor %s\n", QV_VERSION);
    if (daemon) {
        json_int_t up = json_integer_value(json_object_get(daemon, "uptime_ms")) / 1000;
        qv_printf("daemon: qvisor %s (pid %lld, up %lldh%02lldm%02llds, socket %s)\n",
               json_string_value(json_object_get(daemon, "version")),
               (long long)json_integer_value(json_object_get(daemon, "pid")), (long long)(up / 3600),
               (long long)(up / 60 % 60), (long long)(up % 60), json_string_value(json_object_get(daemon, "socket")));
        json_decref(daemon);
    } else {
        qv_printf("daemon: not running (%s)\n", err.msg);
    }
    return QV_EXIT_OK;
}
