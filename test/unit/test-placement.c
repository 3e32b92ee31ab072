/* The start side of issue 8 (supervisor/resources/placement.h, supervisor/resources/resources.h)
 * on the two-node fake machine of test/lib/faketopo.h: node 0 has CPUs
 * 0,1,4,5 and 16 GiB, node 1 CPUs 2,3,6,7 and 32 GiB; 1G hugepages 2 free on
 * node 0 and 6 free on node 1; a GPU 0000:41:00.0 on node 1.  What a start
 * decides (node, CPUs), what it refuses before QEMU runs (unknown nodes,
 * CPUs the host does not have, hugepages that are not free), and the
 * pinning itself on this test's own threads. */
#include "testlib.h"

#include "cleanup.h"
#include "faketopo.h"
#include "fileio.h"
#include "supervisor/resources/placement.h"
#include "supervisor/vm/registry.h"
#include "supervisor/resources/resources.h"
#include "sysroot.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GiB (1ull << 30)

static char *root;
static sv_capacity cap;
static sv_admission_policy pol;

static int setup(void **st) {
    (void)st;
    qv_faketopo_fixture_up("qv-placement", &root, &cap, &pol);
    return 0;
}

static int teardown(void **st) {
    (void)st;
    qv_faketopo_fixture_down(&root, &cap);
    return 0;
}

static sv_vmspec *spec(const char *json) {
    return qv_test_spec(json);
}

/* Places `json` against `usage`; returns the placement (asserting success). */
static sv_start_placement place(const char *json, const sv_vm_usage *usage, size_t n) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec(json);
    sv_start_placement p;
    qv_error err = {0};
    if (sv_start_place(&cap, &pol, usage, n, s, &p, &err) < 0)
        fail_msg("%s: %s", json, err.msg);
    return p;
}

static void place_fails(const char *json, int code, const char *msg, int exit_code) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec(json);
    sv_start_placement p = {.numa_node = -7};
    qv_error err = {0};
    int r = sv_start_place(&cap, &pol, NULL, 0, s, &p, &err);
    if (r != -code || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d '%s', want %d '%s'", json, r, err.msg, -code, msg);
    assert_int_equal(qv_exit_code_for_errno(r), exit_code);
    assert_int_equal(p.numa_node, -7); /* untouched */
}

static void assert_cpus(const sv_start_placement *p, const char *want) {
    char got[64];
    assert_int_equal(qv_format_cpulist(p->cpus, p->n_cpus, got, sizeof got), 0);
    assert_string_equal(got, want);
}

static void test_nothing_asked(void **st) {
    (void)st;
    sv_start_placement p = place("{\"name\":\"a\",\"image\":\"i\"}", NULL, 0);
    assert_int_equal(p.numa_node, -1);
    assert_false(p.bind_memory);
    assert_null(p.cpus);
    assert_int_equal(p.n_cpus, 0);
    sv_start_placement_clear(&p);
}

static void test_numeric_node(void **st) {
    (void)st;
    /* the node's memory and, without pin, its CPUs */
    sv_start_placement p = place("{\"name\":\"a\",\"image\":\"i\",\"numa\":\"0\"}", NULL, 0);
    assert_int_equal(p.numa_node, 0);
    assert_true(p.bind_memory);
    assert_cpus(&p, "0-1,4-5");
    sv_start_placement_clear(&p);
    p = place("{\"name\":\"a\",\"image\":\"i\",\"numa\":\"1\"}", NULL, 0);
    assert_cpus(&p, "2-3,6-7");
    sv_start_placement_clear(&p);
    /* pin wins for the CPUs; memory stays on the node */
    p = place("{\"name\":\"a\",\"image\":\"i\",\"numa\":\"1\",\"pin\":\"3\"}", NULL, 0);
    assert_int_equal(p.numa_node, 1);
    assert_true(p.bind_memory);
    assert_cpus(&p, "3");
    sv_start_placement_clear(&p);
    place_fails("{\"name\":\"a\",\"image\":\"i\",\"numa\":\"5\"}", EINVAL,
                "numa: there is no NUMA node 5 on this machine (nodes: 0, 1)", 65);
}

static void test_pin(void **st) {
    (void)st;
    sv_start_placement p = place("{\"name\":\"a\",\"image\":\"i\",\"pin\":\"2-3,7\"}", NULL, 0);
    assert_int_equal(p.numa_node, -1);
    assert_false(p.bind_memory);
    assert_cpus(&p, "2-3,7");
    sv_start_placement_clear(&p);
    /* a CPU the host does not have: refused before QEMU runs */
    place_fails("{\"name\":\"a\",\"image\":\"i\",\"pin\":\"1,99\"}", EINVAL,
                "pin: CPU 99 is not an online CPU of this host (online: 0-7)", 65);
    /* an offline one: the node cpulists hold online CPUs only */
    qv_test_write(root, "sys/devices/system/node/node1/cpulist", "2-3,6\n");
    sv_capacity_clear(&cap);
    qv_error err = {0};
    if (sv_capacity_read(&cap, &err) < 0)
        fail_msg("%s", err.msg);
    place_fails("{\"name\":\"a\",\"image\":\"i\",\"pin\":\"6-7\"}", EINVAL,
                "pin: CPU 7 is not an online CPU of this host (online: 0-6)", 65);
}

