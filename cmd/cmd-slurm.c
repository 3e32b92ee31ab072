/* qvisor slurm gres|check: the node's GPUs as Slurm must know them
 * (docs/slurm.md). */
#include "cli.h"
#include "output.h"

#include "cleanup.h"
#include "fileio.h"
#include "host/check.h"
#include "slurm/slurmconf.h"
#include "vfio/vfio.h"

#include <errno.h>
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
    "AutoDetect=nvml for it).  GPUs without an IOMMU group, or sharing one with\n"
    "another GPU, are left out, with a comment saying why.  Reads /sys (below\n"
    "paths.sysfs_root, or QVISOR_SYSROOT); no daemon needed.\n"
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

enum { OPT_DEVICE_DIR = 256, OPT_GRES_CONF, OPT_SLURM_CONF };

typedef struct slurm_opts {
    char node[256];
    const char *device_dir;
    const char *gres_conf;
    const char *slurm_conf;
} slurm_opts;

/* Options common to both verbs; -1 when done, else an exit code. */
static int parse(qv_cli *cli, int argc, char **argv, const char *verb, const char *help, slurm_opts *o) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"node", required_argument, NULL, 'N'},
        {"device-dir", required_argument, NULL, OPT_DEVICE_DIR},
        {"gres-conf", required_argument, NULL, OPT_GRES_CONF},
        {"slurm-conf", required_argument, NULL, OPT_SLURM_CONF},
        {NULL, 0, NULL, 0}};
    bool check = strcmp(verb, "check") == 0;
    *o = (slurm_opts){.gres_conf = GRES_CONF_DEFAULT, .slurm_conf = SLURM_CONF_DEFAULT};
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

/* The node's GPUs, and those offered to Slurm (pointers into l). */
static int offered(qv_cli *cli, vfio_gpu_list *l, const vfio_gpu ***ret, size_t *ret_n, char (**why)[128],
                   qv_error *err) {
    const sv_config *cfg;
    int r = qv_cli_sysroot(cli, &cfg, err);
    if (r < 0 || (r = vfio_gpu_list_get(l, err)) < 0)
        return r;
    *ret = calloc(l->n ? l->n : 1, sizeof **ret);
    *why = calloc(l->n ? l->n : 1, sizeof **why);
    if (!*ret || !*why)
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret_n = slurm_offered_gpus(l, *ret, *why);
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
    vfio_gpu_list l = {0};
    _cleanup_free_ const vfio_gpu **gpus = NULL;
    _cleanup_free_ char(*why)[128] = NULL;
    size_t n = 0;
    qv_error err = {0};
    if (offered(cli, &l, &gpus, &n, &why, &err) < 0) {
        vfio_gpu_list_clear(&l);
        return qv_cli_fail(cli, &err);
    }
    json_t *lines = json_array();
    for (size_t i = 0; i < n; i++) {
        char file[PATH_MAX], name[300];
        if (slurm_gpu_file(gpus[i], o.device_dir, file, sizeof file) < 0) {
            json_decref(lines);
            vfio_gpu_list_clear(&l);
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
        for (size_t i = 0; i < l.n; i++)
            if (why[i][0])
                json_array_append_new(left, json_pack("{s:s, s:s}", "address", l.gpus[i].dev.bdf, "why", why[i]));
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
        for (size_t k = 0; k < l.n; k++)
            if (why[k][0])
                qv_printf("# left out: %s: %s\n", l.gpus[k].dev.bdf, why[k]);
        if (n == 0)
            qv_printf("# no GPU of this node can be passed through: no Name=gpu line\n");
        json_decref(lines);
    }
    vfio_gpu_list_clear(&l);
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

int cmd_slurm_check(qv_cli *cli, int argc, char **argv) {
    slurm_opts o;
    int rc = parse(cli, argc, argv, "check", check_help, &o);
    if (rc >= 0)
        return rc;
    qv_error err = {0};
    _cleanup_free_ char *gres_text = NULL, *slurm_text = NULL;
    if (read_conf(o.gres_conf, &gres_text, &err) < 0 || read_conf(o.slurm_conf, &slurm_text, &err) < 0)
        return qv_cli_fail(cli, &err);
    vfio_gpu_list l = {0};
    _cleanup_free_ const vfio_gpu **gpus = NULL;
    _cleanup_free_ char(*why)[128] = NULL;
    size_t n = 0;
    if (offered(cli, &l, &gpus, &n, &why, &err) < 0) {
        vfio_gpu_list_clear(&l);
        return qv_cli_fail(cli, &err);
    }
    sv_check_report rep = {0};
    int st_gres = 0, st_slurm = 0;
    check_gres(&rep, &o, gres_text, gpus, n, &err, &st_gres);
    check_slurm_conf(&rep, &o, slurm_text, n, &err, &st_slurm);
    for (size_t i = 0; i < l.n; i++)
        if (why[i][0])
            sv_check_add(&rep, "gpu", SV_CHECK_WARN, NULL, "%s is not offered to Slurm: %s", l.gpus[i].dev.bdf,
                         why[i]);
    vfio_gpu_list_clear(&l);
    bool ok = sv_check_report_ok(&rep);
    if (cli->json)
        qv_print_json(qv_cli_check_json(&rep), stdout);
    else
        qv_cli_check_print(&rep, cli->verbosity < 0);
    sv_check_report_clear(&rep);
    if (st_gres < 0 || st_slurm < 0)
        return QV_EXIT_DATAERR;
    return ok ? QV_EXIT_OK : QV_EXIT_UNAVAILABLE;
}
