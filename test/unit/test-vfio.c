/* vfio/: addresses, records, the device plan of a VM, threaded jobs with a
 * deadline.  Binding against a kernel-like sysfs is in test/fakesysfs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "testlib.h"
#include "vfio/bind.h"
#include "vfio/job.h"

static void test_bdf_and_class(void **state) {
    (void)state;
    char b[VFIO_BDF_MAX];
    assert_int_equal(vfio_bdf_normalize("01:00.0", b), 0);
    assert_string_equal(b, "0000:01:00.0");
    assert_int_equal(vfio_bdf_normalize("0000:0A:1f.7", b), 0);
    assert_string_equal(b, "0000:0a:1f.7");
    const char *bad[] = {"", "1:00.0", "0000:01:00.8", "0000:01:20.0", "0000:01:00-0", "g000:01:00.0",
                         "0000:01:00.0x", "../../etc", NULL};
    for (const char **p = bad; *p; p++)
        assert_int_equal(vfio_bdf_normalize(*p, b), -EINVAL);
    assert_true(vfio_class_is_display(0x030000));
    assert_true(vfio_class_is_display(0x030200));
    assert_false(vfio_class_is_display(0x040300));
    assert_string_equal(vfio_class_name(0x030200), "3D controller");
    assert_string_equal(vfio_class_name(0x040300), "Audio device");
    assert_string_equal(vfio_class_name(0x060400), "PCI bridge");
    assert_string_equal(vfio_class_name(0x0b4000), "PCI device");
}

static void test_gpu_options(void **state) {
    (void)state;
    vfio_gpu_opt o;
    qv_error err = {0};
    assert_int_equal(vfio_gpu_opt_parse("01:00.0,keep,take-group", &o, &err), 0);
    assert_string_equal(o.bdf, "0000:01:00.0");
    assert_true(o.keep && o.take_group);
    assert_int_equal(vfio_gpu_opt_parse("0000:01:00.0", &o, &err), 0);
    assert_false(o.keep || o.take_group);
    assert_int_equal(vfio_gpu_opt_parse("0000:01:00.0,fast", &o, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "unknown option 'fast'"));
    assert_int_equal(vfio_gpu_opt_parse("gpu0", &o, &err), -EINVAL);
}

static void test_records(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("qv-vfio-rec");
    char sub[512];
    snprintf(sub, sizeof sub, "%s/vfio", dir); /* created on the first save */
    vfio_record *list = NULL;
    size_t n = 9;
    assert_int_equal(vfio_record_list(sub, &list, &n), 0);
    assert_int_equal(n, 0);
    vfio_record a = {.bdf = "0000:02:00.0", .vm = "ml", .driver = "amdgpu", .state = VFIO_REC_BOUND};
    vfio_record b = {.bdf = "0000:01:00.1", .vm = "ml", .driver = "", .keep = true, .state = VFIO_REC_STUCK,
                     .reason = "unbind hung"};
    assert_int_equal(vfio_record_save(sub, &a), 0);
    assert_int_equal(vfio_record_save(sub, &b), 0);
    vfio_record r;
    assert_int_equal(vfio_record_load(sub, "0000:01:00.1", &r), 0);
    assert_string_equal(r.driver, "");
    assert_true(r.keep);
    assert_int_equal(r.state, VFIO_REC_STUCK);
    assert_string_equal(r.reason, "unbind hung");
    assert_int_equal(vfio_record_list(sub, &list, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].bdf, "0000:01:00.1"); /* sorted */
    assert_string_equal(list[1].driver, "amdgpu");
    free(list);
    /* names that are not addresses never become paths */
    vfio_record evil = {.bdf = "../x", .vm = "ml"};
    assert_int_equal(vfio_record_save(sub, &evil), -EINVAL);
    assert_int_equal(vfio_record_load(sub, "../../etc/passwd", &r), -EINVAL);
    /* a damaged file is an error for load and skipped by list */
    qv_test_write(sub, "0000:03:00.0.json", "{\"bdf\": \"0000:03:00.0\", \"state\": \"melted\"}");
    assert_int_equal(vfio_record_load(sub, "0000:03:00.0", &r), -EBADMSG);
    assert_int_equal(vfio_record_list(sub, &list, &n), 0);
    assert_int_equal(n, 2);
    free(list);
    assert_int_equal(vfio_record_remove(sub, "0000:02:00.0"), 0);
    assert_int_equal(vfio_record_remove(sub, "0000:02:00.0"), 0);
    assert_int_equal(vfio_record_load(sub, "0000:02:00.0", &r), -ENOENT);
    qv_test_rm_rf(dir);
    free(dir);
}

/* ---- the plan, on hand-made topologies ---------------------------------- */

