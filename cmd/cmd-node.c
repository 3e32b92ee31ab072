/* qvisor node status */
#include "cli.h"
#include "output.h"

#include "util.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char status_help[] =
    "Usage: qvisor node status [--json] [--watch [SECONDS]]\n"
    "\n"
    "What this node has and what its VMs use, at a glance:\n"
    "  node       logical CPUs and cores, memory; vCPUs and memory of the defined\n"
    "             VMs (what `vm create` admits against) and of the running ones\n"
    "             (what `vm start` admits against), each against its limit:\n"
    "             capacity × resources.cpu_overcommit / memory_overcommit\n"
    "  NUMA node  its CPUs and cores, memory total and free, the vCPUs and memory\n"
    "             of running VMs bound to it (--numa) against its CPUs ×\n"
    "             cpu_overcommit and its memory, the vCPUs of running VMs pinned\n"
    "             to its CPUs (--pin), hugepages per size\n"
    "             (free/total), GPUs (free or the VM that holds them), NICs with\n"
    "             SR-IOV virtual functions (enabled/total)\n"
    "  pools      per resource pool: vCPUs, memory and GPUs of its VMs against\n"
    "             its quotas\n"
    "  storage    per storage pool: virtual size allocated to disks, space they\n"
    "             use, free space of its file system\n"
    "On a terminal usage is drawn as bars.\n"
    "\n"
    "  -w, --watch [SECONDS]   redraw every SECONDS (default 2) until interrupted\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

static long long num(json_t *o, const char *key) {
    return (long long)json_integer_value(json_object_get(o, key));
}

/* "[#######.............]  " on a terminal, "" otherwise */
static void bar(bool draw, double used, double limit) {
    if (!draw)
        return;
    enum { WIDTH = 20 };
    int fill = limit > 0 ? (int)(used / limit * WIDTH + 0.5) : (used > 0 ? WIDTH : 0);
    if (fill > WIDTH)
        fill = WIDTH;
    char b[WIDTH + 3];
    b[0] = '[';
    for (int i = 0; i < WIDTH; i++)
        b[1 + i] = i < fill ? '#' : '.';
    b[WIDTH + 1] = ']';
    b[WIDTH + 2] = '\0';
    qv_printf("%s%s ", b, used > limit && limit > 0 ? "!" : " ");
}

static const char *size(long long bytes, char buf[32]) {
    qv_format_size_human((uint64_t)(bytes < 0 ? 0 : bytes), buf, 32);
    return buf;
}

static void line_count(bool draw, const char *label, long long used, long long limit, const char *unit,
                       const char *extra) {
    qv_printf("  %-12s ", label);
    bar(draw, (double)used, (double)limit);
    if (limit >= 0)
        qv_printf("%lld / %lld %s%s\n", used, limit, unit, extra);
    else
        qv_printf("%lld %s (no limit)%s\n", used, unit, extra);
}

static void line_size(bool draw, const char *label, long long used, long long limit, const char *extra) {
    char a[32], b[32];
    qv_printf("  %-12s ", label);
    bar(draw, (double)used, (double)limit);
    if (limit >= 0)
        qv_printf("%s / %s%s\n", size(used, a), size(limit, b), extra);
    else
        qv_printf("%s (no limit)%s\n", size(used, a), extra);
}

