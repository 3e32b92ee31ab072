/* qvisor vm create | list | show | start | stop | restart | pause | resume | rm
 * (vm console and vm log: cmd-console.c; vm ssh: cmd-vm-ssh.c) */
#include "cli.h"
#include "output.h"
#include "vm-seed.h"

#include "cleanup.h"
#include "fileio.h"
#include "util.h"
#include "spec/vmspec.h"

#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Waits for operations: a start is bounded by the daemon's own start
 * timeout, a stop by its escalation (the daemon always answers once QEMU is
 * gone); these only guard against a daemon that hangs. */
#define START_WAIT_MS (10ull * 60 * 1000)
#define STOP_WAIT_MS (2ull * 3600 * 1000)

/* vm.start, waiting as long as a start may take (vm start, vm create --start). */
static int request_start(qv_cli *cli, const char *name, json_t **ret, qv_error *err) {
    return qv_cli_call_long(cli, "vm.start", json_pack("{s:s}", "name", name), START_WAIT_MS, ret, err);
}

static void print_created(const qv_cli *cli, json_t *vm);
static int create_then_start(qv_cli *cli, json_t *vm);
static void print_start(const qv_cli *cli, json_t *res, const char *name);

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
    "                           initrd, append, agent, gpus, nets, pool, storage_pool,\n"
    "                           hugepages, numa, pin, firmware, cpu_model, seed,\n"
    "                           hostname, user,\n"
    "                           ssh_keys, ssh_generate, password_hash, packages,\n"
    "                           runcmd, user_data, network_config, owner,\n"
    "                           slurm_job)\n"
    "      --restart POLICY     never | on-failure | always\n"
    "      --kernel PATH        boot this kernel directly (with --initrd, --append):\n"
    "                           a non-empty regular file of at most 256 MiB, opened\n"
    "                           here with your rights (missing: exit 66, not yours\n"
    "                           to read: 77) and copied into the VM's directory,\n"
    "                           so the VM boots this file whatever happens to PATH\n"
    "      --initrd PATH        the same for the initramfs (at most 2 GiB)\n"
    "      --append CMDLINE     at most 2047 bytes (the kernel's COMMAND_LINE_SIZE)\n"
    "      --no-agent           no guest-agent channel\n"
    "      --gpu ID[,keep][,take-group]\n"
    "                           pass a GPU through with vfio-pci (repeatable): ID is\n"
    "                           a PCI address or an INDEX from `qvisor gpu list`;\n"
    "                           the other functions of its slot go along, every\n"
    "                           member of its IOMMU group is moved to vfio-pci at\n"
    "                           start and given back when QEMU is gone.  keep: stay\n"
    "                           on vfio-pci between runs; take-group: members of its\n"
    "                           group that a host driver holds (a NIC …) may be\n"
    "                           taken from the host too (refused otherwise)\n"
    "      --net MODE[,KEY=VALUE...]\n"
    "                           a NIC (repeatable, in order; default: one user NIC):\n"
    "                           user             QEMU user networking, SSH forwarded\n"
    "                                            from 127.0.0.1 (needs no root)\n"
    "                           nat[,ip=A.B.C.D] a TAP on the node's NAT bridge\n"
    "                                            (network.nat_*) with a static address,\n"
    "                                            allocated from the subnet unless given\n"
    "                           bridge[,bridge=BR][,vlan=ID][,ip=A.B.C.D/LEN[,gw=G]]\n"
    "                                            a TAP on an existing bridge (default\n"
    "                                            network.overlay_bridge), optionally in\n"
    "                                            one VLAN; DHCP unless ip= is given\n"
    "                           every NIC also takes mac=; by default MACs derive\n"
    "                           from the VM name and are unique on the node\n"
    "      --pool NAME          resource pool (quotas in the node config; default\n"
    "                           default)\n"
    "      --storage-pool NAME  where the disk lives (storage_pools in the node\n"
    "                           config; default resources.default_storage_pool)\n"
    "      --hugepages 2M|1G    back guest RAM with hugepages of that size (checked\n"
    "                           against free pages at start; never overcommitted)\n"
    "      --numa auto|N        bind guest memory and vCPUs to a NUMA node: N, or\n"
    "                           auto (the node of its GPUs, else the emptiest)\n"
    "      --pin CPULIST        pin the vCPU and emulator threads to these host\n"
    "                           CPUs (0-3,8)\n"
    "      --firmware bios|uefi|uefi-secure\n"
    "                           what the guest boots from (default bios, SeaBIOS):\n"
    "                           uefi is OVMF, uefi-secure OVMF with Secure Boot\n"
    "                           (Microsoft keys enrolled, SMM); the VM gets its own\n"
    "                           variable store INSTANCE_DIR/NAME/efivars.fd.  GPU\n"
    "                           passthrough guests usually want uefi\n"
    "      --cpu-model NAME     a CPU model QEMU lists (qemu-system-x86_64 -cpu\n"
    "                           help), checked now; default host under KVM, max\n"
    "                           under TCG (host needs KVM)\n"
    "      --owner USER|UID     the local user who may also start, stop, restart,\n"
    "                           pause and resume this VM, attach to its console,\n"
    "                           read its log and use its --ssh key (not remove\n"
    "                           it); a name is looked up here, digits are a uid\n"
    "                           (0-2147483646)\n"
    "      --slurm-job ID       the Slurm job this VM serves (1-4294967294), shown by\n"
    "                           vm show and in the refusals others get\n"
    "      --start              start it once it is defined (as qvisor vm start);\n"
    "                           a start that fails leaves the VM defined\n"
    "      --json               print the new VM as JSON ({\"created\": VM,\n"
    "                           \"started\": START} with --start)\n"
    "\n"
    "cloud-init seed (INSTANCE_DIR/NAME/seed.iso, attached as a read-only CD-ROM):\n"
    "      --hostname NAME      the guest's host name (default: the VM name)\n"
    "      --user NAME          login user with passwordless sudo (default: qvisor)\n"
    "      --ssh-key FILE       authorize the public key(s) in FILE (a .pub file);\n"
    "                           repeatable, adds to the spec file's ssh_keys\n"
    "      --ssh                generate a key pair in INSTANCE_DIR/NAME/ssh/ and\n"
    "                           authorize it (then: qvisor vm ssh NAME)\n"
    "      --password-hash HASH the user's password as a crypt(3) hash, not the\n"
    "                           password: mkpasswd -m sha-512 (default: password\n"
    "                           login locked)\n"
    "      --package NAME[=VERSION]\n"
    "                           install a package at first boot (repeatable, adds\n"
    "                           to the spec file's packages)\n"
    "      --runcmd CMD         run CMD (one line, through sh) at first boot\n"
    "                           (repeatable, in order, after the spec file's runcmd)\n"
    "      --user-data FILE     use FILE as user-data instead of the generated one\n"
    "                           (#cloud-config YAML, a #! script or MIME multipart);\n"
    "                           SSH keys then go to vendor-data; excludes\n"
    "                           --password-hash, --package and --runcmd\n"
    "      --network-config FILE  use FILE as network-config (YAML) instead of the\n"
    "                           generated one (DHCP or the static address per NIC)\n"
    "      --no-seed            no seed at all (the image configures itself)\n"
    "FILEs are read here and their content is sent to the daemon (one request:\n"
    "at most daemon.max_request_size, 1M by default); the kernel and initrd (also\n"
    "those of a spec file) are opened here and passed to the daemon as open files.\n"
    "\n"
    "Names: lowercase letters, digits and '-', at most 63 characters.\n"
    "Exit: 0, 65 invalid spec (name, size, host name, key, password hash, package,\n"
    "command, user-data, …; a kernel or initrd that is no usable file, a --gpu that\n"
    "is not a display device, a --firmware or --cpu-model this QEMU does not know),\n"
    "66 no such image, GPU, file or --owner user, 69 daemon not running, no IOMMU\n"
    "for the GPU, no OVMF for --firmware uefi/uefi-secure (apt-get install ovmf),\n"
    "--cpu-model host without KVM,\n"
    "73 a VM with that name exists, 75 the GPU (or its group) is held by another VM\n"
    "or by a host driver, a MAC or nat address is another VM's, the NAT subnet has\n"
    "no free address, or the node, its pool or its storage pool has no room for it\n"
    "(capacity × overcommit), 77 a file you may not read, or you are not root or\n"
    "in the socket group (only they create VMs, with an owner or without).\n"
    "With --start, a VM that was created but did not start gives the exit code of\n"
    "qvisor vm start (1 QEMU failed, 75 no room among the running VMs, ...).\n";

