/* qvisor vm clone SRC NEW, qvisor image create NAME --from-vm VM: copies of
 * a stopped VM's disk, with a progress bar on a terminal (docs/lifecycle.md,
 * "Clone and image from a VM"). */
#include "cli.h"
#include "output.h"
#include "vm-seed.h"

#include "cleanup.h"
#include "util.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

static const char clone_help[] =
    "Usage: qvisor vm clone SRC NEW [OPTIONS]\n"
    "\n"
    "Defines VM NEW as a copy of the stopped (or crashed) VM SRC: its disk is a\n"
    "new overlay on SRC's base image holding only the clusters where SRC's disk\n"
    "differs from the base (qemu-img convert -B), its NICs get new MACs (and nat\n"
    "NICs new addresses), its host name is NEW, so its cloud-init seed has a new\n"
    "instance-id and cloud-init runs again in the copy.  The rest of the spec is\n"
    "SRC's, but for these (create's options):\n"
    "\n"
    "  -c, --cpus N             vCPUs\n"
    "  -m, --memory SIZE        RAM, with a unit: 512M, 4G\n"
    "      --gpu ID[,keep][,take-group]\n"
    "                           GPUs for the clone (repeatable); without --gpu the\n"
    "                           clone has none: SRC's GPUs stay SRC's\n"
    "      --net MODE[,KEY=VALUE...]\n"
    "                           the clone's NICs (repeatable), instead of SRC's\n"
    "                           (SRC's with new MACs; a SRC bridge NIC with a static\n"
    "                           ip= is refused: give --net)\n"
    "      --restart POLICY     never | on-failure | always\n"
    "      --pool NAME          resource pool\n"
    "      --storage-pool NAME  where the clone's disk lives\n"
    "      --hostname NAME      the guest's host name (default: NEW)\n"
    "      --ssh-key FILE       authorize the public key(s) in FILE too (repeatable)\n"
    "      --ssh                generate a key pair for the clone (SRC's --ssh: a\n"
    "                           new pair anyway)\n"
    "      --owner USER|UID     the local user who may start, stop … the clone (as\n"
    "                           vm create --owner); SRC's owner is not the clone's\n"
    "      --slurm-job ID       the Slurm job the clone serves (SRC's is not its)\n"
    "      --start              start it once it is defined (as qvisor vm start)\n"
    "      --json               print the new VM as JSON ({\"created\": VM,\n"
    "                           \"started\": START} with --start)\n"
    "\n"
    "SRC stays stopped while its disk is copied: a start or rm of SRC meanwhile\n"
    "is refused (75).  On a terminal a progress bar shows on stderr.  Ctrl-C\n"
    "(or a lost connection) interrupts the copy and nothing of NEW is left.\n"
    "\n"
    "Exit: 0, 65 invalid name or option, a SRC NIC with a static bridge address,\n"
    "a seed that would be SRC's (its --hostname and a network-config of yours),\n"
    "66 no VM SRC or no --owner user, 69 daemon not running, 73 a VM NEW exists,\n"
    "75 SRC is running (or starting, stopping, being removed: stop it first), or\n"
    "the node, a pool or the storage pool has no room, a MAC or GPU is another\n"
    "VM's, 77 you are not root or in the socket group.  With --start, as qvisor\n"
    "vm start.\n";

