/* qvisor vm create | list | show | rm */
#include "cli.h"
#include "output.h"
#include "vm-seed.h"

#include "cleanup.h"
#include "fileio.h"
#include "util.h"
#include "supervisor/vmspec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char create_help[] =
    "Usage: qvisor vm create NAME --image IMAGE [OPTIONS]\n"
    "       qvisor vm create -f SPEC.yaml [NAME] [OPTIONS]\n"
    "\n"
    "Defines a VM: a directory INSTANCES_DIR/NAME with a qcow2 disk built on the\n"
    "base image (the image itself is never written).  Options override the\n"
    "spec file; unset values come from vm_defaults in the node config.\n"
    "\n"
    "  -i, --image IMAGE        base image (qvisor image list)\n"
    "  -c, --cpus N             vCPUs\n"
    "  -m, --memory SIZE        RAM, with a unit: 512M, 4G\n"
    "  -d, --disk SIZE          disk size, with a unit: 20G (not below the image's)\n"
    "  -f, --file SPEC.yaml     the spec as YAML (keys: name, image, cpus, memory,\n"
    "                           disk, stop_timeout, restart, restart_limit, kernel,\n"
    "                           initrd, append, agent, seed, hostname, user,\n"
    "                           ssh_keys, ssh_generate, user_data, network_config)\n"
    "      --restart POLICY     never | on-failure | always\n"
    "      --kernel PATH        boot this kernel directly (with --initrd, --append)\n"
    "      --initrd PATH\n"
    "      --append CMDLINE\n"
    "      --no-agent           no guest-agent channel\n"
    "      --json               print the new VM as JSON\n"
    "\n"
    "cloud-init seed (INSTANCE_DIR/NAME/seed.iso, attached as a read-only CD-ROM):\n"
    "      --hostname NAME      the guest's host name (default: the VM name)\n"
    "      --user NAME          login user with passwordless sudo (default: qvisor)\n"
    "      --ssh-key FILE       authorize the public key(s) in FILE (a .pub file);\n"
    "                           repeatable, adds to the spec file's ssh_keys\n"
    "      --ssh                generate a key pair in INSTANCE_DIR/NAME/ssh/ and\n"
    "                           authorize it (then: qvisor vm ssh NAME)\n"
    "      --user-data FILE     use FILE as user-data instead of the generated one\n"
    "                           (#cloud-config YAML, a #! script or MIME multipart);\n"
    "                           SSH keys then go to vendor-data\n"
    "      --network-config FILE  use FILE as network-config (YAML) instead of\n"
    "                           DHCP on the VM's NIC\n"
    "      --no-seed            no seed at all (the image configures itself)\n"
    "FILEs are read here and their content is sent to the daemon (one request:\n"
    "at most daemon.max_request_size, 1M by default).\n"
    "\n"
    "Names: lowercase letters, digits and '-', at most 63 characters.\n"
    "Exit: 0, 65 invalid spec (name, size, host name, key, user-data, …), 66 no\n"
    "such image or unreadable file, 69 daemon not running, 73 a VM with that name\n"
    "exists.\n";