/* Options that repeat (--gpu, --net, --ssh-key, --package, --runcmd)
 * collect in lists {KEY: [...]}, which add to the spec file's lists. */
static void add_to_list(json_t *lists, const char *key, json_t *value) {
    json_t *l = json_object_get(lists, key);
    if (!l)
        json_object_set_new(lists, key, l = json_array());
    json_array_append_new(l, value);
}

static void append_lists(json_t *spec, json_t *lists) {
    const char *key;
    json_t *extra;
    json_object_foreach(lists, key, extra) {
        json_t *all = json_object_get(spec, key);
        if (json_is_array(all))
            json_array_extend(all, extra);
        else
            json_object_set(spec, key, extra);
    }
}

/* An argument as a JSON string; json_string() takes UTF-8 only and would
 * drop anything else without a word.  what names it in the error. */
static json_t *arg_string(const char *what, const char *value, qv_error *err) {
    json_t *j = json_string(value);
    if (!j)
        qv_error_set(err, EINVAL, "%s: the value is not valid UTF-8", what);
    return j;
}

/* The same for the value of option c ("--NAME" in the error). */
static json_t *opt_string(const struct option *longopts, int c, const char *value, qv_error *err) {
    const char *name = "?";
    for (const struct option *o = longopts; o->name; o++)
        if (o->val == c)
            name = o->name;
    char what[64];
    snprintf(what, sizeof what, "--%s", name);
    return arg_string(what, value, err);
}

