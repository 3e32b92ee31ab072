/* query-status round trips against a real paused QEMU: the async libuv
 * client (qmp/) versus a minimal blocking client doing the same exchange,
 * measured in the same run on two monitors of the same QEMU, interleaved
 * so that drift hits both alike.  Wall-clock time is dominated by QEMU;
 * the CPU time each client spends per command is reported too.
 *
 *   qmp-bench [--ops N] [--batches N] [--window N] [--check]
 *
 * Latency: `ops` single round trips per client, the clients alternating
 * command by command.  Throughput: `batches` bursts of `window` commands in
 * flight per client, alternating burst by burst.  --check exits 1 when the
 * async client's median costs 10% or more over the blocking one's. */
#include "qmp/qmp.h"

#include "cleanup.h"
#include "util.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef struct opts {
    int batches;
    int ops;
    int window;
    bool check;
} opts;

/* ---- async client ---- */

typedef struct async_run {
    uv_loop_t *loop;
    qmp_conn *c;
    bool ready;
    int failed;
    int to_send;  /* commands still to send */
    int inflight;
    int done;
    uint64_t last_ns;
    uint64_t *lat; /* per-op latency when window == 1 */
} async_run;

static void async_reply(qmp_conn *c, int status, json_t *result, const qmp_error *err, void *ud);

static void async_send_one(async_run *a) {
    a->to_send--;
    a->inflight++;
    a->last_ns = qv_now_ns();
    int r = qmp_send(a->c, "query-status", NULL, 10000, async_reply, a);
    if (r < 0)
        a->failed = r;
}

static void async_reply(qmp_conn *c, int status, json_t *result, const qmp_error *err, void *ud) {
    (void)c;
    (void)err;
    async_run *a = ud;
    if (status < 0 || !json_is_object(result)) {
        a->failed = status ? status : -EBADMSG;
        return;
    }
    if (a->lat)
        a->lat[a->done] = qv_now_ns() - a->last_ns;
    a->done++;
    a->inflight--;
    if (a->to_send > 0)
        async_send_one(a);
}

static void async_ready(qmp_conn *c, void *ud) {
    (void)c;
    ((async_run *)ud)->ready = true;
}

/* Runs ops commands with `window` in flight; returns elapsed ns.  With
 * window 1, lat[i] gets each round trip. */
static uint64_t async_batch(async_run *a, int ops, int window, uint64_t *lat) {
    a->to_send = ops;
    a->done = 0;
    a->inflight = 0;
    a->lat = lat;
    uint64_t t0 = qv_now_ns();
    for (int i = 0; i < window && a->to_send > 0; i++)
        async_send_one(a);
    while (a->done < ops && !a->failed)
        uv_run(a->loop, UV_RUN_ONCE);
    return qv_now_ns() - t0;
}

/* ---- minimal blocking client ---- */

typedef struct blocking {
    int fd;
    char buf[65536];
    size_t len;
    long long next_id;
} blocking;

/* Reads one line; returns a parsed object or NULL on EOF/error. */
static json_t *blocking_read(blocking *b) {
    for (;;) {
        char *nl = memchr(b->buf, '\n', b->len);
        if (nl) {
            size_t n = (size_t)(nl - b->buf);
            json_t *v = json_loadb(b->buf, n, 0, NULL);
            memmove(b->buf, nl + 1, b->len - n - 1);
            b->len -= n + 1;
            return v;
        }
        if (b->len == sizeof b->buf)
            return NULL;
        ssize_t r = read(b->fd, b->buf + b->len, sizeof b->buf - b->len);
        if (r <= 0)
            return NULL;
        b->len += (size_t)r;
    }
}

static int blocking_send(blocking *b, const char *cmd) {
    char line[128];
    int n = snprintf(line, sizeof line, "{\"execute\":\"%s\",\"id\":%lld}\n", cmd, b->next_id++);
    return write(b->fd, line, (size_t)n) == n ? 0 : -EIO;
}

/* Waits for the reply with the given id, skipping events. */
static int blocking_wait(blocking *b, long long id) {
    for (;;) {
        json_t *v = blocking_read(b);
        if (!v)
            return -EIO;
        json_t *jid = json_object_get(v, "id");
        bool match = json_is_integer(jid) && json_integer_value(jid) == id;
        bool ok = json_object_get(v, "return") != NULL;
        json_decref(v);
        if (match)
            return ok ? 0 : -EREMOTEIO;
    }
}