static vfio_pci_dev dev(const char *bdf, unsigned cls, const char *driver, int group) {
    vfio_pci_dev d;
    memset(&d, 0, sizeof d);
    snprintf(d.bdf, sizeof d.bdf, "%s", bdf);
    d.class_code = cls;
    snprintf(d.driver, sizeof d.driver, "%s", driver);
    d.iommu_group = group;
    d.numa_node = -1;
    d.bridge = (cls >> 16) == 0x06;
    return d;
}

/* GPU 01:00.0 + audio .1 in group 1 behind a bridge of group 1 too; GPU
 * 02:00.0 sharing group 2 with NIC 03:00.0; GPU 04:00.0 without a group;
 * GPU 05:00.0 in group 5 with an unbound device 06:00.0. */
typedef struct topo {
    vfio_pci_dev g1[3], c1[1], g2[2], g4[1], g5[2];
    vfio_gpu gpus[4];
    vfio_gpu_list l;
} topo;

static void topo_init(topo *t) {
    t->g1[0] = dev("0000:00:01.0", 0x060400, "pcieport", 1);
    t->g1[1] = dev("0000:01:00.0", 0x030000, "nouveau", 1);
    t->g1[2] = dev("0000:01:00.1", 0x040300, "snd_hda_intel", 1);
    t->c1[0] = t->g1[2];
    t->g2[0] = dev("0000:02:00.0", 0x030200, "amdgpu", 2);
    t->g2[1] = dev("0000:03:00.0", 0x020000, "e1000e", 2);
    t->g4[0] = dev("0000:04:00.0", 0x030000, "ast", -1);
    t->g5[0] = dev("0000:05:00.0", 0x030000, "vfio-pci", 5);
    t->g5[1] = dev("0000:06:00.0", 0x0c0330, "", 5);
    t->gpus[0] = (vfio_gpu){.dev = t->g1[1], .index = 0, .companions = t->c1, .n_companions = 1,
                            .group = t->g1, .n_group = 3};
    t->gpus[1] = (vfio_gpu){.dev = t->g2[0], .index = 1, .group = t->g2, .n_group = 2};
    t->gpus[2] = (vfio_gpu){.dev = t->g4[0], .index = 2, .group = t->g4, .n_group = 1};
    t->gpus[3] = (vfio_gpu){.dev = t->g5[0], .index = 3, .group = t->g5, .n_group = 2};
    t->l = (vfio_gpu_list){.gpus = t->gpus, .n = 4};
}

#define S(x) ((char[]){x}) /* a writable string, as spec lists are */

/* vfio_plan_make() of GPUs in their text form, parsed as a spec's are */
static int plan(const vfio_gpu_list *l, char *const *gpus, vfio_plan *ret, qv_error *err) {
    vfio_gpu_opt o[4];
    size_t n = 0;
    for (; gpus[n]; n++)
        assert_int_equal(vfio_gpu_opt_parse(gpus[n], &o[n], NULL), 0);
    return vfio_plan_make(l, o, n, ret, err);
}

static void test_plan(void **state) {
    (void)state;
    topo t;
    topo_init(&t);
    vfio_plan p = {0};
    qv_error err = {0};

    char *one[] = {S("0000:01:00.0,keep"), NULL};
    assert_int_equal(plan(&t.l, one, &p, &err), 0);
    assert_int_equal(p.n, 2); /* the GPU and its audio; the bridge stays */
    assert_string_equal(p.devs[0].bdf, "0000:01:00.0");
    assert_true(p.devs[0].pass && p.devs[0].keep);
    assert_int_equal(p.devs[1].function, 1);
    assert_true(p.devs[1].pass);
    assert_string_equal(p.devs[1].driver, "snd_hda_intel");
    assert_false(vfio_plan_has(&p, "0000:00:01.0"));
    vfio_plan_clear(&p);

    char *shared[] = {S("0000:02:00.0"), NULL};
    assert_int_equal(plan(&t.l, shared, &p, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "0000:03:00.0 (Ethernet controller, driver e1000e)"));
    assert_non_null(strstr(err.msg, "take-group"));
    char *taken[] = {S("0000:02:00.0,take-group"), NULL};
    assert_int_equal(plan(&t.l, taken, &p, &err), 0);
    assert_int_equal(p.n, 2);
    assert_false(p.devs[1].pass); /* held on vfio-pci, not given to the guest */
    vfio_plan_clear(&p);

    char *nogroup[] = {S("0000:04:00.0"), NULL};
    assert_int_equal(plan(&t.l, nogroup, &p, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "no IOMMU group"));

    /* unbound group members need no permission */
    char *free_member[] = {S("0000:05:00.0"), NULL};
    assert_int_equal(plan(&t.l, free_member, &p, &err), 0);
    assert_int_equal(p.n, 2);
    vfio_plan_clear(&p);

    char *twice[] = {S("0000:01:00.0"), S("0000:01:00.0"), NULL};
    assert_int_equal(plan(&t.l, twice, &p, &err), -EINVAL);
    char *two[] = {S("0000:01:00.0"), S("0000:05:00.0"), NULL};
    assert_int_equal(plan(&t.l, two, &p, &err), 0);
    assert_int_equal(p.n, 4);
    assert_int_equal(p.devs[2].gpu, 1);
    vfio_plan_clear(&p);
    char *absent[] = {S("0000:09:00.0"), NULL};
    assert_int_equal(plan(&t.l, absent, &p, &err), -ENODEV);
}

