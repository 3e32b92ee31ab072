/* The `qvisor` command: shared state of one invocation and the verb table
 * types.  Every verb is `int cmd_x(qv_cli *cli, int argc, char **argv)`,
 * with argv[0] the verb's own name, and returns a documented exit code
 * (QV_EXIT_* from error.h). */
#pragma once

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "spec/config.h"
#include "ctl/client.h"

typedef struct qv_cli {
    const char *config_path; /* --config, or the built-in default */
    bool config_explicit;    /* --config was given */
    const char *socket_path; /* --socket, or NULL: take it from the config */
    bool json;               /* --json: machine-readable output on stdout */
    int verbosity;           /* -1 quiet, 0 normal, 1+ verbose */
    uint64_t timeout_ms;     /* --request-timeout: longest wait for the daemon */
    bool timeout_explicit;   /* --request-timeout was given */
    sv_config *config;       /* loaded on demand by qv_cli_config() */
} qv_cli;

typedef int (*qv_cli_fn)(qv_cli *cli, int argc, char **argv);

typedef struct qv_cli_verb {
    const char *name;
    qv_cli_fn fn;
    const char *summary; /* one line for the help listing */
} qv_cli_verb;

/* Options every verb accepts besides its own: --json and -h/--help. */
#define QV_CLI_OPT_JSON 0x1001
#define QV_CLI_COMMON_LONGOPTS {"json", no_argument, NULL, QV_CLI_OPT_JSON}, {"help", no_argument, NULL, 'h'}