/* --owner USER|UID as the uid the spec takes: digits are a uid, anything
 * else a user name looked up on this node (the daemon never resolves names:
 * the uid is what it compares with a client's SO_PEERCRED).  NULL with err:
 * EINVAL (65) out of range, ENOENT (66) no such user. */
json_t *qv_cli_owner_uid(const char *v, qv_error *err) {
    uint64_t uid;
    if (v[0] && strspn(v, "0123456789") == strlen(v)) {
        if (qv_parse_uint(v, 0, SV_OWNER_MAX, &uid) < 0) {
            qv_error_set(err, EINVAL, "--owner: uid %s is out of range (0 to %llu)", v, SV_OWNER_MAX);
            return NULL;
        }
        return json_integer((json_int_t)uid);
    }
    const struct passwd *pw = getpwnam(v);
    if (!pw) {
        qv_error_set(err, ENOENT, "--owner: no user named '%s' on this node", v);
        return NULL;
    }
    if (pw->pw_uid > SV_OWNER_MAX) {
        qv_error_set(err, EINVAL, "--owner: user %s has uid %u, above %llu", pw->pw_name, (unsigned)pw->pw_uid,
                     SV_OWNER_MAX);
        return NULL;
    }
    return json_integer((json_int_t)pw->pw_uid);
}

static void close_fds(int *fds, size_t n) {
    for (size_t i = 0; i < n; i++)
        qv_closep(&fds[i]);
}

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
        OPT_GPU,
        OPT_NET,
        OPT_POOL,
        OPT_STORAGE_POOL,
        OPT_HUGEPAGES,
        OPT_NUMA,
        OPT_PIN,
        OPT_PASSWORD_HASH,
        OPT_PACKAGE,
        OPT_RUNCMD,
        OPT_START,
        OPT_FIRMWARE,
        OPT_CPU_MODEL,
        OPT_OWNER,
        OPT_SLURM_JOB,
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
        {"gpu", required_argument, NULL, OPT_GPU},
        {"net", required_argument, NULL, OPT_NET},
        {"pool", required_argument, NULL, OPT_POOL},
        {"storage-pool", required_argument, NULL, OPT_STORAGE_POOL},
        {"hugepages", required_argument, NULL, OPT_HUGEPAGES},
        {"numa", required_argument, NULL, OPT_NUMA},
        {"pin", required_argument, NULL, OPT_PIN},
        {"password-hash", required_argument, NULL, OPT_PASSWORD_HASH},
        {"package", required_argument, NULL, OPT_PACKAGE},
        {"runcmd", required_argument, NULL, OPT_RUNCMD},
        {"start", no_argument, NULL, OPT_START},
        {"firmware", required_argument, NULL, OPT_FIRMWARE},
        {"cpu-model", required_argument, NULL, OPT_CPU_MODEL},
        {"owner", required_argument, NULL, OPT_OWNER},
        {"slurm-job", required_argument, NULL, OPT_SLURM_JOB},
        {NULL, 0, NULL, 0},
    };
    _cleanup_(json_decrefp) json_t *opts = json_object();
    _cleanup_(json_decrefp) json_t *lists = json_object(); /* the repeatable options */
    const char *file = NULL;
    bool start = false;
    qv_error ferr = {0};
    json_t *content = NULL, *text;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hi:c:m:d:f:", longopts, create_help)) != -1) {
        const char *key = NULL;
        switch (c) {
        case -2:
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
        case OPT_POOL: key = "pool"; break;
        case OPT_STORAGE_POOL: key = "storage_pool"; break;
        case OPT_HUGEPAGES: key = "hugepages"; break;
        case OPT_NUMA: key = "numa"; break;
        case OPT_PIN: key = "pin"; break;
        case OPT_FIRMWARE: key = "firmware"; break;
        case OPT_CPU_MODEL: key = "cpu_model"; break;
        case OPT_PASSWORD_HASH: key = "password_hash"; break;
        case OPT_SLURM_JOB: key = "slurm_job"; break;
        case OPT_OWNER:
            if (!(text = qv_cli_owner_uid(optarg, &ferr)))
                return qv_cli_fail(cli, &ferr);
            json_object_set_new(opts, "owner", text);
            continue;
        case OPT_NO_AGENT:
            json_object_set_new(opts, "agent", json_false());
            continue;
        case OPT_NO_SEED:
            json_object_set_new(opts, "seed", json_false());
            continue;
        case OPT_SSH:
            json_object_set_new(opts, "ssh_generate", json_true());
            continue;
        case OPT_GPU:
        case OPT_NET:
        case OPT_PACKAGE:
        case OPT_RUNCMD:
            if (!(text = opt_string(longopts, c, optarg, &ferr)))
                return qv_cli_fail(cli, &ferr);
            add_to_list(lists, c == OPT_GPU ? "gpus" : c == OPT_NET ? "nets" : c == OPT_PACKAGE ? "packages" : "runcmd",
                        text);
            continue;
        case OPT_SSH_KEY: {
            json_t *keys = json_object_get(lists, "ssh_keys");
            if (!keys)
                json_object_set_new(lists, "ssh_keys", keys = json_array());
            if (qv_cli_read_ssh_keys(optarg, keys, &ferr) < 0)
                return qv_cli_fail(cli, &ferr);
            continue;
        }
        case OPT_USER_DATA:
        case OPT_NETWORK_CONFIG:
            if (qv_cli_read_seed_file(c == OPT_USER_DATA ? "user-data" : "network-config", optarg, &content, &ferr) < 0)
                return qv_cli_fail(cli, &ferr);
            json_object_set_new(opts, c == OPT_USER_DATA ? "user_data" : "network_config", content);
            continue;
        case 'f':
            file = optarg;
            continue;
        case OPT_START:
            start = true;
            continue;
        default:
            return qv_cli_usage_error("vm create ", "bad option");
        }
        if (!(text = opt_string(longopts, c, optarg, &ferr)))
            return qv_cli_fail(cli, &ferr);
        json_object_set_new(opts, key, text);
    }
    if (argc - optind > 1)
        return qv_cli_usage_error("vm create ", "takes one NAME");
    if (optind < argc) {
        if (!(text = arg_string("NAME", argv[optind], &ferr)))
            return qv_cli_fail(cli, &ferr);
        json_object_set_new(opts, "name", text);
    }

    /* The spec file, if any, is parsed here so errors name its lines; the
     * daemon validates the merged result again. */
    json_t *spec = NULL;
    if (file) {
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r = qv_read_file(file, 1 << 20, &data, &len);
        if (r < 0) {
            qv_fprintf(stderr, "qvisor: error: cannot read %s: %s\n", file, strerror(-r));
            return r == -ENOENT ? QV_EXIT_NOINPUT : QV_EXIT_DATAERR;
        }
        qv_error err = {0};
        _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
        if (sv_vmspec_from_yaml(file, data, len, &s, &err) < 0)
            return qv_cli_fail(cli, &err);
        spec = sv_vmspec_to_json(s);
        json_object_update(spec, opts);
    } else {
        spec = TAKE_PTR(opts);
    }
    append_lists(spec, lists);
    if (!json_object_get(spec, "name")) {
        json_decref(spec);
        return qv_cli_usage_error("vm create ", "needs a NAME");
    }
    if (!json_object_get(spec, "image")) {
        json_decref(spec);
        return qv_cli_usage_error("vm create ", "needs --image IMAGE");
    }
    /* the kernel and initrd are opened here, with the user's rights, and
     * sent; the spec keeps their (absolute) names */
    qv_error err = {0};
    json_t *params = json_pack("{s:o}", "spec", spec);
    int fds[2] = {-1, -1};
    size_t n_fds = 0;
    static const char *const boot_keys[] = {"kernel", "initrd"};
    for (size_t i = 0; i < 2; i++) {
        const char *path = json_string_value(json_object_get(spec, boot_keys[i]));
        if (!path)
            continue;
        char *name = NULL, key[16];
        if (qv_cli_open_input(boot_keys[i], path, &fds[n_fds], &name, &err) < 0) {
            json_decref(params);
            close_fds(fds, n_fds);
            return qv_cli_fail(cli, &err);
        }
        json_object_set_new(spec, boot_keys[i], json_string(name));
        free(name);
        snprintf(key, sizeof key, "%s_fd", boot_keys[i]);
        json_object_set_new(params, key, json_integer((json_int_t)n_fds++));
    }
    json_t *vm = NULL;
    int r = qv_cli_call_fds(cli, "vm.create", params, fds, n_fds, NULL, NULL, &vm, &err);
    close_fds(fds, n_fds);
    if (r < 0)
        return qv_cli_fail(cli, &err);
    return qv_cli_vm_defined(cli, vm, start);
}