int cmd_vm_create(qv_cli *cli, int argc, char **argv) {
    enum {
        OPT_RESTART = 0x200,
        OPT_KERNEL,
        OPT_INITRD,
        OPT_APPEND,
        OPT_NO_AGENT,
        OPT_HOSTNAME,
        OPT_USER,
        OPT_SSH_KEY,
        OPT_SSH,
        OPT_USER_DATA,
        OPT_NETWORK_CONFIG,
        OPT_NO_SEED,
    };
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"image", required_argument, NULL, 'i'},
        {"cpus", required_argument, NULL, 'c'},
        {"memory", required_argument, NULL, 'm'},
        {"disk", required_argument, NULL, 'd'},
        {"file", required_argument, NULL, 'f'},
        {"restart", required_argument, NULL, OPT_RESTART},
        {"kernel", required_argument, NULL, OPT_KERNEL},
        {"initrd", required_argument, NULL, OPT_INITRD},
        {"append", required_argument, NULL, OPT_APPEND},
        {"no-agent", no_argument, NULL, OPT_NO_AGENT},
        {"hostname", required_argument, NULL, OPT_HOSTNAME},
        {"user", required_argument, NULL, OPT_USER},
        {"ssh-key", required_argument, NULL, OPT_SSH_KEY},
        {"ssh", no_argument, NULL, OPT_SSH},
        {"user-data", required_argument, NULL, OPT_USER_DATA},
        {"network-config", required_argument, NULL, OPT_NETWORK_CONFIG},
        {"no-seed", no_argument, NULL, OPT_NO_SEED},
        {NULL, 0, NULL, 0},
    };
    json_t *opts = json_object();
    json_t *ssh_keys = NULL; /* --ssh-key: added to the spec file's */
    const char *file = NULL;
    qv_error ferr = {0};
    json_t *content = NULL;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hi:c:m:d:f:", longopts, create_help)) != -1) {
        const char *key = NULL;
        switch (c) {
        case -2:
            json_decref(opts);
            return QV_EXIT_OK;
        case 'i': key = "image"; break;
        case 'c': key = "cpus"; break;
        case 'm': key = "memory"; break;
        case 'd': key = "disk"; break;
        case OPT_RESTART: key = "restart"; break;
        case OPT_KERNEL: key = "kernel"; break;
        case OPT_INITRD: key = "initrd"; break;
        case OPT_APPEND: key = "append"; break;
        case OPT_HOSTNAME: key = "hostname"; break;
        case OPT_USER: key = "user"; break;
        case OPT_NO_AGENT:
            json_object_set_new(opts, "agent", json_false());
            continue;
        case OPT_NO_SEED:
            json_object_set_new(opts, "seed", json_false());
            continue;
        case OPT_SSH:
            json_object_set_new(opts, "ssh_generate", json_true());
            continue;
        case OPT_SSH_KEY:
            if (!ssh_keys)
                ssh_keys = json_array();
            if (qv_cli_read_ssh_keys(optarg, ssh_keys, &ferr) < 0)
                goto file_error;
            continue;
        case OPT_USER_DATA:
        case OPT_NETWORK_CONFIG:
            if (qv_cli_read_seed_file(c == OPT_USER_DATA ? "user-data" : "network-config", optarg, &content, &ferr) < 0)
                goto file_error;
            json_object_set_new(opts, c == OPT_USER_DATA ? "user_data" : "network_config", content);
            continue;
        case 'f':
            file = optarg;
            continue;
        default:
            json_decref(opts);
            json_decref(ssh_keys);
            return qv_cli_usage_error("vm create ", "bad option");
        }
        json_object_set_new(opts, key, json_string(optarg));
    }
    if (argc - optind > 1) {
        json_decref(opts);
        json_decref(ssh_keys);
        return qv_cli_usage_error("vm create ", "takes one NAME");
    }
    if (optind < argc)
        json_object_set_new(opts, "name", json_string(argv[optind]));

    /* The spec file, if any, is parsed here so errors name its lines; the
     * daemon validates the merged result again. */
    json_t *spec = NULL;
    if (file) {
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r = qv_read_file(file, 1 << 20, &data, &len);
        if (r < 0) {
            fprintf(stderr, "qvisor: error: cannot read %s: %s\n", file, strerror(-r));
            json_decref(opts);
            json_decref(ssh_keys);
            return r == -ENOENT ? QV_EXIT_NOINPUT : QV_EXIT_DATAERR;
        }
        qv_error err = {0};
        _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
        if (sv_vmspec_from_yaml(file, data, len, &s, &err) < 0) {
            json_decref(opts);
            json_decref(ssh_keys);
            return qv_cli_fail(cli, &err);
        }
        spec = sv_vmspec_to_json(s);
        json_object_update(spec, opts);
        json_decref(opts);
    } else {
        spec = opts;
    }
    if (ssh_keys) {
        json_t *all = json_object_get(spec, "ssh_keys");
        if (json_is_array(all))
            json_array_extend(all, ssh_keys);
        else
            json_object_set(spec, "ssh_keys", ssh_keys);
        json_decref(ssh_keys);
    }
    if (!json_object_get(spec, "name")) {
        json_decref(spec);
        return qv_cli_usage_error("vm create ", "needs a NAME");
    }
    if (!json_object_get(spec, "image")) {
        json_decref(spec);
        return qv_cli_usage_error("vm create ", "needs --image IMAGE");
    }
    qv_error err = {0};
    json_t *vm = NULL;
    if (qv_cli_call(cli, "vm.create", json_pack("{s:o}", "spec", spec), &vm, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(vm, stdout);
        return QV_EXIT_OK;
    }
    if (cli->verbosity >= 0) {
        const char *name = json_string_value(json_object_get(vm, "name"));
        json_t *sp = json_object_get(vm, "spec");
        printf("created VM %s (disk %s)\n", name, json_string_value(json_object_get(vm, "disk")));
        if (json_is_true(json_object_get(sp, "ssh_generate"))) {
            const char *user = json_string_value(json_object_get(sp, "user"));
            const char *dir = json_string_value(json_object_get(vm, "dir"));
            printf("SSH key pair: %s/ssh/id_ed25519 (login user %s). Once the VM runs:\n"
                   "  qvisor vm ssh %s\n"
                   "  ssh -i %s/ssh/id_ed25519 -p PORT %s@127.0.0.1   (PORT: see `qvisor vm show %s`)\n",
                   dir, user ? user : "?", name, dir, user ? user : "?", name);
        }
    }
    json_decref(vm);
    return QV_EXIT_OK;

file_error:
    json_decref(opts);
    json_decref(ssh_keys);
    return qv_cli_fail(cli, &ferr);
}