int cmd_vm_clone(qv_cli *cli, int argc, char **argv) {
    enum { OPT_RESTART = 0x200, OPT_GPU, OPT_NET, OPT_POOL, OPT_STORAGE_POOL, OPT_HOSTNAME, OPT_SSH_KEY, OPT_SSH,
           OPT_START, OPT_OWNER, OPT_SLURM_JOB };
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"cpus", required_argument, NULL, 'c'},
        {"memory", required_argument, NULL, 'm'},
        {"restart", required_argument, NULL, OPT_RESTART},
        {"gpu", required_argument, NULL, OPT_GPU},
        {"net", required_argument, NULL, OPT_NET},
        {"pool", required_argument, NULL, OPT_POOL},
        {"storage-pool", required_argument, NULL, OPT_STORAGE_POOL},
        {"hostname", required_argument, NULL, OPT_HOSTNAME},
        {"ssh-key", required_argument, NULL, OPT_SSH_KEY},
        {"ssh", no_argument, NULL, OPT_SSH},
        {"start", no_argument, NULL, OPT_START},
        {"owner", required_argument, NULL, OPT_OWNER},
        {"slurm-job", required_argument, NULL, OPT_SLURM_JOB},
        {NULL, 0, NULL, 0},
    };
    _cleanup_(json_decrefp) json_t *opts = json_object();
    bool start = false;
    qv_error err = {0};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hc:m:", longopts, clone_help)) != -1) {
        const char *key = NULL;
        switch (c) {
        case -2:
            return QV_EXIT_OK;
        case 'c': key = "cpus"; break;
        case 'm': key = "memory"; break;
        case OPT_RESTART: key = "restart"; break;
        case OPT_POOL: key = "pool"; break;
        case OPT_STORAGE_POOL: key = "storage_pool"; break;
        case OPT_HOSTNAME: key = "hostname"; break;
        case OPT_SLURM_JOB: key = "slurm_job"; break;
        case OPT_OWNER: {
            json_t *uid = qv_cli_owner_uid(optarg, &err);
            if (!uid)
                return qv_cli_fail(cli, &err);
            json_object_set_new(opts, "owner", uid);
            continue;
        }
        case OPT_START:
            start = true;
            continue;
        case OPT_SSH:
            json_object_set_new(opts, "ssh_generate", json_true());
            continue;
        case OPT_GPU:
        case OPT_NET: {
            const char *list = c == OPT_GPU ? "gpus" : "nets";
            json_t *l = json_object_get(opts, list);
            if (!l)
                json_object_set_new(opts, list, l = json_array());
            json_t *v = json_string(optarg);
            if (!v)
                return qv_cli_usage_error("vm clone ", "an option's value is not valid UTF-8");
            json_array_append_new(l, v);
            continue;
        }
        case OPT_SSH_KEY: {
            json_t *keys = json_object_get(opts, "ssh_keys");
            if (!keys)
                json_object_set_new(opts, "ssh_keys", keys = json_array());
            if (qv_cli_read_ssh_keys(optarg, keys, &err) < 0)
                return qv_cli_fail(cli, &err);
            continue;
        }
        default:
            return qv_cli_usage_error("vm clone ", "bad option");
        }
        json_t *v = json_string(optarg);
        if (!v)
            return qv_cli_usage_error("vm clone ", "an option's value is not valid UTF-8");
        json_object_set_new(opts, key, v);
    }
    if (argc - optind != 2)
        return qv_cli_usage_error("vm clone ", "needs SRC and NEW");
    const char *src = argv[optind], *name = argv[optind + 1];
    if (!qv_name_valid(name)) {
        qv_fprintf(stderr, "qvisor: error: '%s' is not a valid VM name (lowercase letters, digits and '-')\n", name);
        return QV_EXIT_DATAERR;
    }
    json_t *params = json_pack("{s:s, s:s, s:O}", "name", src, "new", name, "options", opts);
    if (!params)
        return qv_cli_usage_error("vm clone ", "SRC is not valid UTF-8");
    qv_cli_bar bar = {.verb = "cloning", .name = name, .shown = -1,
                      .draw = cli->verbosity >= 0 && !cli->json && isatty(STDERR_FILENO)};
    if (bar.draw)
        qv_cli_bar_draw(&bar, 0);
    json_t *vm = NULL;
    /* progress is asked for even when not drawn: it keeps a long copy
     * within --request-timeout */
    int r = qv_cli_call_progress(cli, "vm.clone", params, qv_cli_bar_progress, &bar, &vm, &err);
    qv_cli_bar_finish(&bar, r >= 0);
    if (r < 0)
        return qv_cli_fail(cli, &err);
    return qv_cli_vm_defined(cli, vm, start);
}

static const char image_create_help[] =
    "Usage: qvisor image create NAME --from-vm VM [--json]\n"
    "\n"
    "Makes the disk of the stopped (or crashed) VM a new base image\n"
    "IMAGES_DIR/NAME.qcow2: flattened (its base image's data and the VM's\n"
    "changes in one file, no backing file), read-only like every base image,\n"
    "listed by `image list`; VMs created on it start with the VM's content.\n"
    "The VM stays stopped meanwhile (a start or rm is refused, 75).  On a\n"
    "terminal a progress bar shows on stderr.  Ctrl-C, a lost connection or a\n"
    "daemon that dies leaves no image and nothing half-made.\n"
    "\n"
    "Exit: 0, 65 invalid name, 66 no such VM, 69 daemon not running, 73 an\n"
    "image NAME exists, 75 the VM runs (or starts, stops, is removed: stop it\n"
    "first), 77 you are not root or in the socket group.\n";

int cmd_image_create(qv_cli *cli, int argc, char **argv) {
    enum { OPT_FROM_VM = 0x200 };
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"from-vm", required_argument, NULL, OPT_FROM_VM}, {NULL, 0, NULL, 0}};
    const char *from = NULL;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, image_create_help)) != -1) {
        if (c == OPT_FROM_VM) {
            from = optarg;
            continue;
        }
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("image create ", "bad option");
    }
    if (argc - optind != 1)
        return qv_cli_usage_error("image create ", "needs exactly one NAME");
    if (!from)
        return qv_cli_usage_error("image create ", "needs --from-vm VM");
    const char *name = argv[optind];
    if (!qv_name_valid(name)) {
        qv_fprintf(stderr, "qvisor: error: '%s' is not a valid image name (lowercase letters, digits and '-')\n", name);
        return QV_EXIT_DATAERR;
    }
    json_t *params = json_pack("{s:s, s:s}", "name", name, "from_vm", from);
    if (!params)
        return qv_cli_usage_error("image create ", "VM is not valid UTF-8");
    qv_cli_bar bar = {.verb = "flattening", .name = name, .shown = -1,
                      .draw = cli->verbosity >= 0 && !cli->json && isatty(STDERR_FILENO)};
    if (bar.draw)
        qv_cli_bar_draw(&bar, 0);
    qv_error err = {0};
    json_t *img = NULL;
    int r = qv_cli_call_progress(cli, "image.create", params, qv_cli_bar_progress, &bar, &img, &err);
    qv_cli_bar_finish(&bar, r >= 0);
    if (r < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(img, stdout);
    } else {
        char vsize[32];
        qv_format_size_human((uint64_t)json_integer_value(json_object_get(img, "virtual_size")), vsize, sizeof vsize);
        if (cli->verbosity >= 0)
            qv_printf("made image %s (%s virtual) from VM %s: %s\n", name, vsize, from,
                      json_string_value(json_object_get(img, "path")));
        json_decref(img);
    }
    return QV_EXIT_OK;
}