int qv_cli_vm_defined(qv_cli *cli, json_t *vm, bool start) {
    if (start)
        return create_then_start(cli, vm);
    if (cli->json) {
        qv_print_json(vm, stdout);
        return QV_EXIT_OK;
    }
    print_created(cli, vm);
    json_decref(vm);
    return QV_EXIT_OK;
}

static void print_created(const qv_cli *cli, json_t *vm) {
    if (cli->verbosity >= 0) {
        const char *name = json_string_value(json_object_get(vm, "name"));
        json_t *sp = json_object_get(vm, "spec");
        qv_printf("created VM %s (disk %s)\n", name, json_string_value(json_object_get(vm, "disk")));
        if (json_is_true(json_object_get(sp, "ssh_generate"))) {
            const char *user = json_string_value(json_object_get(sp, "user"));
            const char *key = json_string_value(json_object_get(vm, "ssh_key"));
            qv_printf("SSH key pair: %s (login user %s). Once the VM runs:\n"
                   "  qvisor vm ssh %s\n"
                   "  ssh -i %s -p PORT %s@127.0.0.1   (PORT: see `qvisor vm show %s`)\n",
                   key ? key : "?", user ? user : "?", name, key ? key : "?", user ? user : "?", name);
        }
    }
}

/* vm create --start: the definition stays whatever the start does (never
 * removed implicitly); the start's error and exit code are the command's.
 * Steals vm. */
