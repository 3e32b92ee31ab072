/* qvisor net list | teardown */
#include "cli.h"
#include "output.h"

#include <stdio.h>
#include <string.h>

static const char list_help[] =
    "Usage: qvisor net list [--json]\n"
    "\n"
    "The node's VM networks and every NIC on them:\n"
    "  user    QEMU user networking (no bridge, no TAP)\n"
    "  nat     the NAT bridge (network.nat_bridge) with its subnet and gateway,\n"
    "          whether it exists and whether qvisor created it, the masquerade\n"
    "          table, and the static addresses allocated to VMs, with the count\n"
    "          of free ones (allocations live in the VM specs: they survive\n"
    "          daemon restarts and go with `vm rm`)\n"
    "  bridge  each existing bridge VMs attach to (network.overlay_bridge and\n"
    "          those named by bridge=), with VLANs\n"
    "Per NIC: VM, NIC index, MAC, address, TAP name (when the VM runs the TAP\n"
    "exists).\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

static const char *yes(json_t *o, const char *key) {
    return json_is_true(json_object_get(o, key)) ? "yes" : "no";
}

static void print_nics(json_t *nics) {
    if (json_array_size(nics) == 0) {
        qv_printf("  no NICs\n");
        return;
    }
    static const char *const headers[] = {"VM", "NIC", "MAC", "ADDRESS", "VLAN", "TAP", "STATE", NULL};
    qv_table *t = qv_table_new(headers);
    size_t i;
    json_t *n;
    json_array_foreach(nics, i, n) {
        char idx[8], vlan[8] = "-";
        snprintf(idx, sizeof idx, "%lld", (long long)json_integer_value(json_object_get(n, "nic")));
        if (json_is_integer(json_object_get(n, "vlan")))
            snprintf(vlan, sizeof vlan, "%lld", (long long)json_integer_value(json_object_get(n, "vlan")));
        const char *cells[] = {qv_json_str(n, "vm"), idx, qv_json_str(n, "mac"), qv_json_str(n, "ip"), vlan, qv_json_str(n, "tap"),
                               json_is_true(json_object_get(n, "running")) ? "running" : "stopped", NULL};
        qv_table_add(t, cells);
    }
    qv_table_print(t, stdout);
    qv_table_free(t);
}

int cmd_net_list(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, list_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("net list ", "bad option");
    if (optind < argc)
        return qv_cli_usage_error("net list ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "net.list", NULL, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    size_t i;
    json_t *net;
    json_array_foreach(json_object_get(res, "networks"), i, net) {
        const char *mode = qv_json_str(net, "mode");
        if (i)
            qv_printf("\n");
        if (strcmp(mode, "user") == 0) {
            qv_printf("user: QEMU user networking, SSH forwarded from 127.0.0.1\n");
        } else if (strcmp(mode, "nat") == 0) {
            json_t *created = json_object_get(net, "created");
            qv_printf("nat: bridge %s, subnet %s, gateway %s\n", qv_json_str(net, "bridge"), qv_json_str(net, "subnet"),
                   qv_json_str(net, "gateway"));
            qv_printf("  bridge present: %s (up: %s, created by qvisor: %s), gateway address: %s, forwarding: %s, "
                   "masquerade table: %s\n",
                   yes(net, "present"), yes(net, "up"), json_is_object(created) ? yes(created, "bridge") : "no",
                   yes(net, "gateway_address"), yes(net, "forwarding"), yes(net, "table"));
            qv_printf("  addresses: %lld allocated, %lld free of %lld\n",
                   (long long)json_integer_value(json_object_get(net, "allocated")),
                   (long long)json_integer_value(json_object_get(net, "free")),
                   (long long)json_integer_value(json_object_get(net, "addresses")));
        } else {
            qv_printf("bridge: %s (present: %s, up: %s, VLAN filtering: %s)\n", qv_json_str(net, "bridge"), yes(net, "present"),
                   yes(net, "up"), yes(net, "vlan_filtering"));
        }
        print_nics(json_object_get(net, "nics"));
    }
    json_decref(res);
    return QV_EXIT_OK;
}

static const char teardown_help[] =
    "Usage: qvisor net teardown [--dry-run] [--json]\n"
    "\n"
    "Takes down what qvisor set up for the NAT network, and only that: its\n"
    "nftables table (ip qvisor), the bridge if qvisor created it (else the\n"
    "gateway address if qvisor added it), and IP forwarding if qvisor turned it\n"
    "on.  The next start of a VM with a nat NIC sets it up again.  Refused\n"
    "while a VM with a nat NIC runs.  Address allocations are not touched.\n"
    "\n"
    "  -n, --dry-run   only print what would be done\n"
    "\n"
    "Exit: 0, 69 daemon not running, 75 VMs on the NAT network are running.\n";

int cmd_net_teardown(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"dry-run", no_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
    bool dry = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hn", longopts, teardown_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c != 'n')
            return qv_cli_usage_error("net teardown ", "bad option");
        dry = true;
    }
    if (optind < argc)
        return qv_cli_usage_error("net teardown ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "net.teardown", json_pack("{s:b}", "dry_run", dry), &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    json_t *actions = json_object_get(res, "actions");
    if (json_array_size(actions) == 0 && cli->verbosity >= 0)
        qv_printf("nothing to tear down: qvisor has not set up a NAT network here\n");
    size_t i;
    json_t *a;
    json_array_foreach(actions, i, a)
        qv_printf("%s %s: %s\n", qv_json_str(a, "what"), qv_json_str(a, "name"), qv_json_str(a, "action"));
    json_decref(res);
    return QV_EXIT_OK;
}
