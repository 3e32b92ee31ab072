/* qvisor: the command.  Global options, then a top-level verb or NOUN VERB,
 * dispatched through tables (no verb pretends to work: later capabilities
 * appear here when they exist). */
#include "output.h"
#include "cli.h"

#include "log.h"
#include "qv-build.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

typedef struct qv_cli_noun {
    const char *name;
    const qv_cli_verb *verbs; /* terminated by a NULL name */
    const char *summary;
} qv_cli_noun;

static const qv_cli_verb vm_verbs[] = {
    {"create", cmd_vm_create, "define a VM with its own disk on a base image"},
    {"list", cmd_vm_list, "list VMs with state, pid, resources, IP, uptime"},
    {"show", cmd_vm_show, "everything about one VM"},
    {"edit", cmd_vm_edit, "change a stopped VM's CPUs, memory, GPUs, NICs, restart policy, ..."},
    {"resize", cmd_vm_resize, "grow a VM's disk (also while it runs)"},
    {"start", cmd_vm_start, "start a VM"},
    {"stop", cmd_vm_stop, "shut a VM down (agent or ACPI, then forced after a timeout)"},
    {"restart", cmd_vm_restart, "stop and start a VM (the disk stays)"},
    {"pause", cmd_vm_pause, "pause a VM's guest (its vCPUs stop; QEMU stays)"},
    {"resume", cmd_vm_resume, "resume a paused VM"},
    {"ssh", cmd_vm_ssh, "ssh into a VM through its forwarded port"},
    {"exec", cmd_vm_exec, "run a command in a VM through its guest agent"},
    {"cp", cmd_vm_cp, "copy a file into or out of a VM through its guest agent"},
    {"console", cmd_vm_console, "attach this terminal to a VM's serial console (Ctrl-] detaches)"},
    {"log", cmd_vm_log, "print a VM's serial console log (-n last lines, -f follow)"},
    {"wait", cmd_vm_wait, "wait until a VM runs, stops or crashes, or its agent answers"},
    {"snapshot", cmd_vm_snapshot, "disk snapshots of a VM: create, list, revert, rm"},
    {"clone", cmd_vm_clone, "a new VM from a stopped one: its disk copied onto the same base image"},
    {"rm", cmd_vm_rm, "delete a VM and its disk"},
    {NULL, NULL, NULL},
};

static const qv_cli_verb image_verbs[] = {
    {"list", cmd_image_list, "list base images"},
    {"import", cmd_image_import, "copy a disk image in as a read-only base image"},
    {"create", cmd_image_create, "make a stopped VM's disk a new base image (--from-vm)"},
    {"rm", cmd_image_rm, "delete a base image no VM uses"},
    {NULL, NULL, NULL},
};

static const qv_cli_verb gpu_verbs[] = {
    {"list", cmd_gpu_list, "PCI display devices, their IOMMU groups and holders"},
    {NULL, NULL, NULL},
};

static const qv_cli_verb net_verbs[] = {
    {"list", cmd_net_list, "VM networks (user, nat, bridges), NICs and address allocations"},
    {"teardown", cmd_net_teardown, "take down what qvisor set up for the NAT network"},
    {NULL, NULL, NULL},
};

static const qv_cli_verb node_verbs[] = {
    {"status", cmd_node_status, "capacity and usage: CPUs, memory, NUMA nodes, hugepages, GPUs, NICs, pools"},
    {NULL, NULL, NULL},
};

static const qv_cli_verb slurm_verbs[] = {
    {"gres", cmd_slurm_gres, "print gres.conf lines for this node's GPUs, in qvisor's order"},
    {"check", cmd_slurm_check, "tell whether gres.conf and slurm.conf name the GPUs as qvisor does"},
    {"health", cmd_slurm_health, "a HealthCheckProgram: check and slurm check; drains or resumes the node"},
    {"prolog", cmd_slurm_prolog, "(the SPANK plugin's job prolog) create and start the job's VM"},
    {"epilog", cmd_slurm_epilog, "(the SPANK plugin's job epilog) stop the job's VM, check its GPUs, remove it"},
    {NULL, NULL, NULL},
};

static const qv_cli_verb config_verbs[] = {
    {"check", cmd_config_check, "validate a config file and print the effective settings"},
    {"show", cmd_config_show, "print the settings the running daemon uses"},
    {"reload", cmd_config_reload, "make the running daemon re-read its config"},
    {NULL, NULL, NULL},
};