static int create_then_start(qv_cli *cli, json_t *vm) {
    const char *name = json_string_value(json_object_get(vm, "name"));
    if (!cli->json)
        print_created(cli, vm);
    qv_error err = {0};
    json_t *res = NULL;
    if (request_start(cli, name, &res, &err) < 0) {
        qv_error_prefix(&err, "VM %s was created, but did not start", name);
        json_decref(vm);
        return qv_cli_fail(cli, &err);
    }
    if (cli->json)
        qv_print_json(json_pack("{s:o,s:o}", "created", vm, "started", res), stdout);
    else {
        print_start(cli, res, name);
        json_decref(res);
        json_decref(vm);
    }
    return QV_EXIT_OK;
}

/* The owner's user name, looked up here (the daemon sends the uid only):
 * "owner_user" in vm's JSON, null when the uid has no name on this node. */
static void add_owner_user(json_t *vm) {
    json_t *uid = json_object_get(vm, "owner");
    if (!json_is_integer(uid))
        return;
    const struct passwd *pw = getpwuid((uid_t)json_integer_value(uid));
    json_object_set_new(vm, "owner_user", pw ? json_string(pw->pw_name) : json_null());
}

static const char list_help[] =
    "Usage: qvisor vm list [--pool POOL] [--json | --names]\n"
    "\n"
    "Lists the VMs: name, state, QEMU pid, CPUs, memory, disk size, IP address\n"
    "and liveness of the guest agent (asked for at most 1 s), uptime, GPUs (PCI\n"
    "addresses), image and resource pool.  --json adds the disk path, the SSH\n"
    "port, the owner (uid, and owner_user: its name on this node) and the Slurm\n"
    "job.\n"
    "\n"
    "  --pool POOL   only the VMs of this resource pool\n"
    "  --names       only the names, one a line (for scripts and completion)\n"
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
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"pool", required_argument, NULL, 'P'}, {"names", no_argument, NULL, 'N'},
        {NULL, 0, NULL, 0}};
    const char *pool = NULL;
    bool names = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, list_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c == 'N') {
            names = true;
            continue;
        }
        if (c != 'P')
            return qv_cli_usage_error("vm list ", "bad option");
        pool = optarg;
    }
    if (names && cli->json)
        return qv_cli_usage_error("vm list ", "--names and --json exclude each other");
    if (optind < argc)
        return qv_cli_usage_error("vm list ", "takes no arguments");
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "vm.list", NULL, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (pool) {
        json_t *vms = json_object_get(res, "vms");
        for (size_t k = json_array_size(vms); k-- > 0;)
            if (strcmp(json_string_value(json_object_get(json_array_get(vms, k), "pool")) ?: "default", pool) != 0)
                json_array_remove(vms, k);
    }
    size_t i;
    json_t *vm;
    if (names) {
        json_array_foreach(json_object_get(res, "vms"), i, vm)
            qv_printf("%s\n", json_string_value(json_object_get(vm, "name")));
        json_decref(res);
        return QV_EXIT_OK;
    }
    json_array_foreach(json_object_get(res, "vms"), i, vm)
        add_owner_user(vm);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    static const char *const headers[] = {"NAME", "STATE", "PID", "CPUS", "MEMORY", "DISK", "IP", "AGENT", "UPTIME",
                                          "GPUS", "IMAGE", "POOL", NULL};
    qv_table *t = qv_table_new(headers);
    json_array_foreach(json_object_get(res, "vms"), i, vm) {
        char pid[32], cpus[32], mem[32], disk[32], up[32], ip[64], agent[32];
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
                               or_dash(json_object_get(vm, "agent"), agent, sizeof agent),
                               up,
                               gpu_list ? gpu_list : "-",
                               json_string_value(json_object_get(vm, "image")),
                               json_string_value(json_object_get(vm, "pool")),
                               NULL};
        qv_table_add(t, cells);
    }
    qv_table_print(t, stdout);
    qv_table_free(t);
    json_decref(res);
    return QV_EXIT_OK;
}

/* The one NAME argument of a verb, or a usage error (returns NULL). */
static const char *one_name(int argc, char **argv, const char *help_path) {
    if (argc - optind != 1) {
        qv_cli_usage_error(help_path, "needs exactly one NAME");
        return NULL;
    }
    return argv[optind];
}

static const char show_help[] =
    "Usage: qvisor vm show NAME [--json]\n"
    "\n"
    "Everything about one VM: state, spec, disk, log files, last exit reason,\n"
    "its owner (uid, and owner_user: the name of that uid on this node) and\n"
    "Slurm job.\n"
    "Sizes and durations as a user writes them (768M, 4G, 30s); --json gives\n"
    "bytes and milliseconds.\n"
    "\n"
    "Exit: 0, 66 no such VM, 69 daemon not running.\n";

/* Human output shows sizes and durations as a user writes them (768M, 4G,
 * 30s); --json keeps bytes and milliseconds.  Keys by their full name. */
