/* qvisor vm edit | vm resize (docs/lifecycle.md, "Edit and resize") */
#include "cli.h"
#include "output.h"

#include "cleanup.h"
#include "util.h"
#include "spec/vmedit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char edit_help[] =
    "Usage: qvisor vm edit NAME [OPTIONS]\n"
    "\n"
    "Changes the spec of a stopped (or crashed) VM, checked as vm create checks\n"
    "one: a GPU another VM holds, a MAC or nat address another VM has, and room\n"
    "on the node and in its pool (every defined VM counts, this one with its new\n"
    "values only).  The new spec replaces spec.json atomically; the next start\n"
    "uses it, and rewrites the cloud-init seed when what it holds changed (its\n"
    "NICs).  Prints the VM as vm show does.\n"
    "\n"
    "  -c, --cpus N             vCPUs\n"
    "  -m, --memory SIZE        RAM, with a unit: 512M, 4G\n"
    "      --gpu ID[,keep][,take-group]\n"
    "                           the VM's GPUs become these (repeatable; as vm create)\n"
    "      --no-gpus            no GPUs\n"
    "      --net MODE[,KEY=VALUE...]\n"
    "                           the VM's NICs become these (repeatable, in order;\n"
    "                           as vm create).  A NIC like one it had (same mode,\n"
    "                           bridge, VLAN, address when given; or its mac=)\n"
    "                           keeps that NIC's MAC and nat address; a new NIC\n"
    "                           gets a MAC the VM never had\n"
    "      --default-net        one user-mode NIC (what a VM without --net has)\n"
    "      --restart POLICY     never | on-failure | always\n"
    "      --restart-limit N    restarts in a row before the policy gives up\n"
    "      --stop-timeout TIME  how long a graceful stop waits (60s, 2m)\n"
    "      --agent, --no-agent  the guest-agent channel\n"
    "      --pool NAME          resource pool (quotas)\n"
    "      --hugepages none|2M|1G\n"
    "      --numa auto|N|none   bind to a NUMA node (none: not bound)\n"
    "      --pin CPULIST|none   pin the vCPU and emulator threads (none: not pinned)\n"
    "      --json               print the VM as JSON\n"
    "\n"
    "Fixed at create: the image, the disk (grow it with qvisor vm resize), the\n"
    "storage pool, boot files, firmware, CPU model, the seed's settings, owner\n"
    "and Slurm job.\n"
    "\n"
    "Exit: 0, 64 no change given, 65 an invalid value, 66 no such VM or GPU,\n"
    "69 daemon not running, 75 the VM is not stopped or crashed (running,\n"
    "paused, starting, stopping, being created or removed: stop it first), an\n"
    "edit or resize of it is under way, a GPU is another VM's, a MAC or nat\n"
    "address is another VM's, or the node or its pool has no room for the new\n"
    "values (the old spec stays), 77 not root or in the socket group.\n";

int cmd_vm_edit(qv_cli *cli, int argc, char **argv) {
    enum {
        OPT_GPU = 0x200,
        OPT_NO_GPUS,
        OPT_NET,
        OPT_DEFAULT_NET,
        OPT_RESTART,
        OPT_RESTART_LIMIT,
        OPT_STOP_TIMEOUT,
        OPT_AGENT,
        OPT_NO_AGENT,
        OPT_POOL,
        OPT_HUGEPAGES,
        OPT_NUMA,
        OPT_PIN,
    };
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"cpus", required_argument, NULL, 'c'},
        {"memory", required_argument, NULL, 'm'},
        {"gpu", required_argument, NULL, OPT_GPU},
        {"no-gpus", no_argument, NULL, OPT_NO_GPUS},
        {"net", required_argument, NULL, OPT_NET},
        {"default-net", no_argument, NULL, OPT_DEFAULT_NET},
        {"restart", required_argument, NULL, OPT_RESTART},
        {"restart-limit", required_argument, NULL, OPT_RESTART_LIMIT},
        {"stop-timeout", required_argument, NULL, OPT_STOP_TIMEOUT},
        {"agent", no_argument, NULL, OPT_AGENT},
        {"no-agent", no_argument, NULL, OPT_NO_AGENT},
        {"pool", required_argument, NULL, OPT_POOL},
        {"hugepages", required_argument, NULL, OPT_HUGEPAGES},
        {"numa", required_argument, NULL, OPT_NUMA},
        {"pin", required_argument, NULL, OPT_PIN},
        {NULL, 0, NULL, 0},
    };
    _cleanup_(json_decrefp) json_t *changes = json_object();
    bool no_gpus = false, default_net = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hc:m:", longopts, edit_help)) != -1) {
        const char *key = NULL;
        switch (c) {
        case -2:
            return QV_EXIT_OK;
        case 'c': key = "cpus"; break;
        case 'm': key = "memory"; break;
        case OPT_RESTART: key = "restart"; break;
        case OPT_RESTART_LIMIT: key = "restart_limit"; break;
        case OPT_STOP_TIMEOUT: key = "stop_timeout"; break;
        case OPT_POOL: key = "pool"; break;
        case OPT_HUGEPAGES: key = "hugepages"; break;
        case OPT_NUMA:
        case OPT_PIN:
            if (strcmp(optarg, "none") == 0) { /* back to unset */
                json_object_set_new(changes, c == OPT_NUMA ? "numa" : "pin", json_null());
                continue;
            }
            key = c == OPT_NUMA ? "numa" : "pin";
            break;
        case OPT_AGENT:
        case OPT_NO_AGENT:
            json_object_set_new(changes, "agent", json_boolean(c == OPT_AGENT));
            continue;
        case OPT_NO_GPUS:
            no_gpus = true;
            continue;
        case OPT_DEFAULT_NET:
            default_net = true;
            continue;
        case OPT_GPU:
        case OPT_NET: {
            const char *list = c == OPT_GPU ? "gpus" : "nets";
            json_t *l = json_object_get(changes, list), *v = json_string(optarg);
            if (!v) {
                qv_error err = {0};
                qv_error_set(&err, EINVAL, "--%s: the value is not valid UTF-8", c == OPT_GPU ? "gpu" : "net");
                return qv_cli_fail(cli, &err);
            }
            if (!l)
                json_object_set_new(changes, list, l = json_array());
            json_array_append_new(l, v);
            continue;
        }
        default:
            return qv_cli_usage_error("vm edit ", "bad option");
        }
        json_t *v = json_string(optarg);
        if (!v) {
            qv_error err = {0};
            qv_error_set(&err, EINVAL, "%s: the value is not valid UTF-8", key);
            return qv_cli_fail(cli, &err);
        }
        json_object_set_new(changes, key, v);
    }
    if (no_gpus && json_object_get(changes, "gpus"))
        return qv_cli_usage_error("vm edit ", "--no-gpus and --gpu exclude each other");
    if (default_net && json_object_get(changes, "nets"))
        return qv_cli_usage_error("vm edit ", "--default-net and --net exclude each other");
    if (no_gpus)
        json_object_set_new(changes, "gpus", json_array());
    if (default_net)
        json_object_set_new(changes, "nets", json_array());
    if (argc - optind != 1)
        return qv_cli_usage_error("vm edit ", "needs exactly one NAME");
    if (json_object_size(changes) == 0)
        return qv_cli_usage_error("vm edit ", "nothing to change (see --help)");
    qv_error err = {0};
    json_t *vm = NULL;
    if (qv_cli_call(cli, "vm.edit", json_pack("{s:s, s:O}", "name", argv[optind], "changes", changes), &vm, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(vm, stdout);
        return QV_EXIT_OK;
    }
    qv_cli_print_vm(vm);
    json_decref(vm);
    return QV_EXIT_OK;
}