/* Prints "qvisor: error: MSG" and returns the exit code err->code maps to. */
int qv_cli_fail(const qv_cli *cli, const qv_error *err);
/* Prints "qvisor: MSG" and "Try 'qvisor HELP_PATH --help'." to stderr; returns 64. */
int qv_cli_usage_error(const char *help_path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Runs getopt_long over a verb's argv (GNU-style: options anywhere).  Handles
 * the common options itself: --json sets cli->json, --help prints `help` and
 * returns -2.  Returns the option character, -1 at the end, '?' on an error
 * (getopt already printed it). */
int qv_cli_getopt(qv_cli *cli, int argc, char **argv, const char *shortopts, const struct option *longopts,
                  const char *help);

/* The node config as the CLI sees it (for the socket path and defaults):
 * --config, else the default path, else built-in defaults when the default
 * file does not exist.  Exit-code mapping of failures is 78. */
int qv_cli_config(qv_cli *cli, const sv_config **ret, qv_error *err);
/* The control socket: --socket, else daemon.socket of the config (loaded on
 * demand).  *ret is borrowed from cli. */
int qv_cli_socket_path(qv_cli *cli, const char **ret, qv_error *err);
/* One request to the daemon (socket from --socket or the config); params
 * (may be NULL) is stolen. */
int qv_cli_call(qv_cli *cli, const char *method, json_t *params, json_t **ret_result, qv_error *err);
/* As qv_cli_call, for operations that take as long as they take (start,
 * stop): waits `wait_ms` unless --request-timeout was given. */
int qv_cli_call_long(qv_cli *cli, const char *method, json_t *params, uint64_t wait_ms, json_t **ret_result,
                     qv_error *err);

#define QV_CLI_DEFAULT_TIMEOUT_MS 30000
/* The same for a long request: asks for progress messages, hands each to
 * on_progress (its "progress" object, borrowed), and restarts the
 * --request-timeout at each, so a request may run as long as the daemon
 * keeps reporting (docs/protocol.md). */
int qv_cli_call_progress(qv_cli *cli, const char *method, json_t *params, sv_ctl_progress_fn on_progress,
                         void *userdata, json_t **ret_result, qv_error *err);

/* qv_cli_call_progress() (on_progress may be NULL) that sends fds (borrowed)
 * with the request, for the daemon to read files with the user's rights. */
int qv_cli_call_fds(qv_cli *cli, const char *method, json_t *params, const int *fds, size_t n_fds,
                    sv_ctl_progress_fn on_progress, void *userdata, json_t **ret_result, qv_error *err);

/* Opens a file the user named (what: "kernel", "source", …) with the
 * user's own rights, for the daemon: a regular file (symlinks followed),
 * never blocking on a FIFO.  *ret_fd is the caller's, *ret_name its absolute
 * name (malloc'd; what the daemon shows).  Errors name the file: ENOENT
 * (exit 66) missing, EACCES (77) not readable by the user, EINVAL (65) not a
 * regular file. */
int qv_cli_open_input(const char *what, const char *path, int *ret_fd, char **ret_name, qv_error *err);

/* Verbs (one file per noun). */
int cmd_daemon(qv_cli *cli, int argc, char **argv);
int cmd_version(qv_cli *cli, int argc, char **argv);
int cmd_config_check(qv_cli *cli, int argc, char **argv);
int cmd_config_show(qv_cli *cli, int argc, char **argv);
int cmd_config_reload(qv_cli *cli, int argc, char **argv);
int cmd_image_list(qv_cli *cli, int argc, char **argv);
int cmd_image_import(qv_cli *cli, int argc, char **argv);
int cmd_image_rm(qv_cli *cli, int argc, char **argv);
int cmd_vm_create(qv_cli *cli, int argc, char **argv);
int cmd_vm_clone(qv_cli *cli, int argc, char **argv);
/* What vm create (and vm clone) print for the new VM vm (stolen), and with
 * start its start (cmd-vm.c): the exit code. */
int qv_cli_vm_defined(qv_cli *cli, json_t *vm, bool start);
/* --owner USER|UID as the uid a spec takes (a new JSON integer): digits are
 * a uid, a name is looked up on this node; NULL with err: EINVAL (65) out
 * of range, ENOENT (66) no such user (cmd-vm.c). */
json_t *qv_cli_owner_uid(const char *v, qv_error *err);
int cmd_image_create(qv_cli *cli, int argc, char **argv);

/* The progress line of a long copy on a terminal (cmd-image.c):
 *   VERB NAME  42%  [############                ]
 * redrawn in place with '\r' as the daemon reports, finished with a newline
 * on success, wiped on failure.  verb NULL: "importing". */
typedef struct qv_cli_bar {
    const char *verb;
    const char *name;
    bool draw;  /* stderr is a terminal, and neither --json nor --quiet */
    int shown;  /* the percentage on screen, -1 when no bar is */
    int width;  /* columns the bar line takes */
} qv_cli_bar;
void qv_cli_bar_draw(qv_cli_bar *b, int pct);
/* An sv_ctl_progress_fn: userdata is the bar. */
void qv_cli_bar_progress(json_t *progress, void *userdata);
void qv_cli_bar_finish(qv_cli_bar *b, bool ok);
int cmd_vm_list(qv_cli *cli, int argc, char **argv);
int cmd_vm_show(qv_cli *cli, int argc, char **argv);
int cmd_vm_rm(qv_cli *cli, int argc, char **argv);
int cmd_vm_start(qv_cli *cli, int argc, char **argv);
int cmd_vm_stop(qv_cli *cli, int argc, char **argv);
int cmd_vm_restart(qv_cli *cli, int argc, char **argv);
int cmd_vm_pause(qv_cli *cli, int argc, char **argv);
int cmd_vm_resume(qv_cli *cli, int argc, char **argv);
int cmd_vm_ssh(qv_cli *cli, int argc, char **argv);
int cmd_vm_exec(qv_cli *cli, int argc, char **argv);
int cmd_vm_cp(qv_cli *cli, int argc, char **argv);
int cmd_vm_console(qv_cli *cli, int argc, char **argv);
int cmd_vm_log(qv_cli *cli, int argc, char **argv);
int cmd_vm_wait(qv_cli *cli, int argc, char **argv);
int cmd_vm_snapshot(qv_cli *cli, int argc, char **argv);
int cmd_vm_edit(qv_cli *cli, int argc, char **argv);
int cmd_vm_resize(qv_cli *cli, int argc, char **argv);
/* A VM (vm.show's result, borrowed) as `vm show` prints it, its owner's
 * user name added (cmd-vm.c). */
void qv_cli_print_vm(json_t *vm);
int cmd_events(qv_cli *cli, int argc, char **argv);
int cmd_cidata(qv_cli *cli, int argc, char **argv);
int cmd_cleanup(qv_cli *cli, int argc, char **argv);
int cmd_gpu_list(qv_cli *cli, int argc, char **argv);
int cmd_node_status(qv_cli *cli, int argc, char **argv);
int cmd_metrics(qv_cli *cli, int argc, char **argv);
int cmd_net_list(qv_cli *cli, int argc, char **argv);
int cmd_net_teardown(qv_cli *cli, int argc, char **argv);
int cmd_check(qv_cli *cli, int argc, char **argv);
int cmd_slurm_gres(qv_cli *cli, int argc, char **argv);
int cmd_slurm_check(qv_cli *cli, int argc, char **argv);
int cmd_slurm_health(qv_cli *cli, int argc, char **argv);
int cmd_slurm_prolog(qv_cli *cli, int argc, char **argv);
int cmd_slurm_epilog(qv_cli *cli, int argc, char **argv);

/* The config loaded and the sysfs root set from it (or QVISOR_SYSROOT),
 * for commands that read devices without the daemon (check, slurm). */
int qv_cli_sysroot(qv_cli *cli, const sv_config **ret, qv_error *err);
/* A check report printed as `qvisor check` prints it (quiet: failures and
 * warnings only), or as JSON ({"ok", "items"}). */
typedef struct sv_check_report sv_check_report;
void qv_cli_check_print(const sv_check_report *r, bool quiet);
json_t *qv_cli_check_json(const sv_check_report *r);
