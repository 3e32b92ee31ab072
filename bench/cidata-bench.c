/* cidata-bench: the seed writer in the library and as a whole process.
 *
 *   cidata-bench [-n ROUNDS] [-i ITERATIONS] [-q QVISOR_BIN] [-d DIR]
 *
 * 1. In-library (median of ITERATIONS, microseconds) on a typical 4-file
 *    seed (meta-data, user-data, network-config, vendor-data as
 *    ci_seed_build makes them): ci_iso_write_buf, ci_iso_write_fd to a file,
 *    ci_seed_build + ci_iso_write_buf, ci_iso_write_file_atomic without and
 *    with CI_ISO_DURABLE (two fsyncs).
 * 2. Whole process, alternating runs (ROUNDS each, rotating the order):
 *    `qvisor cidata` (QVISOR_BIN, -q or $QVISOR_BIN, when it knows the verb;
 *    otherwise this binary re-executed as `--cidata`, which runs the same
 *    cmd_cidata), `genisoimage -volid cidata -joliet -rock` and
 *    `cloud-localds`, on the same four files in DIR (default $TMPDIR or
 *    /tmp).  Prints the medians and the ratios.
 *
 * Targets (issue 5): in-library under 100 us, the process at least 5x
 * faster than genisoimage. */
#include "cleanup.h"
#include "cloudinit/iso9660.h"
#include "cloudinit/nocloud.h"
#include "cmd/cli.h"
#include "fileio.h"
#include "util.h"

#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int cmd_cidata(qv_cli *cli, int argc, char **argv);

#define S(lit) ((char *)(lit))

extern char **environ;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}
static double median_us(uint64_t *ns, size_t n) {
    qsort(ns, n, sizeof *ns, cmp_u64);
    return (n % 2 ? (double)ns[n / 2] : ((double)ns[n / 2 - 1] + (double)ns[n / 2]) / 2) / 1000.0;
}

static const char *const keys[] = {
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q alice@laptop",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQDGl0d3ZkZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ"
    "2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2ZXZ2 "
    "bob@ci",
};
static const char *const pkgs[] = {"qemu-guest-agent"};
static const char *const cmds[] = {"systemctl enable --now qemu-guest-agent"};
static const char *const dns[] = {"10.88.0.1"};
static const ci_nic nic = {.mac = "52:54:00:12:34:56", .address = "10.88.0.23/24", .gateway = "10.88.0.1"};
static const char vendor[] = "#cloud-config\ntimezone: UTC\n";

static const ci_seed_spec spec = {
    .hostname = "bench-vm",
    .user = "debian",
    .ssh_keys = keys,
    .n_ssh_keys = 2,
    .packages = pkgs,
    .n_packages = 1,
    .runcmd = cmds,
    .n_runcmd = 1,
    .nics = &nic,
    .n_nics = 1,
    .dns_servers = dns,
    .n_dns_servers = 1,
    .vendor_data = vendor,
    .vendor_data_len = sizeof vendor - 1,
};