static int blocking_connect(blocking *b, const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    b->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b->fd < 0 || connect(b->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -errno;
    json_t *greeting = blocking_read(b);
    if (!json_object_get(greeting, "QMP")) {
        json_decref(greeting);
        return -EPROTO;
    }
    json_decref(greeting);
    b->next_id = 1;
    if (blocking_send(b, "qmp_capabilities") < 0)
        return -EIO;
    return blocking_wait(b, 1);
}

static uint64_t blocking_batch(blocking *b, int ops, int window, uint64_t *lat) {
    uint64_t t0 = qv_now_ns();
    for (int done = 0; done < ops;) {
        int n = ops - done < window ? ops - done : window;
        long long first = b->next_id;
        uint64_t s = qv_now_ns();
        for (int i = 0; i < n; i++)
            if (blocking_send(b, "query-status") < 0)
                return 0;
        for (int i = 0; i < n; i++)
            if (blocking_wait(b, first + i) < 0)
                return 0;
        if (lat && n == 1)
            lat[done] = qv_now_ns() - s;
        done += n;
    }
    return qv_now_ns() - t0;
}

/* ---- QEMU ---- */

static char *find_qemu(void) {
    const char *path = getenv("PATH");
    char *dirs = strdup(path ? path : "/usr/bin:/bin");
    char *save = NULL, *found = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char *full;
        if (asprintf(&full, "%s/qemu-system-x86_64", d) < 0)
            break;
        if (access(full, X_OK) == 0)
            found = full;
        else
            free(full);
    }
    free(dirs);
    return found;
}

/* Spawns a paused QEMU with monitors on the listening sockets fds[0..1],
 * mapped to fds 3 and 4. */
static pid_t spawn_qemu(const char *qemu, const int fds[2]) {
    int high[2];
    for (int i = 0; i < 2; i++)
        high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 100);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_adddup2(&fa, high[0], 3);
    posix_spawn_file_actions_adddup2(&fa, high[1], 4);
    char *argv[] = {(char *)qemu, (char *)"-accel", (char *)"tcg", (char *)"-S", (char *)"-nodefaults",
                    (char *)"-no-user-config", (char *)"-display", (char *)"none", (char *)"-m", (char *)"64",
                    (char *)"-chardev", (char *)"socket,id=mon0,fd=3,server=on,wait=off", (char *)"-mon",
                    (char *)"chardev=mon0,mode=control", (char *)"-chardev",
                    (char *)"socket,id=mon1,fd=4,server=on,wait=off", (char *)"-mon",
                    (char *)"chardev=mon1,mode=control", NULL};
    pid_t pid;
    int r = posix_spawn(&pid, qemu, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(high[0]);
    close(high[1]);
    return r == 0 ? pid : -1;
}

/* ---- stats ---- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t sum(const uint64_t *v, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    return s;
}

static double mean_us(const uint64_t *v, size_t n) {
    return (double)sum(v, n) / (double)n / 1000.0;
}

static double pct(uint64_t *v, size_t n, double p) {
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i = (size_t)(p * (double)(n - 1));
    return (double)v[i] / 1000.0;
}

int main(int argc, char **argv) {
    opts o = {.batches = 200, .ops = 4000, .window = 32};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc)
            o.batches = atoi(argv[++i]);
        else if (strcmp(argv[i], "--ops") == 0 && i + 1 < argc)
            o.ops = atoi(argv[++i]);
        else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
            o.window = atoi(argv[++i]);
        else if (strcmp(argv[i], "--check") == 0)
            o.check = true;
        else {
            fprintf(stderr, "usage: %s [--ops N] [--batches N] [--window N] [--check]\n", argv[0]);
            return 64;
        }
    }
    if (o.batches < 1 || o.ops < 1 || o.window < 1)
        return 64;
    signal(SIGPIPE, SIG_IGN);

    _cleanup_free_ char *qemu = find_qemu();
    if (!qemu) {
        printf("qmp-bench: qemu-system-x86_64 not found, skipped\n");
        return 77;
    }
    char dir[] = "/tmp/qmp-bench.XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char path[2][PATH_MAX];
    int lfd[2];
    for (int i = 0; i < 2; i++) {
        snprintf(path[i], sizeof path[i], "%s/mon%d.sock", dir, i);
        int r = qmp_listen_socket(path[i], &lfd[i]);
        if (r < 0) {
            fprintf(stderr, "qmp-bench: listen: %s\n", strerror(-r));
            return 1;
        }
    }
    pid_t pid = spawn_qemu(qemu, lfd);
    close(lfd[0]);
    close(lfd[1]);
    if (pid < 0)
        return 1;

    int rc = 1;
    uint64_t *alat = NULL, *blat = NULL, *atp = NULL, *btp = NULL;
    bool ok = true;
    uv_loop_t loop;
    uv_loop_init(&loop);
    async_run a = {.loop = &loop};
    qmp_options qo = {.on_ready = async_ready, .userdata = &a, .handshake_timeout_ms = 30000};
    blocking b = {.fd = -1};
    int r = qmp_connect(&loop, path[0], &qo, &a.c);
    while (r == 0 && !a.ready && !a.failed && uv_run(&loop, UV_RUN_ONCE))
        ;
    if (r < 0 || !a.ready) {
        fprintf(stderr, "qmp-bench: async client did not get ready\n");
        goto out;
    }
    r = blocking_connect(&b, path[1]);
    if (r < 0) {
        fprintf(stderr, "qmp-bench: blocking client: %s\n", strerror(-r));
        goto out;
    }

    /* Warm up both paths. */
    async_batch(&a, 200, 1, NULL);
    blocking_batch(&b, 200, 1, NULL);

    /* The two clients alternate command by command (and batch by batch
     * for throughput), so that noise from the machine and from QEMU hits
     * both alike. */
    size_t n = (size_t)o.ops;
    size_t nb = (size_t)o.batches;
    alat = calloc(n, sizeof *alat);
    blat = calloc(n, sizeof *blat);
    atp = calloc(nb, sizeof *atp);
    btp = calloc(nb, sizeof *btp);
    if (!alat || !blat || !atp || !btp)
        goto out;
    uint64_t a_cpu = 0, b_cpu = 0, c0;
