/* The QMP client against a real qemu-system-x86_64 (TCG, -S, -nodefaults),
 * started the way the supervisor will: the monitor socket is created and
 * listened on first, the client connects at once, and QEMU gets the
 * listening fd. */
#include "qmptest.h"

#include "cleanup.h"
#include "util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct ctx {
    tloop t;
    qmp_conn *c;
    int ready;
    int disconnects, disconnect_status, disconnect_seq;
    int events;
    json_t *event_log;
} ctx;

static void on_ready(qmp_conn *c, void *ud) {
    (void)c;
    ((ctx *)ud)->ready++;
}

static void on_event(qmp_conn *c, const char *name, json_t *data, const qmp_timestamp *ts, void *ud) {
    (void)c;
    ctx *x = ud;
    x->events++;
    json_array_append_new(x->event_log, json_pack("{ss sO* sI si}", "name", name, "data", data, "seconds",
                                                  (json_int_t)ts->seconds, "seq", ++x->t.seq));
}

static void on_disconnect(qmp_conn *c, int status, void *ud) {
    (void)c;
    ctx *x = ud;
    x->disconnects++;
    x->disconnect_status = status;
    x->disconnect_seq = ++x->t.seq;
}

/* The first event called name, waiting for it if need be. */
static json_t *wait_event(ctx *x, const char *name) {
    uint64_t deadline = qv_now_ms() + qv_test_timeout_ms(10000);
    for (;;) {
        for (size_t i = 0; i < json_array_size(x->event_log); i++) {
            json_t *e = json_array_get(x->event_log, i);
            if (strcmp(json_string_value(json_object_get(e, "name")), name) == 0)
                return e;
        }
        if (qv_now_ms() > deadline)
            fail_msg("no %s event", name);
        tloop_wait(&x->t, &x->events, x->events + 1, 200);
    }
}

typedef struct status_rec {
    int calls, status;
    bool running;
    char run_state[32];
} status_rec;

static void status_cb(qmp_conn *c, int status, const qmp_run_status *st, const qmp_error *err, void *ud) {
    (void)c;
    (void)err;
    status_rec *r = ud;
    r->calls++;
    r->status = status;
    if (st) {
        r->running = st->running;
        snprintf(r->run_state, sizeof r->run_state, "%s", st->status);
    }
}

static void expect_status(ctx *x, bool running, const char *run_state) {
    status_rec r = {0};
    assert_int_equal(qmp_query_status(x->c, qv_test_timeout_ms(5000), status_cb, &r), 0);
    assert_true(tloop_wait(&x->t, &r.calls, 1, 10000));
    assert_int_equal(r.status, 0);
    assert_int_equal(r.running, running);
    assert_string_equal(r.run_state, run_state);
}

static void call(ctx *x, int (*fn)(qmp_conn *, uint64_t, qmp_reply_cb, void *)) {
    reply r;
    reply_init(&r, &x->t);
    assert_int_equal(fn(x->c, qv_test_timeout_ms(5000), reply_cb, &r), 0);
    assert_true(tloop_wait(&x->t, &r.calls, 1, 10000));
    assert_int_equal(r.status, 0);
    assert_true(json_is_object(r.result));
    reply_done(&r);
}

typedef struct cpus_rec {
    int calls, status;
    size_t n;
    int64_t index[8];
    pid_t tid[8];
} cpus_rec;

static void cpus_cb(qmp_conn *c, int status, const qmp_vcpu *cpus, size_t n, const qmp_error *err, void *ud) {
    (void)c;
    (void)err;
    cpus_rec *r = ud;
    r->calls++;
    r->status = status;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        r->index[i] = cpus[i].cpu_index;
        r->tid[i] = cpus[i].thread_id;
    }
}

/* "QEMU emulator version 7.2.22 (...)" -> 7, 2, 22 */
static void installed_version(const char *qemu, int *major, int *minor, int *micro) {
    char *argv[] = {(char *)qemu, (char *)"--version", NULL};
    _cleanup_free_ char *out = run_capture(argv);
    assert_non_null(out);
    assert_int_equal(sscanf(out, "QEMU emulator version %d.%d.%d", major, minor, micro), 3);
}

/* What a failed assertion leaves behind, for the teardown. */
static pid_t spawned;
static char *spawned_dir;

static int teardown(void **state) {
    (void)state;
    if (spawned > 0) {
        kill(spawned, SIGKILL);
        wait_pid(spawned, 5000);
        spawned = 0;
    }
    if (spawned_dir) {
        qv_test_rm_rf(spawned_dir);
        free(spawned_dir);
        spawned_dir = NULL;
    }
    return 0;
}

