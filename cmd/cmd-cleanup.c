/* qvisor cleanup */
#include "cli.h"
#include "output.h"

#include <string.h>

static const char cleanup_help[] =
    "Usage: qvisor cleanup [--dry-run] [--json]\n"
    "\n"
    "Removes what crashes can leave behind, and prints each thing it did:\n"
    "  - QEMU processes that claim to be a qvisor VM of this node (their -pidfile\n"
    "    in RUN_DIR/vm/NAME/, -name guest=NAME) but that the daemon does not\n"
    "    supervise: SIGTERM, then SIGKILL after kill_timeout;\n"
    "  - temp directories of interrupted creates and removes, and partial image\n"
    "    imports no process has open;\n"
    "  - sockets and pidfiles of VMs that have no QEMU;\n"
    "  - PCI devices qvisor moved to vfio-pci for a VM that is not running (or\n"
    "    no longer exists): given back to the driver recorded when they were\n"
    "    taken (devices marked stuck are tried again).  Devices on vfio-pci that\n"
    "    qvisor has no record of are left alone, with a message.\n"
    "Disks of defined VMs and base images are never touched.  The daemon does\n"
    "the work, so it sees which VMs are its own.\n"
    "\n"
    "  -n, --dry-run   only print what would be done\n"
    "\n"
    "Exit: 0, 69 daemon not running, 77 not allowed.\n";

int cmd_cleanup(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"dry-run", no_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
    bool dry = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hn", longopts, cleanup_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c != 'n')
            return qv_cli_usage_error("cleanup ", "bad option");
        dry = true;
    }
    if (optind < argc)
        return qv_cli_usage_error("cleanup ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    /* killing orphans waits for them: allow for kill_timeout per orphan */
    if (qv_cli_call_long(cli, "node.cleanup", json_pack("{s:b}", "dry_run", dry), 10ull * 60 * 1000, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    json_t *actions = json_object_get(res, "actions");
    size_t i;
    json_t *a;
    json_array_foreach(actions, i, a) {
        const char *path = json_string_value(json_object_get(a, "path"));
        json_t *pid = json_object_get(a, "pid");
        char where[64] = "";
        if (pid)
            snprintf(where, sizeof where, "pid %lld", (long long)json_integer_value(pid));
        const char *detail = json_string_value(json_object_get(a, "detail"));
        qv_printf("%s %s: %s%s%s%s\n", json_string_value(json_object_get(a, "what")), path ? path : where,
               json_string_value(json_object_get(a, "action")), detail ? " (" : "", detail ? detail : "",
               detail ? ")" : "");
    }
    if (cli->verbosity >= 0 && json_array_size(actions) == 0)
        qv_printf("nothing to clean up\n");
    json_decref(res);
    return QV_EXIT_OK;
}