static const char resize_help[] =
    "Usage: qvisor vm resize NAME --disk [+]SIZE [--json]\n"
    "\n"
    "Grows the VM's disk to SIZE (or by SIZE with +): with QMP block_resize\n"
    "while QEMU runs it (running or paused: the guest sees the new capacity at\n"
    "once; growing its partitions and file systems is the guest's business),\n"
    "else with qemu-img resize, during which the VM cannot be started.  The\n"
    "extra bytes must fit its storage pool as a new disk must at create.  The\n"
    "new size is recorded in the VM's spec.  Disks never shrink.\n"
    "\n"
    "  -d, --disk [+]SIZE   the new size, or what to add, with a unit: 40G, +10G\n"
    "\n"
    "Exit: 0 (also when the disk has that size already), 1 QEMU or qemu-img\n"
    "refused, 64 no --disk, 65 a size smaller than the disk's (the message\n"
    "names both) or above 64T, 66 no such VM, 69 daemon not running, 75 the\n"
    "VM is starting, stopping, being created, removed, edited or resized, or\n"
    "its storage pool has no room (thin_overcommit off), 77 not root or in the\n"
    "socket group.\n";

int cmd_vm_resize(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"disk", required_argument, NULL, 'd'}, {NULL, 0, NULL, 0}};
    const char *disk = NULL;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hd:", longopts, resize_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c != 'd')
            return qv_cli_usage_error("vm resize ", "bad option");
        disk = optarg;
    }
    if (argc - optind != 1)
        return qv_cli_usage_error("vm resize ", "needs exactly one NAME");
    if (!disk)
        return qv_cli_usage_error("vm resize ", "needs --disk SIZE");
    bool relative = disk[0] == '+';
    uint64_t size;
    if (qv_parse_size(disk + relative, &size) < 0) {
        qv_error err = {0};
        qv_error_set(&err, EINVAL, "--disk: '%s' is not a size with a unit (40G, +10G)", disk);
        return qv_cli_fail(cli, &err);
    }
    qv_error err = {0};
    json_t *res = NULL;
    /* block_resize and qemu-img resize of a qcow2 change metadata only:
     * quick, but qemu-img may wait for a busy disk */
    if (qv_cli_call_long(cli, "vm.resize",
                         json_pack("{s:s, s:I, s:b}", "name", argv[optind], "size", (json_int_t)size, "relative",
                                   relative),
                         10ull * 60 * 1000, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    if (cli->verbosity >= 0) {
        char to[32], from[32];
        qv_format_size((uint64_t)json_integer_value(json_object_get(res, "disk_size")), to, sizeof to);
        qv_format_size((uint64_t)json_integer_value(json_object_get(res, "previous_size")), from, sizeof from);
        const char *how = json_string_value(json_object_get(res, "how"));
        if (how && strcmp(how, "unchanged") == 0)
            qv_printf("VM %s: the disk is %s already\n", argv[optind], to);
        else
            qv_printf("VM %s: disk grown from %s to %s (%s)\n", argv[optind], from, to, how ? how : "?");
    }
    json_decref(res);
    return QV_EXIT_OK;
}