static void test_real_qemu(void **state) {
    (void)state;
    _cleanup_free_ char *qemu = find_program("qemu-system-x86_64");
    if (!qemu)
        skip();

    char *dir = qv_test_mkdtemp("qmp-qemu");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/mon.sock", dir);
    int lfd;
    assert_int_equal(qmp_listen_socket(path, &lfd), 0);

    ctx x = {.event_log = json_array()};
    tloop_init(&x.t);
    qmp_options o = {
        .on_ready = on_ready,
        .on_event = on_event,
        .on_disconnect = on_disconnect,
        .userdata = &x,
        .handshake_timeout_ms = qv_test_timeout_ms(20000),
    };
    /* Connect before QEMU even exists: the socket is already listening. */
    assert_int_equal(qmp_connect(&x.t.loop, path, &o, &x.c), 0);
    status_rec early = {0};
    assert_int_equal(qmp_query_status(x.c, qv_test_timeout_ms(20000), status_cb, &early), 0);

    char log[PATH_MAX];
    snprintf(log, sizeof log, "%s/qemu.log", dir);
    char *argv[] = {qemu, (char *)"-accel", (char *)"tcg", (char *)"-S", (char *)"-nodefaults",
                    (char *)"-no-user-config", (char *)"-display", (char *)"none", (char *)"-m", (char *)"64",
                    (char *)"-smp", (char *)"2", (char *)"-chardev",
                    (char *)"socket,id=mon0,fd=3,server=on,wait=off", (char *)"-mon",
                    (char *)"chardev=mon0,mode=control", NULL};
    pid_t pid = spawn_with_fd3(argv, lfd, false, log);
    spawned = pid;
    spawned_dir = dir;
    close(lfd);

    assert_true(tloop_wait(&x.t, &x.ready, 1, 20000));
    int ma, mi, mc, ema, emi, emc;
    assert_int_equal(qmp_version(x.c, &ma, &mi, &mc), 0);
    installed_version(qemu, &ema, &emi, &emc);
    assert_int_equal(ma, ema);
    assert_int_equal(mi, emi);
    assert_int_equal(mc, emc);

    /* Paused from the start (-S): "prelaunch". */
    assert_true(tloop_wait(&x.t, &early.calls, 1, 10000));
    assert_int_equal(early.status, 0);
    assert_false(early.running);
    assert_string_equal(early.run_state, "prelaunch");

    /* vCPU threads are real tasks of the QEMU process. */
    cpus_rec cpus = {0};
    assert_int_equal(qmp_query_cpus_fast(x.c, qv_test_timeout_ms(5000), cpus_cb, &cpus), 0);
    assert_true(tloop_wait(&x.t, &cpus.calls, 1, 10000));
    assert_int_equal(cpus.status, 0);
    assert_int_equal(cpus.n, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(cpus.index[i], (int64_t)i);
        assert_true(cpus.tid[i] > 0);
        assert_true(cpus.tid[i] != pid);
        char task[64];
        snprintf(task, sizeof task, "/proc/%d/task/%d", (int)pid, (int)cpus.tid[i]);
        struct stat st;
        if (stat(task, &st) != 0)
            fail_msg("%s does not exist", task);
    }
    assert_true(cpus.tid[0] != cpus.tid[1]);

    /* An error reply from the real thing. */
    reply err;
    reply_init(&err, &x.t);
    assert_int_equal(qmp_send(x.c, "no-such-command", NULL, qv_test_timeout_ms(5000), reply_cb, &err), 0);
    assert_true(tloop_wait(&x.t, &err.calls, 1, 10000));
    assert_int_equal(err.status, QMP_ECOMMAND);
    assert_string_equal(err.error_class, "CommandNotFound");
    assert_string_equal(err.desc, "The command no-such-command has not been found");
    reply_done(&err);

    call(&x, qmp_cont);
    wait_event(&x, "RESUME");
    expect_status(&x, true, "running");
    call(&x, qmp_stop);
    wait_event(&x, "STOP");
    expect_status(&x, false, "paused");
    call(&x, qmp_cont);
    expect_status(&x, true, "running");

    /* No guest OS: the ACPI button is pressed, nothing powers off. */
    call(&x, qmp_system_powerdown);
    json_t *pd = wait_event(&x, "POWERDOWN");
    assert_true(json_integer_value(json_object_get(pd, "seconds")) > 1600000000);
    call(&x, qmp_system_reset);
    json_t *reset = wait_event(&x, "RESET");
    assert_false(json_is_true(json_object_get(json_object_get(reset, "data"), "guest")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(reset, "data"), "reason")),
                        "host-qmp-system-reset");
    expect_status(&x, true, "running");
    assert_int_equal(x.disconnects, 0);

    /* quit: reply, SHUTDOWN, then EOF; QEMU exits cleanly. */
    reply q;
    reply_init(&q, &x.t);
    assert_int_equal(qmp_quit(x.c, qv_test_timeout_ms(5000), reply_cb, &q), 0);
    assert_true(tloop_wait(&x.t, &x.disconnects, 1, 10000));
    assert_int_equal(q.calls, 1);
    assert_int_equal(q.status, 0);
    json_t *sd = wait_event(&x, "SHUTDOWN");
    json_t *data = json_object_get(sd, "data");
    assert_false(json_is_true(json_object_get(data, "guest")));
    assert_string_equal(json_string_value(json_object_get(data, "reason")), "host-qmp-quit");
    assert_true(json_integer_value(json_object_get(sd, "seq")) < x.disconnect_seq);
    assert_int_equal(x.disconnect_status, QMP_EDISCONNECTED);
    reply_done(&q);

    int wstatus = wait_pid(pid, 10000);
    spawned = 0;
    assert_true(wstatus >= 0 && WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);

    assert_int_equal(qmp_send(x.c, "query-status", NULL, 0, NULL, NULL), -ENOTCONN);
    qmp_close(x.c);
    assert_int_equal(x.disconnects, 1);
    tloop_finish(&x.t);
    json_decref(x.event_log);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_real_qemu, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
