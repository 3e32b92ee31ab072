/* qvisor slurm gres|check: the node's GPUs as Slurm must know them
 * (docs/slurm.md). */
#include "cli.h"
#include "output.h"

#include "cleanup.h"
#include "fileio.h"
#include "host/check.h"
#include "run.h"
#include "util.h"
#include "slurm/slurmconf.h"
#include "spec/vmspec.h"
#include "vfio/vfio.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GRES_CONF_DEFAULT "/etc/slurm/gres.conf"
#define SLURM_CONF_DEFAULT "/etc/slurm/slurm.conf"
#define SLURM_CONF_MAX (16u << 20)

static const char gres_help[] =
    "Usage: qvisor slurm gres [--node NAME] [--device-dir DIR] [--json]\n"
    "\n"
    "Prints the gres.conf lines for this node's GPUs that qvisor passes through,\n"
    "in qvisor's order (by PCI address), one per GPU:\n"
    "\n"
    "  NodeName=NAME Name=gpu File=/dev/vfio/GROUP   # PCI address, ids, name\n"
    "\n"
    "Slurm gives a job GPUs by index, the position among these lines, and\n"
    "qvisor maps index i back to the i-th of them: the same device on both\n"
    "sides.  File= names the GPU's IOMMU group device, which exists while the\n"
    "GPU is on vfio-pci (NVML does not see such a GPU: gres.conf must not use\n"
    "AutoDetect=nvml for it).  GPUs without an IOMMU group, sharing one with\n"
    "another GPU, or with a device the host uses (a NIC: only take-group could\n"
    "pass them through) are left out, with a comment saying why.  Reads /sys\n"
    "(below paths.sysfs_root, or QVISOR_SYSROOT); no daemon needed.\n"
    "\n"
    "  -N, --node NAME        the NodeName (default: this host's short name)\n"
    "      --device-dir DIR   where the group devices are (default /dev/vfio)\n"
    "\n"
    "Exit: 0, 69 libudev cannot be loaded, 78 invalid config.\n";

static const char check_help[] =
    "Usage: qvisor slurm check [--node NAME] [--gres-conf PATH] [--slurm-conf PATH]\n"
    "                          [--device-dir DIR] [--json]\n"
    "\n"
    "Tells whether Slurm's configuration names this node's GPUs as qvisor does\n"
    "(`qvisor slurm gres`): the Name=gpu lines of gres.conf for the node must be\n"
    "exactly the File= paths of the GPUs qvisor offers, in the same order, and\n"
    "the node's Gres= in slurm.conf must count as many GPUs.  One line per item,\n"
    "OK, WARN or FAIL, as `qvisor check` prints them; GPUs left out are warnings.\n"
    "Usable as (part of) Slurm's HealthCheckProgram.  The files are read with\n"
    "your rights; no daemon needed.\n"
    "\n"
    "  -N, --node NAME        the NodeName (default: this host's short name)\n"
    "      --gres-conf PATH   default " GRES_CONF_DEFAULT "\n"
    "      --slurm-conf PATH  default " SLURM_CONF_DEFAULT "\n"
    "      --device-dir DIR   where the group devices are (default /dev/vfio)\n"
    "\n"
    "Exit: 0 they agree, 69 they do not (or libudev cannot be loaded), 65 a file\n"
    "cannot be parsed, 66 a file does not exist, 77 it may not be read, 78\n"
    "invalid config.\n";

static const char health_help[] =
    "Usage: qvisor slurm health [--node NAME] [--gres-conf PATH] [--slurm-conf PATH]\n"
    "                           [--device-dir DIR] [--scontrol PATH] [--json]\n"
    "\n"
    "A HealthCheckProgram for Slurm (slurm.conf: HealthCheckProgram=\n"
    "/usr/libexec/qvisor/qvisor-slurm-health, a link to qvisor that runs this):\n"
    "`qvisor check` and `qvisor slurm check` together.  When an item fails, the\n"
    "node is drained with the reason \"qvisor health: ITEM: what\" (a node drained\n"
    "for another reason keeps it); when all pass and the node was drained by an\n"
    "earlier health check, it is resumed.  No daemon needed.\n"
    "\n"
    "Options as for `qvisor slurm check`, and --scontrol PATH (default\n"
    "/usr/bin/scontrol).\n"
    "\n"
    "Exit: 0 healthy, 69 an item failed (the node is drained), 1 it could not be\n"
    "drained or resumed, 65, 66, 77 as for `slurm check`, 78.\n";

enum { OPT_DEVICE_DIR = 256, OPT_GRES_CONF, OPT_SLURM_CONF, OPT_HEALTH_SCONTROL };

#define SCONTROL_DEFAULT "/usr/bin/scontrol"
#define SCANCEL_DEFAULT "/usr/bin/scancel"

typedef struct slurm_opts {
    char node[256];
    const char *device_dir;
    const char *gres_conf;
    const char *slurm_conf;
    const char *scontrol;
} slurm_opts;

/* Options common to both verbs; -1 when done, else an exit code. */
static int parse(qv_cli *cli, int argc, char **argv, const char *verb, const char *help, slurm_opts *o) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"node", required_argument, NULL, 'N'},
        {"device-dir", required_argument, NULL, OPT_DEVICE_DIR},
        {"gres-conf", required_argument, NULL, OPT_GRES_CONF},
        {"slurm-conf", required_argument, NULL, OPT_SLURM_CONF},
        {"scontrol", required_argument, NULL, OPT_HEALTH_SCONTROL},
        {NULL, 0, NULL, 0}};
    bool health = strcmp(verb, "health") == 0, check = health || strcmp(verb, "check") == 0;
    *o = (slurm_opts){.gres_conf = GRES_CONF_DEFAULT, .slurm_conf = SLURM_CONF_DEFAULT, .scontrol = SCONTROL_DEFAULT};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hN:", longopts, help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c == 'N' && strlen(optarg) < sizeof o->node && optarg[0] && !strpbrk(optarg, " \t\n=#,[]"))
            snprintf(o->node, sizeof o->node, "%s", optarg);
        else if (c == 'N')
            return qv_cli_usage_error("slurm ", "--node takes one node name, got '%s'", optarg);
        else if (c == OPT_DEVICE_DIR && optarg[0] == '/')
            o->device_dir = optarg;
        else if (c == OPT_DEVICE_DIR)
            return qv_cli_usage_error("slurm ", "--device-dir takes an absolute path, got '%s'", optarg);
        else if (c == OPT_GRES_CONF && check)
            o->gres_conf = optarg;
        else if (c == OPT_SLURM_CONF && check)
            o->slurm_conf = optarg;
        else if (c == OPT_HEALTH_SCONTROL && health && optarg[0] == '/')
            o->scontrol = optarg;
        else
            return qv_cli_usage_error("slurm ", "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error("slurm ", "%s takes no arguments", verb);
    if (!o->node[0]) {
        if (gethostname(o->node, sizeof o->node - 1) < 0)
            return qv_cli_usage_error("slurm ", "cannot tell this host's name: give --node");
        o->node[strcspn(o->node, ".")] = '\0'; /* slurmd's default NodeName: the short name */
    }
    return -1;
}

