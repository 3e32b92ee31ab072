/* qvisor check */
#include "cli.h"
#include "output.h"

#include "sysroot.h"
#include "host/check.h"

#include <stdlib.h>
#include <string.h>

static const char check_help[] =
    "Usage: qvisor check [--need kvm|vfio|hugepages|uefi]... [--json]\n"
    "\n"
    "Tells whether this node can run VMs, without the daemon and without changing\n"
    "anything: one line per item, OK, WARN or FAIL, with a hint below what is not\n"
    "OK.  It runs QEMU and a KVM vCPU with tiny throw-away guests, and reads /sys\n"
    "and /proc (below paths.sysfs_root, or QVISOR_SYSROOT).\n"
    "\n"
    "Items: qemu (binary, version, seccomp sandbox), qemu-img, kvm (/dev/kvm, API\n"
    "version, and a vCPU that must really run), accel (what qemu.accelerator gives\n"
    "VMs, as the daemon decides it), cpu (vmx/svm), iommu (groups, or the kernel\n"
    "parameters that turn it on), vfio (modules), vfio-pci (each device on it and\n"
    "the VM that holds it), gpu (each display device's IOMMU group), hugepages,\n"
    "ovmf and ovmf-secure (UEFI firmware for --firmware uefi and uefi-secure,\n"
    "from QEMU's firmware descriptors or paths.firmware_dir), and the state,\n"
    "images, instances and run directories.\n"
    "\n"
    "Without --need, only what every VM needs fails: QEMU, qemu-img, the\n"
    "directories, and KVM when qemu.accelerator is kvm.  An unusable KVM with\n"
    "accelerator auto is a warning (VMs run with TCG, much slower).\n"
    "\n"
    "  -n, --need FEATURE   also fail when FEATURE is missing: kvm, vfio,\n"
    "                       hugepages, uefi (repeatable, or a comma list)\n"
    "\n"
    "Exit: 0 nothing failed, 69 something failed, 78 invalid config.\n";

static const char *status_label(int s) {
    return s == SV_CHECK_OK ? "OK" : s == SV_CHECK_WARN ? "WARN" : "FAIL";
}

json_t *qv_cli_check_json(const sv_check_report *r) {
    json_t *items = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const sv_check_item *it = &r->items[i];
        json_array_append_new(items, json_pack("{s:s, s:s, s:s, s:s?}", "name", it->name, "status",
                                               sv_check_status_name(it->status), "detail", it->detail, "hint",
                                               it->hint[0] ? it->hint : NULL));
    }
    return json_pack("{s:b, s:o}", "ok", sv_check_report_ok(r), "items", items);
}

static json_t *report_json(const sv_check_report *r, unsigned needs) {
    json_t *need_list = json_array();
    if (needs & SV_NEED_KVM)
        json_array_append_new(need_list, json_string("kvm"));
    if (needs & SV_NEED_VFIO)
        json_array_append_new(need_list, json_string("vfio"));
    if (needs & SV_NEED_HUGEPAGES)
        json_array_append_new(need_list, json_string("hugepages"));
    if (needs & SV_NEED_UEFI)
        json_array_append_new(need_list, json_string("uefi"));
    json_t *j = qv_cli_check_json(r);
    json_object_set_new(j, "needs", need_list);
    return j;
}

void qv_cli_check_print(const sv_check_report *r, bool quiet) {
    int width = 0;
    size_t warns = 0, fails = 0;
    for (size_t i = 0; i < r->n; i++) {
        int len = (int)strlen(r->items[i].name);
        if (len > width)
            width = len;
        warns += r->items[i].status == SV_CHECK_WARN;
        fails += r->items[i].status == SV_CHECK_FAIL;
    }
    for (size_t i = 0; i < r->n; i++) {
        const sv_check_item *it = &r->items[i];
        if (quiet && it->status == SV_CHECK_OK)
            continue;
        qv_printf("%-4s  %-*s  %s\n", status_label(it->status), width, it->name, it->detail);
        if (it->hint[0])
            qv_printf("      hint: %s\n", it->hint);
    }
    if (!quiet)
        qv_printf("%s: %zu failed, %zu warning%s\n", fails ? "not ready" : "ready", fails, warns, warns == 1 ? "" : "s");
}

int qv_cli_sysroot(qv_cli *cli, const sv_config **ret, qv_error *err) {
    int r = qv_cli_config(cli, ret, err);
    if (r < 0)
        return r;
    r = qv_sysroot_set((*ret)->sysfs_root);
    if (r < 0) {
        const char *env = getenv("QVISOR_SYSROOT");
        bool from_env = env && *env;
        return qv_error_set(err, QV_ECONFIG, "%s %s: %s", from_env ? "QVISOR_SYSROOT" : "paths.sysfs_root",
                            from_env ? env : (*ret)->sysfs_root, strerror(-r));
    }
    return 0;
}

int cmd_check(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"need", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
    unsigned needs = 0;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hn:", longopts, check_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c != 'n')
            return qv_cli_usage_error("check ", "bad option");
        if (sv_check_parse_needs(optarg, &needs) < 0)
            return qv_cli_usage_error("check ", "--need takes kvm, vfio, hugepages or uefi (or a comma list), got '%s'",
                                      optarg);
    }
    if (optind < argc)
        return qv_cli_usage_error("check ", "takes no arguments");

    qv_error err = {0};
    const sv_config *cfg;
    if (qv_cli_sysroot(cli, &cfg, &err) < 0)
        return qv_cli_fail(cli, &err);

    sv_check_opts opts = {.config = cfg, .needs = needs};
    sv_check_report report = {0};
    sv_check_all(&report, &opts);
    bool ok = sv_check_report_ok(&report);
    if (cli->json)
        qv_print_json(report_json(&report, needs), stdout);
    else
        qv_cli_check_print(&report, cli->verbosity < 0);
    sv_check_report_clear(&report);
    return ok ? QV_EXIT_OK : QV_EXIT_UNAVAILABLE;
}