#define TIMED(acc, expr) (c0 = cpu_ns(), (expr), (acc) += cpu_ns() - c0)
    for (size_t i = 0; i < n && !a.failed; i++) {
        if (i % 2) {
            TIMED(b_cpu, ok &= blocking_batch(&b, 1, 1, &blat[i]) != 0);
            TIMED(a_cpu, async_batch(&a, 1, 1, &alat[i]));
        } else {
            TIMED(a_cpu, async_batch(&a, 1, 1, &alat[i]));
            TIMED(b_cpu, ok &= blocking_batch(&b, 1, 1, &blat[i]) != 0);
        }
    }
    for (size_t i = 0; i < nb && !a.failed; i++) {
        if (i % 2) {
            TIMED(b_cpu, btp[i] = blocking_batch(&b, o.window, o.window, NULL));
            TIMED(a_cpu, atp[i] = async_batch(&a, o.window, o.window, NULL));
        } else {
            TIMED(a_cpu, atp[i] = async_batch(&a, o.window, o.window, NULL));
            TIMED(b_cpu, btp[i] = blocking_batch(&b, o.window, o.window, NULL));
        }
        ok &= btp[i] != 0;
    }
#undef TIMED
    if (!ok) {
        fprintf(stderr, "qmp-bench: blocking client failed\n");
        goto out;
    }
    if (a.failed) {
        fprintf(stderr, "qmp-bench: async client failed: %s\n", strerror(-a.failed));
        goto out;
    }

    int ma = 0, mi = 0, mc = 0;
    qmp_version(a.c, &ma, &mi, &mc);
    double a_mean = mean_us(alat, n), b_mean = mean_us(blat, n);
    double a_p50 = pct(alat, n, 0.5), b_p50 = pct(blat, n, 0.5);
    double a_tp = (double)(nb * (size_t)o.window) / ((double)sum(atp, nb) / 1e9);
    double b_tp = (double)(nb * (size_t)o.window) / ((double)sum(btp, nb) / 1e9);
    double tp_p50_ratio = pct(atp, nb, 0.5) / pct(btp, nb, 0.5);
    printf("qmp-bench: QEMU %d.%d.%d paused (TCG), query-status; %zu single round trips and %zu batches of %d "
           "per client, interleaved\n",
           ma, mi, mc, n, nb, o.window);
    printf("latency    async    mean %7.2f us  p50 %7.2f  p99 %7.2f\n", a_mean, a_p50, pct(alat, n, 0.99));
    printf("latency    blocking mean %7.2f us  p50 %7.2f  p99 %7.2f\n", b_mean, b_p50, pct(blat, n, 0.99));
    printf("throughput async    %9.0f cmd/s (window %d)\n", a_tp, o.window);
    printf("throughput blocking %9.0f cmd/s (window %d)\n", b_tp, o.window);
    double per = (double)(n + nb * (size_t)o.window);
    printf("client CPU async    %7.2f us/cmd\n", (double)a_cpu / per / 1000.0);
    printf("client CPU blocking %7.2f us/cmd\n", (double)b_cpu / per / 1000.0);
    printf("ratio async/blocking (cost, target < 1.10): latency p50 %.3f, mean %.3f; batch time p50 %.3f, "
           "mean %.3f\n",
           a_p50 / b_p50, a_mean / b_mean, tp_p50_ratio, b_tp / a_tp);
    rc = o.check && (a_p50 / b_p50 >= 1.10 || tp_p50_ratio >= 1.10) ? 1 : 0;

out:
    free(alat);
    free(blat);
    free(atp);
    free(btp);
    if (b.fd >= 0)
        close(b.fd);
    qmp_close(a.c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < 2; i++)
        unlink(path[i]);
    rmdir(dir);
    return rc;
}