/* The node's GPUs, and those offered to Slurm (pointers into l); why[i]
 * says why GPU i of l is left out. */
typedef struct gpu_offer {
    vfio_gpu_list l;
    const vfio_gpu **gpus;
    size_t n;
    char (*why)[128];
} gpu_offer;

static void offer_clear(gpu_offer *of) {
    vfio_gpu_list_clear(&of->l);
    free(of->gpus);
    free(of->why);
    *of = (gpu_offer){0};
}

static int offer_load(qv_cli *cli, gpu_offer *of, qv_error *err) {
    const sv_config *cfg;
    int r = qv_cli_sysroot(cli, &cfg, err);
    if (r < 0 || (r = vfio_gpu_list_get(&of->l, err)) < 0)
        return r;
    of->gpus = calloc(of->l.n ? of->l.n : 1, sizeof *of->gpus);
    of->why = calloc(of->l.n ? of->l.n : 1, sizeof *of->why);
    if (!of->gpus || !of->why)
        return qv_error_set(err, ENOMEM, "out of memory");
    of->n = slurm_offered_gpus(&of->l, of->gpus, of->why);
    return 0;
}

static const char *gpu_name(const vfio_gpu *g, char *buf, size_t len) {
    snprintf(buf, len, "%04x:%04x%s%s%s%s", g->dev.vendor, g->dev.device, g->dev.vendor_name[0] ? " " : "",
             g->dev.vendor_name, g->dev.device_name[0] ? " " : "", g->dev.device_name);
    return buf;
}

int cmd_slurm_gres(qv_cli *cli, int argc, char **argv) {
    slurm_opts o;
    int rc = parse(cli, argc, argv, "gres", gres_help, &o);
    if (rc >= 0)
        return rc;
    gpu_offer of = {0};
    qv_error err = {0};
    if (offer_load(cli, &of, &err) < 0) {
        offer_clear(&of);
        return qv_cli_fail(cli, &err);
    }
    const vfio_gpu **gpus = of.gpus;
    size_t n = of.n;
    json_t *lines = json_array();
    for (size_t i = 0; i < n; i++) {
        char file[PATH_MAX], name[300];
        if (slurm_gpu_file(gpus[i], o.device_dir, file, sizeof file) < 0) {
            json_decref(lines);
            offer_clear(&of);
            qv_error_set(&err, ENAMETOOLONG, "--device-dir is too long");
            return qv_cli_fail(cli, &err);
        }
        json_array_append_new(lines, json_pack("{s:I, s:s, s:s, s:i, s:s}", "index", (json_int_t)i, "address",
                                               gpus[i]->dev.bdf, "file", file, "iommu_group",
                                               gpus[i]->dev.iommu_group, "name",
                                               gpu_name(gpus[i], name, sizeof name)));
    }
    if (cli->json) {
        json_t *left = json_array();
        for (size_t i = 0; i < of.l.n; i++)
            if (of.why[i][0])
                json_array_append_new(left,
                                      json_pack("{s:s, s:s}", "address", of.l.gpus[i].dev.bdf, "why", of.why[i]));
        qv_print_json(json_pack("{s:s, s:o, s:o}", "node", o.node, "gpus", lines, "left_out", left), stdout);
    } else {
        qv_printf("# qvisor slurm gres: the GPUs of %s that qvisor passes through, in its order: Slurm's GPU\n"
                  "# index i is the i-th line (docs/slurm.md).  Not AutoDetect=nvml: GPUs on vfio-pci are "
                  "not NVML's.\n",
                  o.node);
        size_t i;
        json_t *g;
        json_array_foreach(lines, i, g)
            qv_printf("NodeName=%s Name=gpu File=%s   # %s %s\n", o.node, json_string_value(json_object_get(g, "file")),
                      json_string_value(json_object_get(g, "address")),
                      json_string_value(json_object_get(g, "name")));
        for (size_t k = 0; k < of.l.n; k++)
            if (of.why[k][0])
                qv_printf("# left out: %s: %s\n", of.l.gpus[k].dev.bdf, of.why[k]);
        if (n == 0)
            qv_printf("# no GPU of this node can be passed through: no Name=gpu line\n");
        json_decref(lines);
    }
    offer_clear(&of);
    return QV_EXIT_OK;
}

/* A Slurm file, read with the caller's rights (qv_cli exit codes). */
static int read_conf(const char *path, char **ret, qv_error *err) {
    int r = qv_read_regular_file(path, SLURM_CONF_MAX, ret, NULL);
    if (r < 0)
        return qv_error_set(err, -r, "%s: %s", path,
                            r == -EINVAL ? "not a regular file" : r == -EFBIG ? "too large" : strerror(-r));
    return 0;
}

static void check_gres(sv_check_report *rep, const slurm_opts *o, const char *text, const vfio_gpu **gpus,
                       size_t n, qv_error *err, int *status) {
    char **files = NULL;
    size_t nf = 0;
    if ((*status = slurm_gres_conf_gpus(text, o->node, &files, &nf, err)) < 0) {
        sv_check_add(rep, "gres.conf", SV_CHECK_FAIL, NULL, "%s: %s", o->gres_conf, err->msg);
        return;
    }
    size_t bad = 0;
    for (size_t i = 0; i < (nf > n ? nf : n); i++) {
        char want[PATH_MAX] = "";
        if (i < n)
            slurm_gpu_file(gpus[i], o->device_dir, want, sizeof want);
        const char *have = i < nf ? files[i] : NULL;
        if (i < n && have && strcmp(have, want) == 0)
            continue;
        bad++;
        if (i >= n)
            sv_check_add(rep, "gres.conf", SV_CHECK_FAIL, "qvisor slurm gres prints the lines qvisor expects",
                         "GPU index %zu of %s: %s, which qvisor does not offer", i, o->node, have ? have : "a GPU "
                         "without File=");
        else
            sv_check_add(rep, "gres.conf", SV_CHECK_FAIL, "qvisor slurm gres prints the lines qvisor expects",
                         "GPU index %zu of %s is %s (IOMMU group %d) for qvisor, but %s for gres.conf", i, o->node,
                         gpus[i]->dev.bdf, gpus[i]->dev.iommu_group,
                         i >= nf ? "missing" : have ? have : "a GPU without File=");
    }
    if (!bad)
        sv_check_add(rep, "gres.conf", SV_CHECK_OK, NULL, "%s: %zu GPU%s of %s, as qvisor names them", o->gres_conf,
                     n, n == 1 ? "" : "s", o->node);
    slurm_gres_files_free(files, nf);
}

