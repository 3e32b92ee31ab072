/* qvisor metrics */
#include "cli.h"
#include "output.h"

#include <stdio.h>

static const char metrics_help[] =
    "Usage: qvisor metrics [--json]\n"
    "\n"
    "Prints the daemon's Prometheus metrics once, in the text exposition format\n"
    "(0.0.4), exactly as its HTTP endpoint (metrics.listen) serves them; it\n"
    "works without that endpoint, for a node without a scraper or for the\n"
    "node_exporter's textfile collector.  Collecting waits at most 1 s for each\n"
    "VM's QEMU and guest agent.  docs/metrics.md lists every metric.\n"
    "--json prints {\"content_type\": …, \"text\": …}.\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

int cmd_metrics(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, metrics_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        return qv_cli_usage_error("metrics ", "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error("metrics ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "node.metrics", NULL, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    /* the daemon's own text: names it validated, label values it escaped;
     * through the terminal filter all the same */
    const char *text = qv_json_str(res, "text");
    qv_printf("%s", text ? text : "");
    json_decref(res);
    return QV_EXIT_OK;
}