static const qv_cli_noun nouns[] = {
    {"vm", vm_verbs, "virtual machines"},
    {"image", image_verbs, "base images"},
    {"gpu", gpu_verbs, "PCI display devices for passthrough"},
    {"net", net_verbs, "VM networks: NAT bridge, bridges, addresses"},
    {"node", node_verbs, "this node's capacity and usage"},
    {"config", config_verbs, "the node config"},
    {"slurm", slurm_verbs, "Slurm: this node's GPUs as gres.conf must name them"},
};

static const qv_cli_verb top_verbs[] = {
    {"daemon", cmd_daemon, "run the qvisor daemon in the foreground"},
    {"version", cmd_version, "print the versions of this command and of the daemon"},
    {"events", cmd_events, "follow the node's events (state changes, results, agent, GPUs, QEMU's events)"},
    {"cleanup", cmd_cleanup, "remove what crashes left behind (orphan QEMUs, temp files, stale sockets)"},
    {"cidata", cmd_cidata, "write a cloud-init NoCloud seed ISO (like cloud-localds)"},
    {"check", cmd_check, "tell whether this node can run VMs: QEMU, KVM, IOMMU, VFIO, hugepages, directories"},
    {"metrics", cmd_metrics, "print the daemon's Prometheus metrics once (as metrics.listen serves them)"},
    {NULL, NULL, NULL},
};

static const char exit_codes[] =
    "Exit codes:\n"
    "   0  success\n"
    "   1  the operation failed\n"
    "   3  vm stop/restart: the VM stopped, but had to be forced (quit or signals)\n"
    "  64  usage error (unknown command or option, missing argument)\n"
    "  65  bad input data (invalid name, size, file content; vm resize: a smaller disk)\n"
    "  66  no such VM, image, GPU or input file (vm create: --kernel, --initrd)\n"
    "  69  service unavailable (daemon not running, KVM or IOMMU missing; check: an item failed;\n"
    "      libudev, libnftables or libmicrohttpd cannot be loaded; vm pause/resume/ssh/console/\n"
    "      exec/cp: the VM is not running, vm console: it stopped while attached; vm exec/cp: no\n"
    "      guest agent answers; vm create/start: no OVMF for --firmware uefi, --cpu-model host\n"
    "      without KVM)\n"
    "  73  already exists (or already running; vm snapshot revert: the VM runs)\n"
    "  75  temporary failure or timeout: try again (vm console: the console is in use, or the\n"
    "      daemon went away while attached; vm edit: the VM is not stopped; an edit or resize\n"
    "      of the VM is under way)\n"
    "  77  permission denied (also: a file named on the command line you may not read)\n"
    "  78  invalid configuration\n"
    " 124  vm exec: its --timeout passed (the command was killed in the guest)\n"
    "      (vm exec otherwise exits with the guest command's status, 128+N for signal N)\n";

static void print_main_help(FILE *out) {
    fprintf(out,
            "Usage: qvisor [OPTIONS] COMMAND [ARGS]\n"
            "       qvisor [OPTIONS] NOUN VERB [ARGS]\n"
            "\n"
            "Runs QEMU/KVM guests on this node: a daemon supervises them, this command\n"
            "talks to it.\n"
            "\n"
            "Options:\n"
            "  -c, --config PATH            node config (default %s)\n"
            "  -s, --socket PATH            daemon control socket (default: from the config)\n"
            "      --json                   machine-readable output (every read command)\n"
            "      --request-timeout TIME   longest wait for the daemon (default 30s);\n"
            "                               progress reports of a long request restart it\n"
            "  -v, --verbose                more detail on stderr\n"
            "  -q, --quiet                  errors only on stderr\n"
            "  -h, --help                   this help; `qvisor NOUN --help` for a noun's verbs\n"
            "  -V, --version                print the version\n"
            "\n"
            "Commands:\n",
            QV_DEFAULT_CONFIG);
    for (const qv_cli_verb *v = top_verbs; v->name; v++)
        fprintf(out, "  %-10s %s\n", v->name, v->summary);
    fprintf(out, "\nNouns (qvisor NOUN --help lists the verbs):\n");
    for (size_t i = 0; i < sizeof nouns / sizeof nouns[0]; i++)
        fprintf(out, "  %-10s %s\n", nouns[i].name, nouns[i].summary);
    fprintf(out, "\n%s", exit_codes);
}

static void print_noun_help(const qv_cli_noun *n, FILE *out) {
    fprintf(out, "Usage: qvisor %s VERB [ARGS]\n\n%s.\n\n", n->name, n->summary);
    fprintf(out, "Verbs:\n");
    for (const qv_cli_verb *v = n->verbs; v->name; v++)
        fprintf(out, "  %-10s %s\n", v->name, v->summary);
    fprintf(out, "\nqvisor %s VERB --help describes each verb.\n", n->name);
    fprintf(out, "\n%s", exit_codes);
}