static void die(const char *what, const qv_error *err) {
    fprintf(stderr, "cidata-bench: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

static void join(char *buf, size_t size, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size) {
        fprintf(stderr, "cidata-bench: path too long\n");
        exit(1);
    }
}

static void bench_library(const char *dir, size_t iters) {
    qv_error err = {0};
    ci_seed seed;
    if (ci_seed_build(&spec, &seed, &err) < 0)
        die("ci_seed_build", &err);
    ci_iso_file files[CI_SEED_FILES_MAX];
    size_t n = ci_seed_files(&seed, files);
    uint64_t *t = calloc(iters, sizeof *t);
    if (!t)
        die("calloc", NULL);
    size_t img_len = 0;
    size_t content = 0;
    for (size_t i = 0; i < n; i++)
        content += files[i].size;

    /* warm-up, then measure */
    for (size_t i = 0; i < iters / 10 + 1; i++) {
        uint8_t *img;
        if (ci_iso_write_buf("cidata", files, n, 1700000000, &img, &img_len, &err) < 0)
            die("ci_iso_write_buf", &err);
        free(img);
    }
    for (size_t i = 0; i < iters; i++) {
        uint64_t t0 = qv_now_ns();
        uint8_t *img;
        ci_iso_write_buf("cidata", files, n, 1700000000, &img, &img_len, &err);
        free(img);
        t[i] = qv_now_ns() - t0;
    }
    printf("typical seed: %zu files, %zu bytes of content, image %zu bytes (%zu sectors)\n", n, content, img_len,
           img_len / 2048);
    printf("in-library  ci_iso_write_buf               median %8.1f us  (%zu runs)\n", median_us(t, iters), iters);

    char path[PATH_MAX];
    join(path, sizeof path, dir, "cidata-bench-lib.iso");
    _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(path, NULL);
    for (size_t i = 0; i < iters; i++) {
        uint64_t t0 = qv_now_ns();
        if (lseek(fd, 0, SEEK_SET) < 0 || ci_iso_write_fd(fd, "cidata", files, n, 1700000000, &err) < 0)
            die("ci_iso_write_fd", &err);
        t[i] = qv_now_ns() - t0;
    }
    printf("in-library  ci_iso_write_fd (to a file)    median %8.1f us\n", median_us(t, iters));

    for (size_t i = 0; i < iters; i++) {
        uint64_t t0 = qv_now_ns();
        ci_seed s2;
        uint8_t *img;
        ci_iso_file f2[CI_SEED_FILES_MAX];
        if (ci_seed_build(&spec, &s2, &err) < 0)
            die("ci_seed_build", &err);
        size_t n2 = ci_seed_files(&s2, f2);
        ci_iso_write_buf("cidata", f2, n2, 1700000000, &img, &img_len, &err);
        free(img);
        ci_seed_done(&s2);
        t[i] = qv_now_ns() - t0;
    }
    printf("in-library  ci_seed_build + write_buf      median %8.1f us\n", median_us(t, iters));

    size_t atomic_iters = iters < 500 ? iters : 500;
    for (size_t i = 0; i < atomic_iters; i++) {
        uint64_t t0 = qv_now_ns();
        if (ci_iso_write_file_atomic(path, 0644, 0, "cidata", files, n, 1700000000, &err) < 0)
            die("ci_iso_write_file_atomic", &err);
        t[i] = qv_now_ns() - t0;
    }
    printf("in-library  ci_iso_write_file_atomic       median %8.1f us  (%zu runs, in %s)\n",
           median_us(t, atomic_iters), atomic_iters, dir);
    for (size_t i = 0; i < atomic_iters; i++) {
        uint64_t t0 = qv_now_ns();
        if (ci_iso_write_file_atomic(path, 0644, CI_ISO_DURABLE, "cidata", files, n, 1700000000, &err) < 0)
            die("ci_iso_write_file_atomic", &err);
        t[i] = qv_now_ns() - t0;
    }
    printf("in-library  ... with CI_ISO_DURABLE (fsyncs) median %8.1f us\n", median_us(t, atomic_iters));
    unlink(path);
    free(t);

    /* the process comparison uses the same four files */
    for (size_t i = 0; i < n; i++) {
        join(path, sizeof path, dir, files[i].name);
        if (qv_write_file_atomic(path, files[i].data, (size_t)files[i].size, 0644) < 0)
            die(path, NULL);
    }
    ci_seed_done(&seed);
}

/* Runs argv with stdout/stderr on /dev/null; returns wall time in ns, or 0
 * when it failed. */
static uint64_t run_ns(char *const *argv) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    uint64_t t0 = qv_now_ns();
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return 0;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        ;
    uint64_t dt = qv_now_ns() - t0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? dt : 0;
}

static bool qvisor_has_cidata(const char *bin) {
    char *argv[] = {(char *)bin, S("cidata"), S("--help"), NULL};
    return bin && *bin && access(bin, X_OK) == 0 && run_ns(argv) != 0;
}