static bool human_number(const char *name, json_t *v, char *buf, size_t size) {
    static const char *const sizes[] = {"memory:", "disk_size:", "spec.memory:", "spec.disk:"};
    static const char *const durations[] = {"spec.stop_timeout:"};
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    uint64_t n = (uint64_t)json_integer_value(v);
    for (size_t i = 0; i < QV_ARRAY_SIZE(sizes); i++)
        if (strcmp(name, sizes[i]) == 0) {
            qv_format_size(n, buf, size);
            return true;
        }
    for (size_t i = 0; i < QV_ARRAY_SIZE(durations); i++)
        if (strcmp(name, durations[i]) == 0) {
            qv_format_duration_ms(n, buf, size);
            return true;
        }
    return false;
}

static void print_kv(const char *prefix, json_t *obj) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!prefix[0] && strcmp(key, "nics") == 0 && json_is_array(v)) {
            /* one line per NIC: mode, MAC, then what it has */
            size_t i;
            json_t *nic;
            json_array_foreach(v, i, nic) {
                char line[256];
                int off = snprintf(line, sizeof line, "%s %s",
                                   json_string_value(json_object_get(nic, "mode")),
                                   json_string_value(json_object_get(nic, "mac")));
                static const char *const extra[] = {"ip", "gateway", "bridge", "vlan", "tap", NULL};
                for (size_t k = 0; extra[k] && off < (int)sizeof line; k++) {
                    json_t *x = json_object_get(nic, extra[k]);
                    if (json_is_string(x))
                        off += snprintf(line + off, sizeof line - (size_t)off, " %s=%s", extra[k], json_string_value(x));
                    else if (json_is_integer(x))
                        off += snprintf(line + off, sizeof line - (size_t)off, " %s=%lld", extra[k],
                                        (long long)json_integer_value(x));
                }
                char name[32];
                snprintf(name, sizeof name, "nic%zu:", i);
                _cleanup_free_ char *safe = qv_term_safe(line, false);
                qv_printf("%-22s %s\n", name, safe);
            }
            continue;
        }
        if (json_is_object(v)) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s%s.", prefix, key);
            print_kv(sub, v);
            continue;
        }
        char name[160], number[32];
        snprintf(name, sizeof name, "%s%s:", prefix, key);
        if (human_number(name, v, number, sizeof number)) {
            qv_printf("%-22s %s\n", name, number);
            continue;
        }
        _cleanup_free_ char *text = json_is_string(v) ? strdup(json_string_value(v))
                                                      : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        _cleanup_free_ char *safe = qv_term_safe(json_is_null(v) || !text ? "-" : text, false); /* one line */
        qv_printf("%-22s %s\n", name, safe);
    }
}

void qv_cli_print_vm(json_t *vm) {
    add_owner_user(vm);
    print_kv("", vm);
}

int cmd_vm_show(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, show_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm show ", "bad option");
    const char *name = one_name(argc, argv, "vm show ");
    if (!name)
        return QV_EXIT_USAGE;
    qv_error err = {0};
    json_t *vm = NULL;
    if (qv_cli_call(cli, "vm.show", json_pack("{s:s}", "name", name), &vm, &err) < 0)
        return qv_cli_fail(cli, &err);
    add_owner_user(vm);
    if (cli->json) {
        qv_print_json(vm, stdout);
        return QV_EXIT_OK;
    }
    print_kv("", vm);
    json_decref(vm);
    return QV_EXIT_OK;
}


static const char start_help[] =
    "Usage: qvisor vm start NAME [--json]\n"
    "\n"
    "Starts QEMU for the VM and waits until it runs the guest (not until the\n"
    "guest has booted).  Prints the QEMU pid and how to reach the guest by SSH:\n"
    "the port forwarded from 127.0.0.1 by a user-mode NIC, else port 22 of the\n"
    "first static address (both are what `vm ssh` uses).  When QEMU fails,\n"
    "its own error message is shown and nothing is left running.\n"
    "\n"
    "Root, the socket group and the VM's owner (vm create --owner) may start it.\n"
    "\n"
    "Exit: 0 started, 1 QEMU failed to start, 66 no such VM, 69 daemon not\n"
    "running, 73 already running or paused, 75 busy with another operation\n"
    "(starting, stopping, being created), 77 not root, the socket group or the\n"
    "VM's owner.\n";

/* How to reach the guest: the forwarded port of a user-mode NIC, else port 22
 * of the first static address (what `vm ssh` uses), else the agent's report. */
static void print_start(const qv_cli *cli, json_t *res, const char *name) {
    if (cli->verbosity < 0)
        return;
    long long pid = (long long)json_integer_value(json_object_get(res, "pid"));
    json_t *port = json_object_get(res, "ssh_port");
    const char *ip = json_string_value(json_object_get(res, "ip"));
    if (json_is_integer(port))
        qv_printf("started VM %s (pid %lld, ssh on 127.0.0.1:%lld)\n", name, pid, (long long)json_integer_value(port));
    else if (ip)
        qv_printf("started VM %s (pid %lld, ssh on %s:22: qvisor vm ssh %s)\n", name, pid, ip, name);
    else
        qv_printf("started VM %s (pid %lld; no forwarded port or static address: qvisor vm list shows the "
               "address the guest agent reports)\n",
               name, pid);
}