static void check_slurm_conf(sv_check_report *rep, const slurm_opts *o, const char *text, size_t n, qv_error *err,
                             int *status) {
    long count = 0;
    bool include = false;
    *status = slurm_conf_node_gpus(text, o->node, &count, &include, err);
    if (*status < 0)
        sv_check_add(rep, "slurm.conf", SV_CHECK_FAIL, *status == -ENOENT ? "give the node's name with --node" : NULL,
                     "%s: %s", o->slurm_conf, err->msg);
    else if ((size_t)count != n)
        sv_check_add(rep, "slurm.conf", SV_CHECK_FAIL, "set the node's Gres=gpu:N to the count of gres.conf's lines",
                     "%s: NodeName %s has Gres of %ld GPU%s; qvisor offers %zu", o->slurm_conf, o->node, count,
                     count == 1 ? "" : "s", n);
    else
        sv_check_add(rep, "slurm.conf", SV_CHECK_OK, NULL, "%s: NodeName %s has Gres of %ld GPU%s", o->slurm_conf,
                     o->node, count, count == 1 ? "" : "s");
    if (*status == 0 && include)
        sv_check_add(rep, "slurm.conf", SV_CHECK_WARN, "check the included files by hand",
                     "%s has Include lines: not followed", o->slurm_conf);
    if (*status == -ENOENT)
        *status = 0; /* a finding, not a bad file */
}

/* The Slurm items of a report: gres.conf, slurm.conf, the GPUs left out.
 * 0; QV_EXIT_DATAERR when a file cannot be parsed; another exit code
 * (printed) when a file cannot be read or the GPUs cannot be listed. */
static int slurm_items(qv_cli *cli, const slurm_opts *o, sv_check_report *rep) {
    qv_error err = {0};
    _cleanup_free_ char *gres_text = NULL, *slurm_text = NULL;
    if (read_conf(o->gres_conf, &gres_text, &err) < 0 || read_conf(o->slurm_conf, &slurm_text, &err) < 0)
        return qv_cli_fail(cli, &err);
    gpu_offer of = {0};
    if (offer_load(cli, &of, &err) < 0) {
        offer_clear(&of);
        return qv_cli_fail(cli, &err);
    }
    int st_gres = 0, st_slurm = 0;
    check_gres(rep, o, gres_text, of.gpus, of.n, &err, &st_gres);
    check_slurm_conf(rep, o, slurm_text, of.n, &err, &st_slurm);
    for (size_t i = 0; i < of.l.n; i++)
        if (of.why[i][0])
            sv_check_add(rep, "gpu", SV_CHECK_WARN, NULL, "%s is not offered to Slurm: %s", of.l.gpus[i].dev.bdf,
                         of.why[i]);
    offer_clear(&of);
    return st_gres < 0 || st_slurm < 0 ? QV_EXIT_DATAERR : 0;
}

static void report_out(qv_cli *cli, const sv_check_report *rep) {
    if (cli->json)
        qv_print_json(qv_cli_check_json(rep), stdout);
    else
        qv_cli_check_print(rep, cli->verbosity < 0);
}

int cmd_slurm_check(qv_cli *cli, int argc, char **argv) {
    slurm_opts o;
    int rc = parse(cli, argc, argv, "check", check_help, &o);
    if (rc >= 0)
        return rc;
    sv_check_report rep = {0};
    rc = slurm_items(cli, &o, &rep);
    if (rc != 0 && rc != QV_EXIT_DATAERR) {
        sv_check_report_clear(&rep);
        return rc;
    }
    bool ok = sv_check_report_ok(&rep);
    report_out(cli, &rep);
    sv_check_report_clear(&rep);
    return rc ? rc : ok ? QV_EXIT_OK : QV_EXIT_UNAVAILABLE;
}

static char *scontrol(const char *path, const char *const *args, qv_error *err);
static int drain(const char *scontrol_path, const char *node_name, const char *why);

#define HEALTH_REASON "qvisor health: "

/* The node's drain reason, when it has one ("" else). */
static void node_reason(const slurm_opts *o, char *buf, size_t len) {
    char node[300];
    snprintf(node, sizeof node, "%s", o->node);
    qv_error err = {0};
    buf[0] = '\0';
    _cleanup_free_ char *out = scontrol(o->scontrol, (const char *[]){"show", "node", node, NULL}, &err);
    const char *r = out ? strstr(out, "Reason=") : NULL;
    if (r)
        snprintf(buf, len, "%.*s", (int)strcspn(r + 7, "\n["), r + 7);
}

int cmd_slurm_health(qv_cli *cli, int argc, char **argv) {
    slurm_opts o;
    int rc = parse(cli, argc, argv, "health", health_help, &o);
    if (rc >= 0)
        return rc;
    qv_error err = {0};
    const sv_config *cfg;
    if (qv_cli_sysroot(cli, &cfg, &err) < 0)
        return qv_cli_fail(cli, &err);
    sv_check_report rep = {0};
    sv_check_opts opts = {.config = cfg};
    sv_check_all(&rep, &opts);
    rc = slurm_items(cli, &o, &rep);
    if (rc != 0 && rc != QV_EXIT_DATAERR) {
        sv_check_report_clear(&rep);
        return rc;
    }
    bool ok = rc == 0 && sv_check_report_ok(&rep);
    report_out(cli, &rep);
    char reason[512] = "", was[512];
    for (size_t i = 0; i < rep.n && !reason[0]; i++)
        if (rep.items[i].status == SV_CHECK_FAIL)
            snprintf(reason, sizeof reason, HEALTH_REASON "%s: %.200s", rep.items[i].name, rep.items[i].detail);
    if (!ok && !reason[0])
        snprintf(reason, sizeof reason, HEALTH_REASON "gres.conf or slurm.conf cannot be parsed");
    sv_check_report_clear(&rep);
    node_reason(&o, was, sizeof was);
    if (!ok) {
        if (strncmp(was, HEALTH_REASON, strlen(HEALTH_REASON)) != 0 && was[0])
            qv_fprintf(stderr, "qvisor: %s is drained already (%s): its reason is kept\n", o.node, was);
        else if (drain(o.scontrol, o.node, reason) < 0)
            return QV_EXIT_FAILED;
        return QV_EXIT_UNAVAILABLE;
    }
    if (strncmp(was, HEALTH_REASON, strlen(HEALTH_REASON)) == 0) {
        /* drained by an earlier health check, fine now: back to service */
        char node[300];
        snprintf(node, sizeof node, "NodeName=%s", o.node);
        _cleanup_free_ char *out = scontrol(o.scontrol, (const char *[]){"update", node, "State=RESUME", NULL}, &err);
        if (!out) {
            qv_fprintf(stderr, "qvisor: error: could not resume %s: %s\n", o.node, err.msg);
            return QV_EXIT_FAILED;
        }
        qv_fprintf(stderr, "qvisor: resumed %s (drained by an earlier health check: %s)\n", o.node, was);
    }
    return QV_EXIT_OK;
}

