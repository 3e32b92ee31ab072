/* qvisor gpu list */
#include "cli.h"
#include "output.h"

#include <stdio.h>
#include <string.h>

static const char list_help[] =
    "Usage: qvisor gpu list [--json]\n"
    "\n"
    "Every PCI display device of this node (class 0x03xxxx, any vendor), as\n"
    "libudev sees it: INDEX (a short id for `vm create --gpu`), the PCI address\n"
    "(the stable id), vendor:device ids and names (udev hwdb), the driver bound\n"
    "now, the IOMMU group, the NUMA node, the other functions of its slot (audio,\n"
    "USB …: they are passed along), and the VM that holds it.  Under the table,\n"
    "each group's other members with their classes: all of them go to vfio-pci\n"
    "when the GPU is passed through (bridges excepted).\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

int cmd_gpu_list(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, list_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("gpu list ", "bad option");
    if (optind < argc)
        return qv_cli_usage_error("gpu list ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "gpu.list", NULL, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    json_t *gpus = json_object_get(res, "gpus");
    if (json_array_size(gpus) == 0) {
        if (cli->verbosity >= 0)
            qv_printf("no PCI display devices on this node\n");
        json_decref(res);
        return QV_EXIT_OK;
    }
    static const char *const headers[] = {"INDEX", "ADDRESS", "IDS",  "NAME", "DRIVER",
                                          "GROUP", "NUMA",    "WITH", "VM",   NULL};
    qv_table *t = qv_table_new(headers);
    size_t i;
    json_t *g;
    json_array_foreach(gpus, i, g) {
        char index[16], ids[16], name[256], group[16], numa[16], with[128] = "";
        snprintf(index, sizeof index, "%lld", (long long)json_integer_value(json_object_get(g, "index")));
        snprintf(ids, sizeof ids, "%s:%s", qv_json_str(g, "vendor_id"), qv_json_str(g, "device_id"));
        const char *vendor = qv_json_str(g, "vendor"), *device = qv_json_str(g, "device");
        snprintf(name, sizeof name, "%s%s%s", vendor ? vendor : qv_json_str(g, "class_name"), device ? " " : "",
                 device ? device : "");
        json_t *grp = json_object_get(g, "iommu_group");
        snprintf(group, sizeof group, "%s", json_is_integer(grp) ? "" : "none");
        if (json_is_integer(grp))
            snprintf(group, sizeof group, "%lld", (long long)json_integer_value(grp));
        long long n = json_integer_value(json_object_get(g, "numa_node"));
        snprintf(numa, sizeof numa, "%s", n < 0 ? "-" : "");
        if (n >= 0)
            snprintf(numa, sizeof numa, "%lld", n);
        size_t k;
        json_t *m;
        json_array_foreach(json_object_get(g, "companions"), k, m) {
            size_t len = strlen(with);
            snprintf(with + len, sizeof with - len, "%s.%s", len ? "," : "", qv_json_str(m, "address") + 11);
        }
        char vm[96];
        const char *holder = qv_json_str(g, "vm"), *binding = qv_json_str(g, "binding");
        snprintf(vm, sizeof vm, "%s%s%s%s", holder ? holder : "-", binding ? " (" : "", binding ? binding : "",
                 binding ? ")" : "");
        const char *cells[] = {index, qv_json_str(g, "address"), ids, name, qv_json_str(g, "driver"), group, numa,
                               with[0] ? with : NULL, vm, NULL};
        qv_table_add(t, cells);
    }
    qv_table_print(t, stdout);
    qv_table_free(t);
    /* the groups: what goes to vfio-pci along with each GPU */
    json_array_foreach(gpus, i, g) {
        json_t *grp = json_object_get(g, "group");
        if (json_array_size(grp) <= 1)
            continue;
        qv_printf("\nIOMMU group %lld of %s:\n", (long long)json_integer_value(json_object_get(g, "iommu_group")),
               qv_json_str(g, "address"));
        size_t k;
        json_t *m;
        json_array_foreach(grp, k, m) {
            const char *drv = qv_json_str(m, "driver");
            qv_printf("  %s  %-28s %s%s\n", qv_json_str(m, "address"), qv_json_str(m, "class_name"), drv ? drv : "no driver",
                   json_is_true(json_object_get(m, "bridge")) ? " (bridge: stays)" : "");
        }
        if (qv_json_str(g, "stuck_reason"))
            qv_printf("  stuck: %s\n", qv_json_str(g, "stuck_reason"));
    }
    json_decref(res);
    return QV_EXIT_OK;
}