static void test_auto(void **st) {
    (void)st;
    /* node 1 holds 20 GiB of bound VMs: 12 GiB left there, 16 on node 0 */
    sv_vm_usage busy = {.name = "busy", .cpus = 2, .memory = 20 * GiB, .numa_node = 1};
    sv_start_placement p = place("{\"name\":\"a\",\"image\":\"i\",\"memory\":\"4G\",\"numa\":\"auto\"}", &busy, 1);
    assert_int_equal(p.numa_node, 0);
    assert_true(p.bind_memory);
    assert_cpus(&p, "0-1,4-5");
    sv_start_placement_clear(&p);
    /* its GPU is on node 1 (the spec's short address matches), and it fits there */
    p = place("{\"name\":\"a\",\"image\":\"i\",\"memory\":\"4G\",\"numa\":\"auto\",\"gpus\":[\"41:00.0\"]}", &busy, 1);
    assert_int_equal(p.numa_node, 1);
    assert_cpus(&p, "2-3,6-7");
    sv_start_placement_clear(&p);
    /* 1G hugepages: 2 free on node 0, 6 on node 1 */
    p = place("{\"name\":\"a\",\"image\":\"i\",\"memory\":\"4G\",\"numa\":\"auto\",\"hugepages\":\"1G\"}", NULL, 0);
    assert_int_equal(p.numa_node, 1);
    sv_start_placement_clear(&p);
    _cleanup_(sv_vmspec_freep) sv_vmspec *s =
        spec("{\"name\":\"a\",\"image\":\"i\",\"memory\":\"7G\",\"numa\":\"auto\",\"hugepages\":\"1G\"}");
    qv_error err = {0};
    int r = sv_start_place(&cap, &pol, NULL, 0, s, &p, &err);
    assert_int_equal(r, -QV_ECAPACITY);
    assert_int_equal(qv_exit_code_for_errno(r), 75);
    assert_non_null(strstr(err.msg, "1G hugepages"));
}

static void test_auto_without_numa(void **st) {
    (void)st;
    /* a kernel without NUMA: node 0 for auto, its CPUs, memory not bound
     * (mbind would fail there) */
    unsigned cpus[] = {0, 1};
    sv_numa_node n0 = {.id = 0, .cpus = cpus, .n_cpus = 2, .mem_total = 4 * GiB, .mem_free = 4 * GiB};
    sv_capacity flat = {.numa = false, .nodes = &n0, .n_nodes = 1, .n_cpus = 2, .mem_total = 4 * GiB};
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = spec("{\"name\":\"a\",\"image\":\"i\",\"numa\":\"auto\"}");
    sv_start_placement p;
    qv_error err = {0};
    assert_int_equal(sv_start_place(&flat, &pol, NULL, 0, s, &p, &err), 0);
    assert_int_equal(p.numa_node, 0);
    assert_false(p.bind_memory);
    assert_cpus(&p, "0-1");
    sv_start_placement_clear(&p);
}

static void test_hugepages_whole_pages(void **st) {
    (void)st;
    place_fails("{\"name\":\"a\",\"image\":\"i\",\"memory\":\"1025M\",\"hugepages\":\"2M\"}", EINVAL,
                "memory 1025M is not a whole number of 2M hugepages", 65);
}

/* ---- admission at start through the registry (sv_resources_admit) ---- */

static void write_vm(const char *inst, const char *name, const char *specj, const char *state) {
    char rel[128];
    snprintf(rel, sizeof rel, "%s/spec.json", name);
    qv_test_write(inst, rel, specj);
    snprintf(rel, sizeof rel, "%s/state.json", name);
    char st[256];
    snprintf(st, sizeof st, "{\"state\":\"%s\",\"run\":{\"pid\":0}}\n", state);
    qv_test_write(inst, rel, st);
}