/* ---- the job's VM: prolog and epilog ------------------------------------ */

static const char prolog_help[] =
    "Usage: qvisor slurm prolog --image IMAGE [--keep-disk] [--profiles DIR]\n"
    "                           [--scontrol PATH] [--scancel PATH]\n"
    "\n"
    "Run by qvisor's SPANK plugin in a job's prolog (as root, in slurmd's prolog\n"
    "environment; docs/slurm.md), for a job submitted with --vm-image.  Creates\n"
    "and starts VM slurm-JOBID with what Slurm gave the job on this node (`scontrol\n"
    "-d show job`: its CPUs, memory and GPU indexes, mapped to PCI addresses as\n"
    "`qvisor slurm gres` orders them), the user's SSH key (SPANK_QVISOR_SSH_KEY)\n"
    "and the job's user as its owner; then writes vm=, node=, gpus= and ssh= into\n"
    "the job's AdminComment (`scontrol show job`).  A VM kept from an earlier run\n"
    "of the same job (a requeue with --vm-keep-disk) is started again when it\n"
    "is this job's, with this run's GPUs, CPUs and memory (vm edit).  A\n"
    "failure that is the job's (no such image, a bad key, a VM of that name\n"
    "that is not this job's, GPUs another VM holds) cancels the job\n"
    "(scancel) with the reason in its AdminComment, and the\n"
    "prolog succeeds: a failed prolog drains the node in Slurm.  Any other\n"
    "failure drains the node with a reason that says why (`scontrol update\n"
    "NodeName=... State=DRAIN`), and the exit status is not 0.\n"
    "\n"
    "IMAGE names a job VM profile when DIR/IMAGE.yaml exists (DIR: --profiles,\n"
    "default the directory slurm/ next to the node config, /etc/qvisor/slurm/):\n"
    "a VM spec as for `vm create -f` (image, kernel, initrd, append, nets, disk,\n"
    "agent, ...) without the keys Slurm decides (name, cpus, memory, gpus, owner,\n"
    "slurm_job); its image defaults to IMAGE.  Else IMAGE is a base image.  A\n"
    "profile that cannot be used (unreadable, invalid, a kernel that cannot be\n"
    "opened) is the node's failure.\n"
    "\n"
    "Environment: SLURM_JOB_ID, SLURM_JOB_UID, SLURMD_NODENAME (else this host's\n"
    "short name), SPANK_QVISOR_SSH_KEY (optional).\n"
    "\n"
    "      --image IMAGE     the profile or base image (the job's --vm-image)\n"
    "      --keep-disk       accepted for symmetry with the epilog\n"
    "      --profiles DIR    where the job VM profiles are\n"
    "      --scontrol PATH   default /usr/bin/scontrol\n"
    "      --scancel PATH    default /usr/bin/scancel\n"
    "\n"
    "Exit: 0 (also: the job was cancelled for its own failure), 1 the VM could\n"
    "not be made or started (the node is drained), 64,\n"
    "65 bad environment, 69 the daemon is not running.\n";

static const char epilog_help[] =
    "Usage: qvisor slurm epilog [--keep-disk] [--timeout T] [--scontrol PATH]\n"
    "\n"
    "Run by qvisor's SPANK plugin in a job's epilog (as root): stops VM\n"
    "slurm-JOBID (the guest shuts down, forced after --timeout: default the time\n"
    "Slurm gives a job's processes, KillWait of `scontrol show config`, or 30s\n"
    "when that cannot be read; 0 forces at once), checks that its GPUs went back\n"
    "to the host, and removes the VM with its disk unless --keep-disk (the job's\n"
    "--vm-keep-disk: the VM stays, stopped, its GPUs taken out of its spec with\n"
    "vm edit, so it claims none).  Slurm frees the node only after the epilog,\n"
    "so the next job finds the GPUs back.  A GPU that did not come back drains\n"
    "the node with a reason that names it.  A job without a VM: nothing to do.\n"
    "\n"
    "Environment: SLURM_JOB_ID, SLURMD_NODENAME (else this host's short name).\n"
    "\n"
    "Exit: 0, 1 a GPU was not given back, the VM could not be stopped or\n"
    "removed, or the daemon cannot be asked about it (not running: the node is\n"
    "drained in each case), 64, 65 bad environment.\n";

#define SCONTROL_TIMEOUT_MS 30000
#define JOB_START_WAIT_MS (10ull * 60 * 1000)
#define JOB_STOP_WAIT_MS (2ull * 3600 * 1000)

typedef struct job_opts {
    const char *image;
    bool keep_disk;
    char profiles[PATH_MAX]; /* DIR of the job VM profiles DIR/IMAGE.yaml */
    const char *scontrol;
    const char *scancel;
    uint64_t timeout_ms; /* UINT64_MAX: Slurm's KillWait */
    char node[256];
    unsigned long long job;
    unsigned long uid;
    char vm[64];
} job_opts;

enum { OPT_IMAGE = 300, OPT_KEEP_DISK, OPT_SCONTROL, OPT_SCANCEL, OPT_TIMEOUT, OPT_PROFILES };

/* A decimal environment variable, within max. */
static int env_number(const char *name, unsigned long long max, unsigned long long *ret) {
    const char *v = getenv(name);
    char *end = NULL;
    if (!v || !*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 19)
        return -EINVAL;
    *ret = strtoull(v, &end, 10);
    return *ret <= max ? 0 : -ERANGE;
}