static int run_verb(qv_cli *cli, const qv_cli_verb *v, int argc, char **argv) {
    optind = 0; /* full reset of getopt for the verb's own options */
    return v->fn(cli, argc, argv);
}

static const qv_cli_verb *find_verb(const qv_cli_verb *verbs, const char *name) {
    for (const qv_cli_verb *v = verbs; v->name; v++)
        if (strcmp(v->name, name) == 0)
            return v;
    return NULL;
}

static int dispatch(qv_cli *cli, int argc, char **argv) {
    const char *word = argv[0];
    const qv_cli_verb *v = find_verb(top_verbs, word);
    if (v)
        return run_verb(cli, v, argc, argv);
    for (size_t i = 0; i < sizeof nouns / sizeof nouns[0]; i++) {
        const qv_cli_noun *n = &nouns[i];
        if (strcmp(n->name, word) != 0)
            continue;
        if (argc < 2) {
            print_noun_help(n, stderr);
            return QV_EXIT_USAGE;
        }
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
            print_noun_help(n, stdout);
            return QV_EXIT_OK;
        }
        v = find_verb(n->verbs, argv[1]);
        char help_path[64];
        snprintf(help_path, sizeof help_path, "%s ", n->name);
        if (!v)
            return qv_cli_usage_error(help_path, "unknown verb '%s' for '%s'", argv[1], n->name);
        return run_verb(cli, v, argc - 1, argv + 1);
    }
    return qv_cli_usage_error("", "unknown command '%s'", word);
}

int main(int argc, char **argv) {
    qv_cli cli = {
        .config_path = QV_DEFAULT_CONFIG,
        .timeout_ms = QV_CLI_DEFAULT_TIMEOUT_MS,
    };
    enum { OPT_TIMEOUT = 0x100 };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, QV_CLI_OPT_JSON},
        {"request-timeout", required_argument, NULL, OPT_TIMEOUT},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    /* a daemon that hangs up mid-request must give an error, not kill us */
    signal(SIGPIPE, SIG_IGN);
    /* Slurm's HealthCheckProgram takes a path, no arguments: a link named
     * qvisor-slurm-health runs `qvisor slurm health` */
    const char *base = strrchr(argv[0], '/');
    char *health_argv[64];
    if (strcmp(base ? base + 1 : argv[0], "qvisor-slurm-health") == 0 && argc < 60) {
        static char qv[] = "qvisor", slurm[] = "slurm", health[] = "health";
        health_argv[0] = qv;
        health_argv[1] = slurm;
        health_argv[2] = health;
        for (int i = 1; i <= argc; i++)
            health_argv[i + 2] = argv[i];
        argv = health_argv;
        argc += 2;
    }
    qv_log_set_ident("qvisor");
    qv_log_detect_journal();
    int c;
    while ((c = getopt_long(argc, argv, "+c:s:vqhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli.config_path = optarg;
            cli.config_explicit = true;
            break;
        case 's':
            cli.socket_path = optarg;
            break;
        case QV_CLI_OPT_JSON:
            cli.json = true;
            break;
        case OPT_TIMEOUT:
            cli.timeout_explicit = true;
            if (qv_parse_duration_ms(optarg, &cli.timeout_ms) < 0 || cli.timeout_ms == 0 ||
                cli.timeout_ms > 24ull * 3600 * 1000)
                return qv_cli_usage_error("", "--request-timeout takes a duration like 30s or 2m, got '%s'", optarg);
            break;
        case 'v':
            cli.verbosity++;
            break;
        case 'q':
            cli.verbosity = -1;
            break;
        case 'h':
            print_main_help(stdout);
            return QV_EXIT_OK;
        case 'V':
            qv_printf("qvisor %s\n", QV_VERSION);
            return QV_EXIT_OK;
        default:
            qv_fprintf(stderr, "Try 'qvisor --help'.\n");
            return QV_EXIT_USAGE;
        }
    }
    if (cli.verbosity < 0)
        qv_log_set_level(QV_LOG_ERR);
    else if (cli.verbosity > 0)
        qv_log_set_level(QV_LOG_DEBUG);
    if (optind >= argc) {
        print_main_help(stderr);
        return QV_EXIT_USAGE;
    }
    int r = dispatch(&cli, argc - optind, argv + optind);
    sv_config_free(cli.config);
    fflush(stdout);
    if (ferror(stdout)) {
        qv_fprintf(stderr, "qvisor: error: writing the output failed\n");
        return r ? r : QV_EXIT_FAILED;
    }
    return r;
}
