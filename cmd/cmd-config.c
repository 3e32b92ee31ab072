/* qvisor config check | show | reload */
#include "cli.h"
#include "output.h"

#include "cleanup.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static void add_row(const char *key, const char *value, void *userdata) {
    const char *cells[] = {key, value[0] ? value : "\"\"", NULL};
    qv_table_add(userdata, cells);
}

static void print_config(const sv_config *c, const char *source_note) {
    qv_printf("# %s\n", source_note);
    static const char *const headers[] = {"KEY", "VALUE", NULL};
    qv_table *t = qv_table_new(headers);
    sv_config_visit(c, add_row, t);
    qv_table_print(t, stdout);
    qv_table_free(t);
}

static const char check_help[] =
    "Usage: qvisor config check [PATH] [--json]\n"
    "\n"
    "Validates a node config without changing anything and prints the effective\n"
    "settings (defaults filled in).  PATH defaults to --config or the default\n"
    "config file; when that default file does not exist, the built-in defaults\n"
    "are shown.\n"
    "\n"
    "Exit: 0 valid, 66 the named file does not exist, 78 invalid (the message\n"
    "names file:line:column and the key).\n";

int cmd_config_check(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, check_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        return qv_cli_usage_error("config check ", "bad option");
    }
    if (argc - optind > 1)
        return qv_cli_usage_error("config check ", "takes at most one PATH");

    const char *path = optind < argc ? argv[optind] : cli->config_path;
    bool named = optind < argc || cli->config_explicit;
    qv_error err = {0};
    _cleanup_(sv_config_freep) sv_config *cfg = NULL;
    bool defaulted;
    int r = sv_config_load_or_default(path, named, &cfg, &defaulted, &err);
    if (r < 0) {
        qv_fprintf(stderr, "qvisor: error: %s\n", err.msg);
        return r == -ENOENT ? QV_EXIT_NOINPUT : QV_EXIT_CONFIG;
    }
    char note[4200];
    snprintf(note, sizeof note, defaulted ? "%s does not exist: built-in defaults apply" : "%s is valid", path);
    if (cli->json)
        qv_print_json(sv_config_to_json(cfg), stdout);
    else
        print_config(cfg, note);
    return QV_EXIT_OK;
}

static const char show_help[] =
    "Usage: qvisor config show [--json]\n"
    "\n"
    "Prints the settings the running daemon uses (after any reloads).\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

int cmd_config_show(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, show_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        return qv_cli_usage_error("config show ", "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error("config show ", "takes no arguments");
    qv_error err = {0};
    json_t *result = NULL;
    if (qv_cli_call(cli, "config.get", NULL, &result, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(result, stdout);
        return QV_EXIT_OK;
    }
    /* Same KEY VALUE table as `check`, from the daemon's effective config. */
    _cleanup_(sv_config_freep) sv_config *cfg = NULL;
    int r = sv_config_from_json(result, &cfg, &err);
    json_decref(result);
    if (r < 0)
        return qv_cli_fail(cli, &err);
    char note[4200];
    snprintf(note, sizeof note, "running daemon, config from %s", cfg->source ? cfg->source : "built-in defaults");
    print_config(cfg, note);
    return QV_EXIT_OK;
}

static const char reload_help[] =
    "Usage: qvisor config reload\n"
    "\n"
    "Makes the running daemon re-read its config file (like SIGHUP).  An invalid\n"
    "file is refused and the daemon keeps running with its previous settings.\n"
    "Keys marked [restart] in config.example.yaml keep their running values.\n"
    "\n"
    "Exit: 0 reloaded, 69 daemon not running, 77 not permitted, 78 the new\n"
    "config is invalid (nothing changed).\n";

int cmd_config_reload(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, reload_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        return qv_cli_usage_error("config reload ", "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error("config reload ", "takes no arguments");
    qv_error err = {0};
    json_t *result = NULL;
    if (qv_cli_call(cli, "config.reload", NULL, &result, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json)
        qv_print_json(result, stdout);
    else {
        if (cli->verbosity >= 0)
            qv_printf("config reloaded from %s\n", json_string_value(json_object_get(result, "config")));
        json_decref(result);
    }
    return QV_EXIT_OK;
}