static int job_parse(qv_cli *cli, int argc, char **argv, bool prolog, job_opts *o) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"image", required_argument, NULL, OPT_IMAGE},
        {"keep-disk", no_argument, NULL, OPT_KEEP_DISK},
        {"scontrol", required_argument, NULL, OPT_SCONTROL},
        {"scancel", required_argument, NULL, OPT_SCANCEL},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"profiles", required_argument, NULL, OPT_PROFILES},
        {NULL, 0, NULL, 0}};
    const char *verb = prolog ? "slurm prolog " : "slurm epilog ";
    *o = (job_opts){.scontrol = SCONTROL_DEFAULT, .scancel = SCANCEL_DEFAULT, .timeout_ms = UINT64_MAX};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, prolog ? prolog_help : epilog_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c == OPT_IMAGE && prolog)
            o->image = optarg;
        else if (c == OPT_KEEP_DISK)
            o->keep_disk = true;
        else if (c == OPT_SCONTROL && optarg[0] == '/')
            o->scontrol = optarg;
        else if (c == OPT_SCANCEL && optarg[0] == '/')
            o->scancel = optarg;
        else if (c == OPT_PROFILES && prolog && optarg[0] == '/' && strlen(optarg) < sizeof o->profiles)
            snprintf(o->profiles, sizeof o->profiles, "%s", optarg);
        else if (c == OPT_TIMEOUT && !prolog) {
            uint64_t ms;
            if (qv_parse_duration_ms(optarg, &ms) < 0)
                return qv_cli_usage_error(verb, "--timeout takes a duration (30s, 2m), got '%s'", optarg);
            o->timeout_ms = ms;
        } else
            return qv_cli_usage_error(verb, "bad option");
    }
    if (optind < argc)
        return qv_cli_usage_error(verb, "takes no arguments");
    if (prolog && !o->image)
        return qv_cli_usage_error(verb, "needs --image IMAGE");
    if (prolog && !o->profiles[0]) {
        /* slurm/ next to the node config: /etc/qvisor/slurm */
        const char *cfg = cli->config_path ? cli->config_path : "/etc/qvisor/config.yaml";
        const char *slash = strrchr(cfg, '/');
        int n = slash ? snprintf(o->profiles, sizeof o->profiles, "%.*s/slurm", (int)(slash - cfg), cfg)
                      : snprintf(o->profiles, sizeof o->profiles, "slurm");
        if (n < 0 || (size_t)n >= sizeof o->profiles)
            return qv_cli_usage_error(verb, "the config's path is too long: give --profiles");
    }
    if (env_number("SLURM_JOB_ID", 0xfffffffeULL, &o->job) < 0 || o->job == 0) {
        qv_fprintf(stderr, "qvisor: error: SLURM_JOB_ID is not a job id: run by Slurm's prolog or epilog only\n");
        return QV_EXIT_DATAERR;
    }
    unsigned long long uid = 0;
    if (prolog && env_number("SLURM_JOB_UID", 0x7ffffffeULL, &uid) < 0) {
        qv_fprintf(stderr, "qvisor: error: SLURM_JOB_UID is not a uid\n");
        return QV_EXIT_DATAERR;
    }
    o->uid = (unsigned long)uid;
    const char *node = getenv("SLURMD_NODENAME");
    if (node && *node && strlen(node) < sizeof o->node && !strpbrk(node, " \t\n=#,[]"))
        snprintf(o->node, sizeof o->node, "%s", node);
    else if (gethostname(o->node, sizeof o->node - 1) == 0)
        o->node[strcspn(o->node, ".")] = '\0';
    snprintf(o->vm, sizeof o->vm, "slurm-%llu", o->job);
    return -1;
}