int cmd_vm_start(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, start_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm start ", "bad option");
    const char *name = one_name(argc, argv, "vm start ");
    if (!name)
        return QV_EXIT_USAGE;
    qv_error err = {0};
    json_t *res = NULL;
    if (request_start(cli, name, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json)
        qv_print_json(json_incref(res), stdout);
    else
        print_start(cli, res, name);
    json_decref(res);
    return QV_EXIT_OK;
}

static const char stop_help[] =
    "Usage: qvisor vm stop NAME [--timeout TIME] [--force] [--json]\n"
    "\n"
    "Shuts the guest down and waits until QEMU is gone:\n"
    "  1. the guest agent's guest-shutdown if the agent answers a ping within\n"
    "     3 s (and ACPI too if the guest is still up 15 s later), else the ACPI\n"
    "     power button (pressed again every 5 s);\n"
    "  2. after the stop timeout (the VM's stop_timeout, scaled up for large\n"
    "     RAM): QMP quit, then SIGTERM, then SIGKILL (kill_timeout apart).\n"
    "A paused VM is never sent ACPI or an agent shutdown (it would power off on\n"
    "resume): it is quit at once, which counts as forced (exit 3).\n"
    "\n"
    "  -t, --timeout TIME   how long the guest may take to shut down (30s, 2m)\n"
    "      --force          skip the guest: quit, then signals\n"
    "\n"
    "Exit: 0 the guest shut down cleanly (or the VM was not running, or --force),\n"
    "3 stopped, but forced (after the timeout, or at once: a paused guest), 66\n"
    "no such VM, 69 daemon not running, 75 busy (being created or removed), 77\n"
    "not root, the socket group or the VM's owner.\n";

/* Shared by stop and restart: parses -t/--force into params. */
static int stop_args(qv_cli *cli, int argc, char **argv, const char *help, const char *path, json_t *params) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"timeout", required_argument, NULL, 't'},
        {"force", no_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "ht:", longopts, help)) != -1) {
        uint64_t ms;
        switch (c) {
        case -2:
            return -2;
        case 't':
            if (qv_parse_duration_ms(optarg, &ms) < 0 || ms == 0 || ms > 24ull * 3600 * 1000)
                return qv_cli_usage_error(path, "--timeout takes a duration like 30s or 2m, got '%s'", optarg);
            json_object_set_new(params, "timeout_ms", json_integer((json_int_t)ms));
            break;
        case 'F':
            json_object_set_new(params, "force", json_true());
            break;
        default:
            return qv_cli_usage_error(path, "bad option");
        }
    }
    const char *name = one_name(argc, argv, path);
    if (!name)
        return QV_EXIT_USAGE;
    json_object_set_new(params, "name", json_string(name));
    return 0;
}

/* The exit code of a stop result: 3 when it had to be forced unasked. */
static int stop_exit(json_t *stop, bool forced_on_request) {
    const char *r = json_string_value(json_object_get(stop, "result"));
    return r && strcmp(r, "forced") == 0 && !forced_on_request ? QV_EXIT_FORCED : QV_EXIT_OK;
}

static void print_stop(const qv_cli *cli, json_t *stop, const char *name) {
    if (cli->verbosity < 0)
        return;
    const char *r = json_string_value(json_object_get(stop, "result"));
    const char *how = json_string_value(json_object_get(stop, "how"));
    double secs = json_number_value(json_object_get(stop, "seconds"));
    if (!r || strcmp(r, "already-stopped") == 0)
        qv_printf("VM %s is not running\n", name);
    else if (strcmp(r, "clean") == 0)
        qv_printf("stopped VM %s: the guest shut down (%s, %.1f s)\n", name, how ? how : "?", secs);
    else
        qv_printf("stopped VM %s: forced (%s, %.1f s)\n", name, how ? how : "?", secs);
}

int cmd_vm_stop(qv_cli *cli, int argc, char **argv) {
    json_t *params = json_object();
    int r = stop_args(cli, argc, argv, stop_help, "vm stop ", params);
    if (r != 0) {
        json_decref(params);
        return r == -2 ? QV_EXIT_OK : r;
    }
    const char *name = json_string_value(json_object_get(params, "name"));
    char namebuf[64];
    snprintf(namebuf, sizeof namebuf, "%s", name);
    bool force = json_is_true(json_object_get(params, "force"));
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call_long(cli, "vm.stop", params, STOP_WAIT_MS, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json)
        qv_print_json(json_incref(res), stdout);
    else
        print_stop(cli, res, namebuf);
    int code = stop_exit(res, force);
    json_decref(res);
    return code;
}

static const char restart_help[] =
    "Usage: qvisor vm restart NAME [--timeout TIME] [--force] [--json]\n"
    "\n"
    "Stops the VM as `qvisor vm stop` does (if it runs), then starts it again\n"
    "with the same disk.\n"
    "\n"
    "  -t, --timeout TIME   how long the guest may take to shut down\n"
    "      --force          skip the guest: quit, then signals\n"
    "\n"
    "Exit: 0, 1 the start failed, 3 restarted, but the stop had to be forced,\n"
    "66 no such VM, 69 daemon not running, 75 busy, 77 not root, the socket\n"
    "group or the VM's owner.\n";