static void test_spec_resolve(void **state) {
    (void)state;
    topo t;
    topo_init(&t);
    char *s = NULL;
    qv_error err = {0};
    assert_int_equal(vfio_gpu_spec_resolve(&t.l, "1,take-group,keep", &s, &err), 0);
    assert_string_equal(s, "0000:02:00.0,keep,take-group");
    free(s);
    assert_int_equal(vfio_gpu_spec_resolve(&t.l, "01:00.0", &s, &err), 0);
    assert_string_equal(s, "0000:01:00.0");
    free(s);
    assert_int_equal(vfio_gpu_spec_resolve(&t.l, "7", &s, &err), -ENODEV);
    assert_non_null(strstr(err.msg, "4 found"));
}

/* ---- jobs ---------------------------------------------------------------- */

typedef struct blocker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool release;
    atomic_int freed;
} blocker;

static blocker blk = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};

static int blocking_work(vfio_ctx *ctx, void *arg, qv_error *err) {
    (void)arg;
    ctx->step(ctx->userdata, "0000:01:00.0: writing '0000:01:00.0' to /sys/bus/pci/drivers/nouveau/unbind");
    pthread_mutex_lock(&blk.lock);
    while (!blk.release)
        pthread_cond_wait(&blk.cond, &blk.lock);
    pthread_mutex_unlock(&blk.lock);
    return ctx->abandoned(ctx->userdata) ? qv_error_set(err, ECANCELED, "abandoned") : 0;
}

static int quick_work(vfio_ctx *ctx, void *arg, qv_error *err) {
    (void)ctx;
    return *(int *)arg ? qv_error_set(err, EIO, "it broke") : 0;
}

static void arg_free(void *arg) {
    free(arg);
    atomic_fetch_add(&blk.freed, 1);
}

typedef struct result {
    int calls;
    int status;
    qv_error err;
} result;

static void done(int status, const qv_error *err, void *userdata) {
    result *r = userdata;
    r->calls++;
    r->status = status;
    r->err = *err;
}

static void test_job_result_and_error(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    result ok = {0}, bad = {0};
    int *zero = calloc(1, sizeof *zero), *one = calloc(1, sizeof *one);
    *one = 1;
    atomic_store(&blk.freed, 0);
    assert_int_equal(vfio_job_start(&loop, qv_test_timeout_ms(10000), quick_work, zero, arg_free, done, &ok), 0);
    assert_int_equal(vfio_job_start(&loop, qv_test_timeout_ms(10000), quick_work, one, arg_free, done, &bad), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(ok.calls, 1);
    assert_int_equal(ok.status, 0);
    assert_int_equal(bad.calls, 1);
    assert_int_equal(bad.status, -EIO);
    assert_string_equal(bad.err.msg, "it broke");
    assert_int_equal(atomic_load(&blk.freed), 2);
    assert_int_equal(uv_loop_close(&loop), 0); /* no handle left */
}

static void test_job_that_hangs_times_out(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    result r = {0};
    atomic_store(&blk.freed, 0);
    blk.release = false;
    assert_int_equal(vfio_job_start(&loop, 200, blocking_work, malloc(1), arg_free, done, &r), 0);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns: the loop does not wait for the thread */
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, -ETIMEDOUT);
    assert_non_null(strstr(r.err.msg, "drivers/nouveau/unbind"));
    assert_non_null(strstr(r.err.msg, "stuck"));
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(atomic_load(&blk.freed), 0); /* the thread still has it */
    /* the write comes back one day: the thread cleans up after itself */
    pthread_mutex_lock(&blk.lock);
    blk.release = true;
    pthread_cond_broadcast(&blk.cond);
    pthread_mutex_unlock(&blk.lock);
    for (int i = 0; i < 500 && atomic_load(&blk.freed) == 0; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&blk.freed), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bdf_and_class),
        cmocka_unit_test(test_gpu_options),
        cmocka_unit_test(test_records),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_spec_resolve),
        cmocka_unit_test(test_job_result_and_error),
        cmocka_unit_test(test_job_that_hangs_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