static bool have(const char *prog) {
    char *argv[] = {S("sh"), S("-c"), NULL, NULL};
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s", prog);
    argv[2] = cmd;
    return run_ns(argv) != 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--cidata") == 0) {
        qv_cli cli = {0};
        argv[1] = S("cidata");
        return cmd_cidata(&cli, argc - 1, argv + 1);
    }
    size_t rounds = 100, iters = 5000;
    const char *qvisor = getenv("QVISOR_BIN");
    const char *tmp = getenv("TMPDIR");
    const char *dir_base = tmp && *tmp ? tmp : "/tmp";
    int c;
    while ((c = getopt(argc, argv, "n:i:q:d:")) != -1) {
        switch (c) {
        case 'n':
            rounds = strtoul(optarg, NULL, 10);
            break;
        case 'i':
            iters = strtoul(optarg, NULL, 10);
            break;
        case 'q':
            qvisor = optarg;
            break;
        case 'd':
            dir_base = optarg;
            break;
        default:
            fprintf(stderr, "usage: cidata-bench [-n ROUNDS] [-i ITERATIONS] [-q QVISOR_BIN] [-d DIR]\n");
            return 64;
        }
    }
    if (rounds < 1 || iters < 1)
        return 64;
    char dir[PATH_MAX];
    join(dir, sizeof dir, dir_base, "cidata-bench.XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp", NULL);

    bench_library(dir, iters);

    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl < 0)
        die("readlink /proc/self/exe", NULL);
    self[sl] = '\0';
    char ud[PATH_MAX], md[PATH_MAX], nc[PATH_MAX], vd[PATH_MAX], o1[PATH_MAX], o2[PATH_MAX], o3[PATH_MAX];
    join(ud, sizeof ud, dir, "user-data");
    join(md, sizeof md, dir, "meta-data");
    join(nc, sizeof nc, dir, "network-config");
    join(vd, sizeof vd, dir, "vendor-data");
    join(o1, sizeof o1, dir, "qvisor.iso");
    join(o2, sizeof o2, dir, "genisoimage.iso");
    join(o3, sizeof o3, dir, "localds.iso");

    bool use_qvisor = qvisor_has_cidata(qvisor);
    char *qv_argv[] = {use_qvisor ? (char *)qvisor : self, use_qvisor ? S("cidata") : S("--cidata"), S("-o"), o1,
                       S("--user-data"), ud, S("--meta-data"), md, S("--network-config"), nc, S("--vendor-data"), vd, NULL};
    char *qs_argv[] = {qv_argv[0], qv_argv[1], S("--sync"), S("-o"), o1, S("--user-data"), ud, S("--meta-data"), md,
                       S("--network-config"), nc, S("--vendor-data"), vd, NULL};
    char *gi_argv[] = {S("genisoimage"), S("-quiet"), S("-o"), o2, S("-volid"), S("cidata"), S("-joliet"), S("-rock"), ud, md, nc, vd, NULL};
    char *true_argv[] = {S("true"), NULL};
    char *cl_argv[] = {S("cloud-localds"), S("-N"), nc, S("-V"), vd, o3, ud, md, NULL};
    struct {
        const char *name;
        char **argv;
        bool on;
        uint64_t *t;
        size_t n;
    } procs[] = {
        {use_qvisor ? "qvisor cidata" : "cmd_cidata (bench re-exec)", qv_argv, true, NULL, 0},
        {use_qvisor ? "qvisor cidata --sync" : "cmd_cidata --sync (re-exec)", qs_argv, true, NULL, 0},
        {"genisoimage", gi_argv, have("genisoimage"), NULL, 0},
        {"cloud-localds", cl_argv, have("cloud-localds"), NULL, 0},
        {"spawn floor: true", true_argv, true, NULL, 0},
    };
    enum { NP = 5, NCMP = 4 };
    for (int p = 0; p < NP; p++)
        procs[p].t = calloc(rounds, sizeof(uint64_t));
    /* one warm-up each, then alternate, rotating who goes first */
    for (int p = 0; p < NP; p++)
        if (procs[p].on && !run_ns(procs[p].argv)) {
            fprintf(stderr, "cidata-bench: %s failed; left out\n", procs[p].name);
            procs[p].on = false;
        }
    for (size_t r = 0; r < rounds; r++)
        for (int k = 0; k < NP; k++) {
            int p = (int)((r + (size_t)k) % NP);
            if (!procs[p].on)
                continue;
            uint64_t dt = run_ns(procs[p].argv);
            if (dt)
                procs[p].t[procs[p].n++] = dt;
        }
    printf("\nwhole process, %zu alternating rounds, output in %s:\n", rounds, dir);
    double med[NP] = {0};
    for (int p = 0; p < NP; p++) {
        if (!procs[p].on || !procs[p].n) {
            printf("  %-28s not available\n", procs[p].name);
            continue;
        }
        med[p] = median_us(procs[p].t, procs[p].n);
        printf("  %-28s median %9.1f us\n", procs[p].name, med[p]);
    }
    for (int p = 2; p < NCMP; p++)
        for (int q = 0; q < 2; q++)
            if (med[q] > 0 && med[p] > 0)
                printf("  %s / %s = %.1fx\n", procs[p].name, procs[q].name, med[p] / med[q]);
    /* what each process costs beyond fork+exec of a trivial binary */
    double floor_us = med[NP - 1];
    if (floor_us > 0 && med[0] > floor_us && med[2] > floor_us)
        printf("  above the spawn floor: genisoimage %.1f us / %s %.1f us = %.1fx\n", med[2] - floor_us,
               procs[0].name, med[0] - floor_us, (med[2] - floor_us) / (med[0] - floor_us));
    for (int p = 0; p < NP; p++)
        free(procs[p].t);

    const char *rm[] = {ud, md, nc, vd, o1, o2, o3};
    for (size_t i = 0; i < QV_ARRAY_SIZE(rm); i++)
        unlink(rm[i]);
    rmdir(dir);
    return 0;
}