int cmd_vm_restart(qv_cli *cli, int argc, char **argv) {
    json_t *params = json_object();
    int r = stop_args(cli, argc, argv, restart_help, "vm restart ", params);
    if (r != 0) {
        json_decref(params);
        return r == -2 ? QV_EXIT_OK : r;
    }
    char name[64];
    snprintf(name, sizeof name, "%s", json_string_value(json_object_get(params, "name")));
    bool force = json_is_true(json_object_get(params, "force"));
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call_long(cli, "vm.restart", params, STOP_WAIT_MS + START_WAIT_MS, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    json_t *stop = json_object_get(res, "stop");
    if (cli->json) {
        qv_print_json(json_incref(res), stdout);
    } else {
        print_stop(cli, stop, name);
        print_start(cli, json_object_get(res, "start"), name);
    }
    int code = stop_exit(stop, force);
    json_decref(res);
    return code;
}

static const char pause_help[] =
    "Usage: qvisor vm pause NAME [--json]\n"
    "\n"
    "Pauses the guest (QMP stop): its vCPUs stop, QEMU and the guest's memory\n"
    "stay.  Returns once QEMU has paused it; the VM is then `paused` until\n"
    "`qvisor vm resume NAME`.  A paused VM's `vm stop` quits QEMU at once (no\n"
    "ACPI or agent shutdown, which the guest would only see on resume), so it\n"
    "ends as a forced stop (exit 3; 0 with --force).  A paused VM stays paused\n"
    "across a daemon restart.\n"
    "\n"
    "Exit: 0 paused (or already paused), 1 QEMU refused or its monitor is not\n"
    "connected, 66 no such VM, 69 daemon not running or the VM not running\n"
    "(stopped or crashed), 75 busy (starting, stopping, being created or removed),\n"
    "77 not root, the socket group or the VM's owner.\n";

static const char resume_help[] =
    "Usage: qvisor vm resume NAME [--json]\n"
    "\n"
    "Resumes a paused guest (QMP cont) and returns once QEMU runs it again.\n"
    "\n"
    "Exit: 0 running (or was not paused), 1 QEMU refused or its monitor is not\n"
    "connected, 66 no such VM, 69 daemon not running or the VM not running\n"
    "(stopped or crashed), 75 busy (starting, stopping, being created or removed),\n"
    "77 not root, the socket group or the VM's owner.\n";

/* Shared by pause and resume: one NAME, one request, one line. */
static int pause_resume(qv_cli *cli, int argc, char **argv, bool pause) {
    const char *path = pause ? "vm pause " : "vm resume ";
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, pause ? pause_help : resume_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error(path, "bad option");
    const char *name = one_name(argc, argv, path);
    if (!name)
        return QV_EXIT_USAGE;
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, pause ? "vm.pause" : "vm.resume", json_pack("{s:s}", "name", name), &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    if (cli->verbosity >= 0) {
        const char *r = json_string_value(json_object_get(res, "result"));
        if (r && strcmp(r, "already-paused") == 0)
            qv_printf("VM %s is already paused\n", name);
        else if (r && strcmp(r, "not-paused") == 0)
            qv_printf("VM %s is not paused\n", name);
        else
            qv_printf("%s VM %s\n", pause ? "paused" : "resumed", name);
    }
    json_decref(res);
    return QV_EXIT_OK;
}

int cmd_vm_pause(qv_cli *cli, int argc, char **argv) {
    return pause_resume(cli, argc, argv, true);
}

int cmd_vm_resume(qv_cli *cli, int argc, char **argv) {
    return pause_resume(cli, argc, argv, false);
}

static const char rm_help[] =
    "Usage: qvisor vm rm NAME [--force]\n"
    "\n"
    "Deletes a stopped VM and its instance directory, disk included.  This is\n"
    "the only command that deletes a VM's disk.\n"
    "\n"
    "  --force   stop a running VM first (QMP quit, then signals: no graceful\n"
    "            shutdown, since its disk is deleted anyway)\n"
    "\n"
    "Root and the socket group only: a VM's owner (vm create --owner) may not\n"
    "remove it.\n"
    "\n"
    "Exit: 0, 66 no such VM, 69 daemon not running, 75 the VM is running (without\n"
    "--force) or busy, 77 not root or in the socket group.\n";

int cmd_vm_rm(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"force", no_argument, NULL, 'F'}, {NULL, 0, NULL, 0}};
    bool force = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, rm_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c != 'F')
            return qv_cli_usage_error("vm rm ", "bad option");
        force = true;
    }
    const char *name = one_name(argc, argv, "vm rm ");
    if (!name)
        return QV_EXIT_USAGE;
    qv_error err = {0};
    if (qv_cli_call_long(cli, "vm.remove", json_pack("{s:s, s:b}", "name", name, "force", force), STOP_WAIT_MS, NULL,
                         &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->verbosity >= 0)
        qv_printf("removed VM %s\n", name);
    return QV_EXIT_OK;
}