/* scontrol ARGS…: its stdout (owned) or NULL with err. */
static char *scontrol(const char *path, const char *const *args, qv_error *err) {
    const char *argv[8] = {path};
    size_t n = 1;
    for (; args[n - 1] && n < QV_ARRAY_SIZE(argv) - 1; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    qv_run_result res = {0};
    int r = qv_run((char *const *)argv, SCONTROL_TIMEOUT_MS, NULL, NULL, &res);
    char *out = NULL;
    if (r < 0) {
        qv_error_set(err, -r, "%s: %s", path, r == -ETIMEDOUT ? "timed out" : strerror(-r));
    } else if (!qv_run_ok(&res)) {
        char how[64];
        qv_run_describe(&res, how, sizeof how);
        qv_error_set(err, EIO, "%s %s %s: %s: %.300s", path, args[0], args[1] ? args[1] : "", how,
                     res.err ? res.err : "");
    } else {
        out = TAKE_PTR(res.out);
    }
    qv_run_result_free(&res);
    return out;
}

/* The node out of service until a person looks: Slurm's own drain, with
 * qvisor's reason (kept short: Slurm shows it in sinfo -R).  0 or -1. */
static int drain(const char *scontrol_path, const char *node_name, const char *why) {
    char node[300], reason[300];
    snprintf(node, sizeof node, "NodeName=%s", node_name);
    snprintf(reason, sizeof reason, "Reason=%.250s", why);
    for (char *p = reason; *p; p++)
        if (*p == '\n' || *p == '"')
            *p = ' ';
    qv_error err = {0};
    _cleanup_free_ char *out =
        scontrol(scontrol_path, (const char *[]){"update", node, "State=DRAIN", reason, NULL}, &err);
    if (!out) {
        qv_fprintf(stderr, "qvisor: error: could not drain %s: %s\n", node_name, err.msg);
        return -1;
    }
    qv_fprintf(stderr, "qvisor: drained %s: %s\n", node_name, reason + 7);
    return 0;
}

static int job_fail(const job_opts *o, const qv_error *err) {
    qv_fprintf(stderr, "qvisor: error: %s\n", err->msg);
    char why[300];
    snprintf(why, sizeof why, "qvisor job %llu: %s", o->job, err->msg);
    drain(o->scontrol, o->node, why);
    return QV_EXIT_FAILED;
}

/* The daemon's GPU list (gpu.list) as a vfio_gpu_list of addresses and
 * groups: what slurm_offered_gpus() looks at.  The daemon's view is the
 * one the VM gets, and the prolog needs no device discovery of its own. */
static int daemon_gpus(qv_cli *cli, vfio_gpu_list *l, qv_error *err) {
    json_t *res = NULL;
    if (qv_cli_call(cli, "gpu.list", NULL, &res, err) < 0)
        return -err->code;
    json_t *gpus = json_object_get(res, "gpus");
    l->gpus = calloc(json_array_size(gpus) ? json_array_size(gpus) : 1, sizeof *l->gpus);
    if (!l->gpus) {
        json_decref(res);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    size_t i;
    json_t *g;
    json_array_foreach(gpus, i, g) {
        vfio_gpu *v = &l->gpus[l->n];
        const char *bdf = qv_json_str(g, "address");
        json_t *grp = json_object_get(g, "iommu_group");
        if (!bdf || vfio_bdf_normalize(bdf, v->dev.bdf) < 0)
            continue;
        v->dev.iommu_group = json_is_integer(grp) ? (int)json_integer_value(grp) : -1;
        v->index = (int)l->n++;
        /* the group's members with their drivers: a GPU whose group holds
         * a device the host uses is not offered (slurm_offered_gpus) */
        json_t *members = json_object_get(g, "group");
        if (json_array_size(members) && !(v->group = calloc(json_array_size(members), sizeof *v->group))) {
            json_decref(res);
            return qv_error_set(err, ENOMEM, "out of memory");
        }
        size_t k;
        json_t *m;
        json_array_foreach(members, k, m) {
            vfio_pci_dev *d = &v->group[v->n_group];
            const char *addr = qv_json_str(m, "address"), *drv = qv_json_str(m, "driver");
            const char *cls = qv_json_str(m, "class");
            if (!addr || vfio_bdf_normalize(addr, d->bdf) < 0)
                continue;
            snprintf(d->driver, sizeof d->driver, "%s", drv ? drv : "");
            d->class_code = cls ? (unsigned)strtoul(cls, NULL, 16) : 0;
            d->bridge = json_is_true(json_object_get(m, "bridge"));
            v->n_group++;
        }
    }
    json_decref(res);
    return 0;
}

static void daemon_gpus_clear(vfio_gpu_list *l) {
    for (size_t i = 0; l->gpus && i < l->n; i++)
        free(l->gpus[i].group);
    free(l->gpus);
    *l = (vfio_gpu_list){0};
}

/* A failure that is the job's, not the node's (no such image, a bad key,
 * a name taken by a VM of another job): the job is cancelled with the
 * reason in its AdminComment, and the prolog succeeds.  A failed prolog
 * drains the node in Slurm, so a user's typo would take nodes out of
 * service. */
static int job_cancel(const job_opts *o, const qv_error *err) {
    qv_fprintf(stderr, "qvisor: error: %s: job %llu is cancelled\n", err->msg, o->job);
    char job[32], comment[600];
    snprintf(job, sizeof job, "JobId=%llu", o->job);
    snprintf(comment, sizeof comment, "AdminComment=qvisor: job not run: %.500s", err->msg);
    for (char *p = comment; *p; p++)
        if (*p == '\n')
            *p = ' ';
    qv_error e = {0};
    _cleanup_free_ char *out = scontrol(o->scontrol, (const char *[]){"update", job, comment, NULL}, &e);
    if (!out)
        qv_fprintf(stderr, "qvisor: warning: the job's AdminComment was not set: %s\n", e.msg);
    char id[32];
    snprintf(id, sizeof id, "%llu", o->job);
    qv_run_result res = {0};
    const char *argv[] = {o->scancel, id, NULL};
    int r = qv_run((char *const *)argv, SCONTROL_TIMEOUT_MS, NULL, NULL, &res);
    bool ok = r == 0 && qv_run_ok(&res);
    qv_run_result_free(&res);
    if (!ok) {
        /* it cannot be cancelled: the prolog fails, as for any failure */
        qv_error_set(&e, EIO, "%s (and the job could not be cancelled with %s)", err->msg, o->scancel);
        return job_fail(o, &e);
    }
    return QV_EXIT_OK;
}

/* The failures that are the job's: what qvisor reports as bad or missing
 * input (exit codes 65 and 66). */
static bool job_error(const qv_error *err) {
    int code = qv_exit_code_for_errno(err->code);
    return code == QV_EXIT_DATAERR || code == QV_EXIT_NOINPUT;
}

/* A VM named slurm-JOBID that exists already is this job's only when it
 * was made for this job's user and id (a requeue with --vm-keep-disk):
 * else nothing of it is started.  This run's GPUs, CPUs and memory (its
 * epilog left it none of the GPUs) are then given to it with vm.edit,
 * checked as at create. */
static int job_vm_matches(qv_cli *cli, const job_opts *o, const json_t *spec, qv_error *err) {
    json_t *vm = NULL;
    if (qv_cli_call(cli, "vm.show", json_pack("{s:s}", "name", o->vm), &vm, err) < 0)
        return -err->code;
    json_t *owner = json_object_get(vm, "owner"), *job = json_object_get(vm, "slurm_job");
    json_int_t uid = json_is_object(owner) ? json_integer_value(json_object_get(owner, "uid"))
                                           : json_integer_value(owner);
    int r = 0;
    if (!json_is_integer(job) || (unsigned long long)json_integer_value(job) != o->job || uid != (json_int_t)o->uid)
        r = qv_error_set(err, EINVAL, "VM %s exists and is not this job's (uid %lu, job %llu): it is left alone",
                         o->vm, o->uid, o->job);
    json_decref(vm);
    if (r < 0)
        return r;
    json_t *changes = json_object();
    if (!changes)
        return qv_error_set(err, ENOMEM, "out of memory");
    static const char *const run_keys[] = {"gpus", "cpus", "memory"};
    for (size_t i = 0; i < QV_ARRAY_SIZE(run_keys); i++) {
        json_t *v = json_object_get(spec, run_keys[i]);
        if (v)
            json_object_set(changes, run_keys[i], v);
    }
    if (qv_cli_call(cli, "vm.edit", json_pack("{s:s, s:o}", "name", o->vm, "changes", changes), NULL, err) < 0) {
        qv_error_prefix(err, "VM %s (kept from an earlier run of job %llu): ", o->vm, o->job);
        return -err->code;
    }
    return 0;
}

#define PROFILE_MAX (1u << 20)

/* What Slurm decides for a job's VM: no profile may set it. */
static const char *const slurm_keys[] = {"name", "cpus", "memory", "gpus", "owner", "slurm_job"};

/* The job VM profile --image names: PROFILES/IMAGE.yaml, a VM spec as for
 * `vm create -f` (the administrator's file, read as root) without the keys
 * Slurm decides.  *ret (new reference): the profile as a partial spec,
 * its image defaulting to IMAGE; {"image": IMAGE} when there is no such
 * file (IMAGE is then a base image).  A negative errno with err when the
 * file is there but cannot be used: the node's failure, not the job's. */
static int job_profile(const job_opts *o, json_t **ret, qv_error *err) {
    char path[PATH_MAX + 80];
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = -ENOENT;
    /* a name that is no qvisor name is no file of ours either: the daemon
     * refuses it as an image, the job's own mistake */
    if (qv_name_valid(o->image)) {
        snprintf(path, sizeof path, "%s/%s.yaml", o->profiles, o->image);
        r = qv_read_regular_file(path, PROFILE_MAX, &text, &len);
    }
    if (r == -ENOENT) {
        *ret = json_pack("{s:s}", "image", o->image);
        return *ret ? 0 : qv_error_set(err, ENOMEM, "out of memory");
    }
    if (r < 0)
        return qv_error_set(err, -r, "job VM profile %s: %s", path,
                            r == -EINVAL ? "not a regular file" : r == -EFBIG ? "too large" : strerror(-r));
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    if ((r = sv_vmspec_from_yaml(path, text, len, &s, err)) < 0) {
        qv_error_prefix(err, "job VM profile: ");
        return r;
    }
    json_t *j = sv_vmspec_to_json(s);
    if (!j)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < QV_ARRAY_SIZE(slurm_keys); i++)
        if (json_object_get(j, slurm_keys[i])) {
            json_decref(j);
            return qv_error_set(err, EINVAL, "job VM profile %s: %s is the job's allocation, Slurm's to decide: "
                                "leave it out", path, slurm_keys[i]);
        }
    if (!json_object_get(j, "image"))
        json_object_set_new(j, "image", json_string(o->image));
    *ret = j;
    return 0;
}

/* The job's VM spec from its allocation on this node, on the profile
 * (reference stolen); NULL with err. */
static json_t *job_spec(qv_cli *cli, const job_opts *o, const slurm_alloc *a, json_t *spec, qv_error *err) {
    json_t *gpus = json_array();
    vfio_gpu_list l = {0};
    _cleanup_free_ const vfio_gpu **offered = NULL;
    size_t n = 0;
    if (a->n_gpus && (daemon_gpus(cli, &l, err) < 0 || !(offered = calloc(l.n ? l.n : 1, sizeof *offered)))) {
        if (!err->msg[0])
            qv_error_set(err, ENOMEM, "out of memory");
        json_decref(gpus);
        json_decref(spec);
        daemon_gpus_clear(&l);
        return NULL;
    }
    if (offered)
        n = slurm_offered_gpus(&l, offered, NULL);
    for (size_t i = 0; i < a->n_gpus; i++) {
        if (a->gpus[i] >= n) {
            qv_error_set(err, ENODEV, "Slurm gave GPU index %u on %s, but qvisor offers %zu GPU%s there: gres.conf "
                         "does not match (qvisor slurm check)", a->gpus[i], o->node, n, n == 1 ? "" : "s");
            json_decref(gpus);
            json_decref(spec);
            daemon_gpus_clear(&l);
            return NULL;
        }
        json_array_append_new(gpus, json_string(offered[a->gpus[i]]->dev.bdf));
    }
    daemon_gpus_clear(&l);
    json_object_set_new(spec, "name", json_string(o->vm));
    json_object_set_new(spec, "cpus", json_integer((json_int_t)(a->cpus ? a->cpus : 1)));
    json_object_set_new(spec, "gpus", gpus);
    if (!json_object_get(spec, "restart"))
        json_object_set_new(spec, "restart", json_string("never"));
    json_object_set_new(spec, "owner", json_integer((json_int_t)o->uid));
    json_object_set_new(spec, "slurm_job", json_integer((json_int_t)o->job));
    if (a->mem_mib) {
        char mem[32];
        snprintf(mem, sizeof mem, "%lluM", a->mem_mib);
        json_object_set_new(spec, "memory", json_string(mem));
    }
    /* the user's key after the profile's (an administrator's key, say) */
    const char *key = getenv("SPANK_QVISOR_SSH_KEY");
    if (key && *key) {
        json_t *keys = json_object_get(spec, "ssh_keys");
        if (!json_is_array(keys)) {
            keys = json_array();
            json_object_set_new(spec, "ssh_keys", keys);
        }
        _cleanup_free_ char *copy = strdup(key);
        for (char *save = NULL, *k = copy ? strtok_r(copy, "\n", &save) : NULL; k; k = strtok_r(NULL, "\n", &save))
            if (*k && *k != '#')
                json_array_append_new(keys, json_string(k));
    }
    return spec;
}

/* vm.create with the profile's kernel and initrd opened here (as root:
 * the administrator's files) and sent along, as `vm create` does.  0, or
 * a negative errno with err; *ret_node: the failure is the node's (a
 * boot file of the profile cannot be opened). */
static int create_vm(qv_cli *cli, json_t *spec, qv_error *err, bool *ret_node) {
    static const char *const boot_keys[] = {"kernel", "initrd"};
    json_t *params = json_pack("{s:O}", "spec", spec);
    int fds[2] = {-1, -1};
    size_t n_fds = 0;
    *ret_node = false;
    for (size_t i = 0; params && i < QV_ARRAY_SIZE(boot_keys); i++) {
        const char *path = json_string_value(json_object_get(spec, boot_keys[i]));
        char *name = NULL, key[16];
        if (!path)
            continue;
        if (qv_cli_open_input(boot_keys[i], path, &fds[n_fds], &name, err) < 0) {
            for (size_t k = 0; k < n_fds; k++)
                qv_closep(&fds[k]);
            json_decref(params);
            *ret_node = true;
            qv_error_prefix(err, "job VM profile: ");
            return -err->code;
        }
        json_object_set_new(spec, boot_keys[i], json_string(name));
        free(name);
        snprintf(key, sizeof key, "%s_fd", boot_keys[i]);
        json_object_set_new(params, key, json_integer((json_int_t)n_fds++));
    }
    uint64_t saved = cli->timeout_ms;
    if (!cli->timeout_explicit)
        cli->timeout_ms = JOB_START_WAIT_MS;
    int r = params ? qv_cli_call_fds(cli, "vm.create", params, fds, n_fds, NULL, NULL, NULL, err)
                   : qv_error_set(err, ENOMEM, "out of memory");
    cli->timeout_ms = saved;
    for (size_t k = 0; k < n_fds; k++)
        qv_closep(&fds[k]);
    return r;
}

/* vm=, node=, gpus=, ssh= (or addr=) into the job's AdminComment: what `scontrol show
 * job` shows the user (only an administrator can set it). */
static void admin_comment(qv_cli *cli, const job_opts *o) {
    json_t *vm = NULL;
    qv_error err = {0};
    if (qv_cli_call(cli, "vm.show", json_pack("{s:s}", "name", o->vm), &vm, &err) < 0) {
        qv_fprintf(stderr, "qvisor: warning: %s\n", err.msg);
        return;
    }
    char gpus[1024] = "", comment[1400], job[32];
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(vm, "gpus"), i, g) {
        size_t len = strlen(gpus);
        snprintf(gpus + len, sizeof gpus - len, "%s%s", len ? "," : "", json_string_value(g));
    }
    json_t *port = json_object_get(vm, "ssh_port");
    snprintf(comment, sizeof comment, "AdminComment=qvisor vm=%s node=%s gpus=%s", o->vm, o->node, gpus[0] ? gpus : "-");
    if (json_is_integer(port)) {
        size_t len = strlen(comment);
        snprintf(comment + len, sizeof comment - len, " ssh=%s:%lld", o->node, (long long)json_integer_value(port));
    }
    /* a nat or bridge NIC's address, known at create: what the job (on the
     * node) reaches the VM at; user networking's 10.0.2.15 is not one */
    const char *ip = json_is_integer(port) ? NULL : qv_json_str(vm, "ip");
    if (ip && strspn(ip, "0123456789.:abcdef") == strlen(ip)) {
        size_t len = strlen(comment);
        snprintf(comment + len, sizeof comment - len, " addr=%s", ip);
    }
    json_decref(vm);
    snprintf(job, sizeof job, "JobId=%llu", o->job);
    _cleanup_free_ char *out = scontrol(o->scontrol, (const char *[]){"update", job, comment, NULL}, &err);
    if (!out)
        qv_fprintf(stderr, "qvisor: warning: the job's AdminComment was not set: %s\n", err.msg);
}