static const char list_help[] =
    "Usage: qvisor vm list [--json]\n"
    "\n"
    "Lists the VMs: name, state, QEMU pid, CPUs, memory, disk size, IP address,\n"
    "uptime, GPUs (PCI addresses), image and disk path.\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

static const char *or_dash(json_t *v, char *buf, size_t size) {
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, size, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    return "-";
}

int cmd_vm_list(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, list_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm list ", "bad option");
    if (optind < argc)
        return qv_cli_usage_error("vm list ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "vm.list", NULL, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    static const char *const headers[] = {"NAME", "STATE", "PID", "CPUS", "MEMORY", "DISK", "IP", "UPTIME", "GPUS",
                                          "IMAGE", NULL};
    qv_table *t = qv_table_new(headers);
    size_t i;
    json_t *vm;
    json_array_foreach(json_object_get(res, "vms"), i, vm) {
        char pid[32], cpus[32], mem[32], disk[32], up[32], ip[64];
        qv_format_size(json_integer_value(json_object_get(vm, "memory")), mem, sizeof mem);
        qv_format_size(json_integer_value(json_object_get(vm, "disk_size")), disk, sizeof disk);
        json_t *gpus = json_object_get(vm, "gpus");
        _cleanup_free_ char *gpu_list = NULL;
        size_t glen = 0;
        size_t gi;
        json_t *g;
        json_array_foreach(gpus, gi, g) {
            const char *s = json_string_value(g);
            char *grown = s ? realloc(gpu_list, glen + strlen(s) + 2) : NULL;
            if (!grown)
                continue;
            gpu_list = grown;
            glen += (size_t)sprintf(gpu_list + glen, "%s%s", glen ? "," : "", s);
        }
        json_t *uptime = json_object_get(vm, "uptime_s");
        if (json_is_integer(uptime)) {
            long long s = json_integer_value(uptime);
            snprintf(up, sizeof up, "%lldh%02lldm", s / 3600, s / 60 % 60);
        } else {
            snprintf(up, sizeof up, "-");
        }
        const char *cells[] = {json_string_value(json_object_get(vm, "name")),
                               json_string_value(json_object_get(vm, "state")),
                               or_dash(json_object_get(vm, "pid"), pid, sizeof pid),
                               or_dash(json_object_get(vm, "cpus"), cpus, sizeof cpus),
                               mem,
                               disk,
                               or_dash(json_object_get(vm, "ip"), ip, sizeof ip),
                               up,
                               gpu_list ? gpu_list : "-",
                               json_string_value(json_object_get(vm, "image")),
                               NULL};
        qv_table_add(t, cells);
    }
    qv_table_print(t, stdout);
    qv_table_free(t);
    json_decref(res);
    return QV_EXIT_OK;
}

static const char show_help[] =
    "Usage: qvisor vm show NAME [--json]\n"
    "\n"
    "Everything about one VM: state, spec, disk, log files, last exit reason.\n"
    "\n"
    "Exit: 0, 66 no such VM, 69 daemon not running.\n";

static void print_kv(const char *prefix, json_t *obj) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (json_is_object(v)) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s%s.", prefix, key);
            print_kv(sub, v);
            continue;
        }
        _cleanup_free_ char *text = json_is_string(v) ? strdup(json_string_value(v))
                                                      : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        char name[160];
        snprintf(name, sizeof name, "%s%s:", prefix, key);
        printf("%-22s %s\n", name, json_is_null(v) ? "-" : text);
    }
}

int cmd_vm_show(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, show_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm show ", "bad option");
    if (argc - optind != 1)
        return qv_cli_usage_error("vm show ", "needs exactly one NAME");
    qv_error err = {0};
    json_t *vm = NULL;
    if (qv_cli_call(cli, "vm.show", json_pack("{s:s}", "name", argv[optind]), &vm, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(vm, stdout);
        return QV_EXIT_OK;
    }
    print_kv("", vm);
    json_decref(vm);
    return QV_EXIT_OK;
}

static const char rm_help[] =
    "Usage: qvisor vm rm NAME\n"
    "\n"
    "Deletes a stopped VM and its instance directory, disk included.  This is\n"
    "the only command that deletes a VM's disk.\n"
    "\n"
    "Exit: 0, 66 no such VM, 69 daemon not running, 75 the VM is not stopped.\n";

int cmd_vm_rm(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, rm_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm rm ", "bad option");
    if (argc - optind != 1)
        return qv_cli_usage_error("vm rm ", "needs exactly one NAME");
    qv_error err = {0};
    if (qv_cli_call(cli, "vm.remove", json_pack("{s:s}", "name", argv[optind]), NULL, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->verbosity >= 0)
        printf("removed VM %s\n", argv[optind]);
    return QV_EXIT_OK;
}