static void test_admission_at_start(void **st) {
    (void)st;
    _cleanup_free_ char *inst = NULL;
    assert_true(asprintf(&inst, "%s/instances", root) > 0);
    /* a running VM counts at start, a stopped one does not */
    write_vm(inst, "web", "{\"name\":\"web\",\"image\":\"i\",\"cpus\":4,\"memory\":\"40G\"}\n", "running");
    write_vm(inst, "idle", "{\"name\":\"idle\",\"image\":\"i\",\"cpus\":4,\"memory\":\"40G\"}\n", "stopped");
    _cleanup_(sv_config_freep) sv_config *c = sv_config_new_default();
    free(c->instances_dir);
    c->instances_dir = strdup(inst);
    sv_registry *r = NULL;
    qv_error err = {0};
    if (sv_registry_load(&c, &r, NULL, &err) < 0)
        fail_msg("%s", err.msg);
    assert_non_null(sv_registry_find(r, "idle"));

    /* 48 GiB: 40 used by web, 8 left */
    _cleanup_(sv_vmspec_freep) sv_vmspec *fits = spec("{\"name\":\"new\",\"image\":\"i\",\"memory\":\"8G\"}");
    if (sv_resources_admit(r, c, NULL, fits, false, -1, &err) < 0)
        fail_msg("%s", err.msg);
    /* at create every defined VM counts */
    assert_int_equal(sv_resources_admit(r, c, NULL, fits, true, -1, &err), -QV_ECAPACITY);

    _cleanup_(sv_vmspec_freep) sv_vmspec *big = spec("{\"name\":\"new\",\"image\":\"i\",\"memory\":\"9G\"}");
    assert_int_equal(sv_resources_admit(r, c, NULL, big, false, -1, &err), -QV_ECAPACITY);
    /* a capacity the caller read already (a start reads it once) decides alike */
    assert_int_equal(sv_resources_admit(r, c, &cap, fits, false, -1, &err), 0);
    assert_int_equal(sv_resources_admit(r, c, &cap, big, false, -1, &err), -QV_ECAPACITY);
    assert_string_equal(err.msg, "not enough memory: VMs use 40.0 GiB, this one asks 9.0 GiB, the node allows "
                                 "48.0 GiB (48.0 GiB × memory_overcommit 1.0)");

    /* hugepages that are not free: refused at start, with the message */
    _cleanup_(sv_vmspec_freep) sv_vmspec *hp =
        spec("{\"name\":\"new\",\"image\":\"i\",\"memory\":\"3G\",\"hugepages\":\"1G\",\"numa\":\"0\"}");
    assert_int_equal(sv_resources_admit(r, c, NULL, hp, false, 0, &err), -QV_ECAPACITY);
    assert_string_equal(err.msg, "not enough free 1G hugepages on NUMA node 0: 0 of 2 pages are in use, this one "
                                 "asks 3 pages (3.0 GiB), 2 are free (2.0 GiB); hugepage-backed memory is never "
                                 "overcommitted");
    assert_int_equal(sv_resources_admit(r, c, NULL, hp, false, 1, &err), 0);
    sv_registry_free(r);
}

/* ---- pinning a real process: this test's own threads ---- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pid_t worker_tid;
static bool worker_done;

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    worker_tid = gettid();
    pthread_cond_broadcast(&cond);
    while (!worker_done)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void affinity_of(pid_t tid, char *buf, size_t size) {
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(tid, sizeof set, &set), 0);
    unsigned cpus[CPU_SETSIZE];
    size_t n = 0;
    for (unsigned i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set))
            cpus[n++] = i;
    assert_int_equal(qv_format_cpulist(cpus, n, buf, size), 0);
}

static void test_pin_threads(void **st) {
    (void)st;
    qv_sysroot_set(NULL); /* the real /proc */
    cpu_set_t before;
    assert_int_equal(sched_getaffinity(0, sizeof before, &before), 0);
    unsigned last = 0;
    for (unsigned i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &before))
            last = i;

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, worker, NULL), 0);
    pthread_mutex_lock(&lock);
    while (!worker_tid)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    /* the worker plays the vCPU, this thread the emulator */
    unsigned want = last;
    size_t emulator = 0;
    qv_error err = {0};
    if (sv_pin_threads(getpid(), &worker_tid, 1, &want, 1, &emulator, &err) < 0)
        fail_msg("%s", err.msg);
    assert_true(emulator >= 1); /* this thread, and any a sanitizer runs */
    char got[64], expect[16];
    snprintf(expect, sizeof expect, "%u", last);
    affinity_of(worker_tid, got, sizeof got);
    assert_string_equal(got, expect);
    affinity_of(gettid(), got, sizeof got);
    assert_string_equal(got, expect);

    /* a CPU the kernel refuses; a "vCPU" that is not one of the process's threads */
    unsigned none = QV_CPU_MAX - 1;
    assert_int_equal(sv_pin_threads(getpid(), &worker_tid, 1, &none, 1, NULL, &err), -EINVAL);
    char msg[128];
    snprintf(msg, sizeof msg, "cannot pin vCPU 0 (thread %d) to CPUs %u: Invalid argument", (int)worker_tid, none);
    assert_string_equal(err.msg, msg);
    pid_t stranger = 1;
    assert_int_equal(sv_pin_threads(getpid(), &stranger, 1, &want, 1, NULL, &err), -ESRCH);
    snprintf(msg, sizeof msg, "vCPU 0: thread 1 is not a thread of QEMU pid %d", (int)getpid());
    assert_string_equal(err.msg, msg);

    pthread_mutex_lock(&lock);
    worker_done = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    pthread_join(t, NULL);
    assert_int_equal(sched_setaffinity(0, sizeof before, &before), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_nothing_asked), T(test_numeric_node),        T(test_pin),
        T(test_auto),          T(test_auto_without_numa),   T(test_hugepages_whole_pages),
        T(test_admission_at_start), T(test_pin_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