int cmd_slurm_prolog(qv_cli *cli, int argc, char **argv) {
    job_opts o;
    int rc = job_parse(cli, argc, argv, true, &o);
    if (rc >= 0)
        return rc;
    qv_error err = {0};
    char id[32];
    snprintf(id, sizeof id, "%llu", o.job);
    _cleanup_free_ char *show = scontrol(o.scontrol, (const char *[]){"-d", "show", "job", id, NULL}, &err);
    slurm_alloc a;
    if (!show || slurm_job_alloc(show, o.node, &a, &err) < 0)
        return job_fail(&o, &err);
    if (a.has_uid && a.uid != o.uid) {
        qv_error_set(&err, EPERM, "the job's user is uid %u for scontrol but %lu for the prolog", a.uid, o.uid);
        return job_fail(&o, &err);
    }
    json_t *spec = NULL;
    if (job_profile(&o, &spec, &err) < 0 || !(spec = job_spec(cli, &o, &a, spec, &err)))
        return job_fail(&o, &err);
    json_t *res = NULL;
    bool node_failure = false;
    if (create_vm(cli, spec, &err, &node_failure) < 0) {
        if (node_failure) {
            json_decref(spec);
            return job_fail(&o, &err);
        }
        if (err.code != EEXIST || job_vm_matches(cli, &o, spec, &err) < 0) {
            json_decref(spec);
            return job_error(&err) ? job_cancel(&o, &err) : job_fail(&o, &err);
        }
        qv_fprintf(stderr, "qvisor: VM %s exists (kept from an earlier run of job %llu): starting it\n", o.vm,
                   o.job);
        err = (qv_error){0};
    }
    json_decref(spec);
    if (qv_cli_call_long(cli, "vm.start", json_pack("{s:s}", "name", o.vm), JOB_START_WAIT_MS, &res, &err) < 0)
        return job_error(&err) ? job_cancel(&o, &err) : job_fail(&o, &err);
    json_decref(res);
    admin_comment(cli, &o);
    if (cli->verbosity >= 0)
        qv_printf("VM %s runs job %llu on %s\n", o.vm, o.job, o.node);
    return QV_EXIT_OK;
}