static void render(json_t *s, bool draw) {
    char a[32], b[32], extra[128];
    json_t *def = json_object_get(json_object_get(s, "usage"), "defined");
    json_t *run = json_object_get(json_object_get(s, "usage"), "running");
    json_t *lim = json_object_get(s, "limits");
    json_t *oc = json_object_get(s, "overcommit");
    qv_printf("node: %lld CPUs (%lld cores), %s memory (%s free); overcommit: cpu %.1f, memory %.1f\n", num(s, "cpus"),
           num(s, "cores"), size(num(s, "memory_total"), a), size(num(s, "memory_free"), b),
           json_real_value(json_object_get(oc, "cpu")), json_real_value(json_object_get(oc, "memory")));
    snprintf(extra, sizeof extra, "  (%lld VMs; running: %lld vCPUs)", num(def, "vms"), num(run, "cpus"));
    line_count(draw, "vCPUs", num(def, "cpus"), num(lim, "cpus"), "vCPUs", extra);
    snprintf(extra, sizeof extra, "  (running: %s)", size(num(run, "memory"), a));
    line_size(draw, "memory", num(def, "memory"), num(lim, "memory"), extra);

    size_t i, k;
    json_t *n, *x;
    json_array_foreach(json_object_get(s, "nodes"), i, n) {
        long long id = num(n, "id");
        json_t *bound = json_object_get(n, "bound");
        qv_printf("\nNUMA node %lld: CPUs %s (%lld cores), %s memory (%s free)\n", id,
               qv_json_str(n, "cpulist") ? qv_json_str(n, "cpulist") : "-", num(n, "cores"), size(num(n, "memory_total"), a),
               size(num(n, "memory_free"), b));
        snprintf(extra, sizeof extra, "  (%lld CPUs × %.1f; %lld vCPUs pinned here)", num(n, "cpus"),
                 json_real_value(json_object_get(oc, "cpu")), num(n, "pinned_vcpus"));
        line_count(draw, "vCPUs bound", num(bound, "cpus"), num(n, "vcpu_limit"), "vCPUs", extra);
        line_size(draw, "mem bound", num(bound, "memory"), num(n, "memory_total"), "");
        json_array_foreach(json_object_get(n, "hugepages"), k, x) {
            char label[32];
            qv_format_size((uint64_t)num(x, "page_size"), a, sizeof a);
            snprintf(label, sizeof label, "hugepg %s", a);
            long long total = num(x, "total");
            qv_printf("  %-12s ", label);
            bar(draw, (double)(total - num(x, "free")), (double)total);
            qv_printf("%lld / %lld pages in use\n", total - num(x, "free"), total);
        }
        json_array_foreach(json_object_get(s, "gpus"), k, x) {
            if (!json_is_integer(json_object_get(x, "numa_node")) || num(x, "numa_node") != id)
                continue;
            const char *vm = qv_json_str(x, "vm");
            qv_printf("  GPU          %s %s: %s%s\n", qv_json_str(x, "device"), qv_json_str(x, "model") ? qv_json_str(x, "model") : "",
                   vm ? vm : "free", vm ? (json_is_true(json_object_get(x, "running")) ? " (running)" : " (stopped)")
                                    : "");
        }
        json_array_foreach(json_object_get(s, "nics"), k, x) {
            if (!json_is_integer(json_object_get(x, "numa_node")) || num(x, "numa_node") != id ||
                json_is_true(json_object_get(x, "virtfn")))
                continue;
            json_t *sr = json_object_get(x, "sriov");
            if (json_is_object(sr))
                qv_printf("  NIC          %s (%s): SR-IOV, %lld of %lld VFs enabled\n", qv_json_str(x, "name"), qv_json_str(x, "device"),
                       num(sr, "num_vfs"), num(sr, "total_vfs"));
            else
                qv_printf("  NIC          %s (%s)\n", qv_json_str(x, "name"), qv_json_str(x, "device"));
        }
    }
    /* devices whose NUMA node the kernel does not know */
    json_array_foreach(json_object_get(s, "gpus"), k, x)
        if (!json_is_integer(json_object_get(x, "numa_node")))
            qv_printf("\nGPU %s (NUMA node unknown): %s\n", qv_json_str(x, "device"), qv_json_str(x, "vm") ? qv_json_str(x, "vm") : "free");

    qv_printf("\npools:\n");
    json_array_foreach(json_object_get(s, "pools"), i, n) {
        json_t *u = json_object_get(n, "used"), *q = json_object_get(n, "quota");
        qv_printf(" %s (%lld VMs)\n", qv_json_str(n, "name"), num(u, "vms"));
        json_t *qc = json_object_get(q, "cpus"), *qm = json_object_get(q, "memory"), *qg = json_object_get(q, "gpus");
        line_count(draw, "vCPUs", num(u, "cpus"), json_is_integer(qc) ? json_integer_value(qc) : -1, "vCPUs", "");
        line_size(draw, "memory", num(u, "memory"), json_is_integer(qm) ? json_integer_value(qm) : -1, "");
        line_count(draw, "GPUs", num(u, "gpus"), json_is_integer(qg) ? json_integer_value(qg) : -1, "GPUs", "");
    }
    qv_printf("\nstorage pools:\n");
    json_array_foreach(json_object_get(s, "storage_pools"), i, n) {
        qv_printf(" %s%s (%s)%s\n", qv_json_str(n, "name"), json_is_true(json_object_get(n, "default")) ? " [default]" : "",
               qv_json_str(n, "path"), json_is_true(json_object_get(n, "thin_overcommit")) ? ", thin overcommit" : "");
        if (qv_json_str(n, "error")) {
            qv_printf("  %s\n", qv_json_str(n, "error"));
            continue;
        }
        /* what the disks could grow to, against what they hold plus what is free */
        snprintf(extra, sizeof extra, "  (disks use %s; %s free)", size(num(n, "used"), a), size(num(n, "free"), b));
        line_size(draw, "allocated", num(n, "allocated"), num(n, "free") + num(n, "used"), extra);
    }
}

int cmd_node_status(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"watch", optional_argument, NULL, 'w'}, {NULL, 0, NULL, 0}};
    uint64_t every = 0;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hw::", longopts, status_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c != 'w')
            return qv_cli_usage_error("node status ", "bad option");
        every = 2;
        if (optarg && qv_parse_uint(optarg, 1, 3600, &every) < 0)
            return qv_cli_usage_error("node status ", "--watch takes whole seconds from 1 to 3600");
    }
    if (optind < argc)
        return qv_cli_usage_error("node status ", "takes no arguments");
    bool draw = isatty(STDOUT_FILENO);
    for (;;) {
        qv_error err = {0};
        json_t *res = NULL;
        if (qv_cli_call(cli, "node.status", NULL, &res, &err) < 0)
            return qv_cli_fail(cli, &err);
        if (cli->json) {
            qv_print_json(res, stdout); /* takes the reference */
            res = NULL;
        } else {
            if (every && draw)
                fputs("\033[H\033[2J", stdout); /* ours: clear the screen */
            render(res, draw);
        }
        json_decref(res);
        fflush(stdout);
        if (!every)
            return QV_EXIT_OK;
        struct timespec ts = {.tv_sec = (time_t)every};
        nanosleep(&ts, NULL);
        if (!draw && !cli->json)
            qv_printf("\n");
    }
}