/* The GPUs of vm that gpu.list shows still bound (a vfio record: "binding"
 * set) or stuck: the node drains, with every one of them named, the stuck
 * ones first (their reason says what hangs; the drain reason is cut at 200
 * characters).  "vm" alone is no finding: a stopped VM's spec still names
 * its GPUs (a kept disk, or before vm.remove), and the GPUs are back with
 * the host once no record is left. */
static int gpus_back(qv_cli *cli, const job_opts *o, qv_error *err) {
    json_t *res = NULL;
    if (qv_cli_call(cli, "gpu.list", NULL, &res, err) < 0)
        return -err->code;
    char list[sizeof err->msg] = "";
    size_t len = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t i;
        json_t *g;
        json_array_foreach(json_object_get(res, "gpus"), i, g) {
            const char *holder = qv_json_str(g, "vm"), *binding = qv_json_str(g, "binding");
            const char *stuck = qv_json_str(g, "stuck_reason");
            if (!holder || strcmp(holder, o->vm) != 0 || (!binding && !stuck) || (pass == 0) != (stuck != NULL))
                continue;
            int n = snprintf(list + len, sizeof list - len, "%sGPU %s %s%s%s%s", len ? "; " : "",
                             qv_json_str(g, "address"), binding ? binding : "stuck", stuck ? " (" : "",
                             stuck ? stuck : "", stuck ? ")" : "");
            len = n < 0 ? len : len + (size_t)n < sizeof list ? len + (size_t)n : sizeof list - 1;
        }
    }
    json_decref(res);
    if (!len)
        return 0;
    qv_error_set(err, EBUSY, "not given back after VM %s: %s", o->vm, list);
    return -EBUSY;
}

/* The time the VM gets to shut down: what Slurm gives the job's processes
 * between SIGTERM and SIGKILL (KillWait; 0: forced at once).  Slurm's
 * default, 30 s, when scontrol cannot tell. */
static uint64_t kill_wait_ms(const job_opts *o) {
    qv_error err = {0};
    unsigned s = 30;
    _cleanup_free_ char *config = scontrol(o->scontrol, (const char *[]){"show", "config", NULL}, &err);
    if (!config || slurm_config_kill_wait(config, &s) < 0)
        qv_fprintf(stderr, "qvisor: warning: Slurm's KillWait unknown (%s): the VM gets 30s to shut down\n",
                   config ? "scontrol show config has no readable KillWait" : err.msg);
    return (uint64_t)s * 1000;
}

int cmd_slurm_epilog(qv_cli *cli, int argc, char **argv) {
    job_opts o;
    int rc = job_parse(cli, argc, argv, false, &o);
    if (rc >= 0)
        return rc;
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "vm.show", json_pack("{s:s}", "name", o.vm), &res, &err) < 0) {
        if (err.code == ENOENT)
            return QV_EXIT_OK; /* the job had no VM here, or it is gone already */
        /* the daemon is down (killed, crashed): the VM may still run with
         * its GPUs, and Slurm must not hand the node to the next job */
        qv_error_prefix(&err, "cannot tell whether VM %s is gone: ", o.vm);
        return job_fail(&o, &err);
    }
    json_decref(res);
    res = NULL;
    if (o.timeout_ms == UINT64_MAX)
        o.timeout_ms = kill_wait_ms(&o);
    json_t *params = o.timeout_ms ? json_pack("{s:s, s:I}", "name", o.vm, "timeout_ms", (json_int_t)o.timeout_ms)
                                  : json_pack("{s:s, s:b}", "name", o.vm, "force", true);
    if (qv_cli_call_long(cli, "vm.stop", params, JOB_STOP_WAIT_MS, &res, &err) < 0)
        return job_fail(&o, &err);
    char how[160] = "was stopped already";
    const char *result = qv_json_str(res, "result"), *by = qv_json_str(res, "how");
    json_t *secs = json_object_get(res, "seconds");
    if (!result || strcmp(result, "already-stopped") != 0)
        snprintf(how, sizeof how, "stopped (%s%s%s after %.1fs)", result ? result : "?", by ? ", " : "",
                 by ? by : "", json_is_number(secs) ? json_number_value(secs) : 0.0);
    json_decref(res);
    if (gpus_back(cli, &o, &err) < 0)
        return job_fail(&o, &err);
    /* a kept VM claims no GPU: the next job Slurm gives them to gets them */
    if (o.keep_disk && qv_cli_call(cli, "vm.edit", json_pack("{s:s, s:{s:[]}}", "name", o.vm, "changes", "gpus"), NULL,
                                   &err) < 0) {
        qv_error_prefix(&err, "VM %s is kept but still claims its GPUs: ", o.vm);
        return job_fail(&o, &err);
    }
    if (!o.keep_disk &&
        qv_cli_call_long(cli, "vm.remove", json_pack("{s:s, s:b}", "name", o.vm, "force", false), JOB_STOP_WAIT_MS,
                         NULL, &err) < 0)
        return job_fail(&o, &err);
    if (cli->verbosity >= 0)
        qv_printf("VM %s of job %llu %s%s\n", o.vm, o.job, how, o.keep_disk ? "; its disk is kept" : " and removed");
    return QV_EXIT_OK;
}
