/* Admission, storage fit and NUMA placement on the two-node fake machine of
 * test/lib/faketopo.h, read through the sysfs root: 8 CPUs (4 per node),
 * 16 + 32 GiB, 1G hugepages 2 free on node 0 and 6 of 8 free on node 1, a
 * GPU on node 1.  Every limit is tried exactly at the limit (passes) and one
 * past it (refused, with the message). */
#include "testlib.h"

#include "cleanup.h"
#include "faketopo.h"
#include "supervisor/resources/admission.h"
#include "sysroot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GiB (1ull << 30)
#define MiB (1ull << 20)

static char *root;
static sv_capacity cap;
static sv_admission_policy pol;

static int setup(void **st) {
    (void)st;
    qv_faketopo_fixture_up("qv-admission", &root, &cap, &pol);
    return 0;
}

static int teardown(void **st) {
    (void)st;
    qv_faketopo_fixture_down(&root, &cap);
    return 0;
}

static sv_vm_usage vm(const char *name, uint64_t cpus, uint64_t memory) {
    return (sv_vm_usage){.name = name, .cpus = cpus, .memory = memory, .numa_node = -1};
}

static void pass(const sv_vm_usage *usage, size_t n, const sv_vm_usage *cand) {
    qv_error err = {0};
    int r = sv_admission_check(&cap, &pol, usage, n, cand, &err);
    if (r != 0)
        fail_msg("%s refused: %d %s", cand->name, r, err.msg);
}

static void refused(const sv_vm_usage *usage, size_t n, const sv_vm_usage *cand, const char *msg) {
    qv_error err = {0};
    int r = sv_admission_check(&cap, &pol, usage, n, cand, &err);
    if (r != -QV_ECAPACITY || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d '%s', want '%s'", cand->name, r, err.msg, msg);
    assert_int_equal(qv_exit_code_for_errno(r), 75);
}

static void test_cpus(void **st) {
    (void)st;
    /* 8 CPUs x 4.0 = 32 vCPUs */
    sv_vm_usage u[] = {vm("a", 16, GiB), vm("b", 12, GiB)};
    sv_vm_usage c = vm("c", 4, GiB);
    pass(u, 2, &c);
    c.cpus = 5;
    refused(u, 2, &c, "not enough CPUs: VMs use 28 vCPUs, this one asks 5, the node allows 32 "
                      "(8 CPUs × cpu_overcommit 4.0)");
    /* the candidate listed among the VMs (a start) is not counted twice */
    sv_vm_usage with_self[] = {vm("a", 16, GiB), vm("b", 12, GiB), vm("c", 4, GiB)};
    c.cpus = 4;
    pass(with_self, 3, &c);
    /* another ratio */
    pol.cpu_overcommit = 1.5;
    sv_vm_usage v[] = {vm("a", 10, GiB)};
    c.cpus = 2;
    pass(v, 1, &c);
    c.cpus = 3;
    refused(v, 1, &c, "not enough CPUs: VMs use 10 vCPUs, this one asks 3, the node allows 12 "
                      "(8 CPUs × cpu_overcommit 1.5)");
    /* nothing running: the node's own limit */
    c.cpus = 12;
    pass(NULL, 0, &c);
    c.cpus = 13;
    refused(NULL, 0, &c, "not enough CPUs: VMs use 0 vCPUs, this one asks 13, the node allows 12 "
                         "(8 CPUs × cpu_overcommit 1.5)");
}

static void test_memory(void **st) {
    (void)st;
    /* 48 GiB x 1.0 */
    sv_vm_usage u[] = {vm("a", 1, 24 * GiB), vm("b", 1, 16 * GiB)};
    sv_vm_usage c = vm("c", 1, 8 * GiB);
    pass(u, 2, &c);
    c.memory = 8 * GiB + MiB;
    refused(u, 2, &c, "not enough memory: VMs use 40.0 GiB, this one asks 8193.0 MiB, the node allows 48.0 GiB "
                      "(48.0 GiB × memory_overcommit 1.0)");
    c.memory = 9 * GiB;
    refused(u, 2, &c, "not enough memory: VMs use 40.0 GiB, this one asks 9.0 GiB, the node allows 48.0 GiB "
                      "(48.0 GiB × memory_overcommit 1.0)");
    /* overcommitted: 48 GiB x 1.5 = 72 GiB */
    pol.memory_overcommit = 1.5;
    c.memory = 32 * GiB;
    pass(u, 2, &c);
    c.memory = 32 * GiB + MiB;
    refused(u, 2, &c, "not enough memory: VMs use 40.0 GiB, this one asks 32769.0 MiB, the node allows 72.0 GiB "
                      "(48.0 GiB × memory_overcommit 1.5)");
}

/* Hugepage-backed RAM is taken from RAM one for one: only the rest is
 * overcommitted. */
static void test_memory_with_hugepages(void **st) {
    (void)st;
    pol.memory_overcommit = 1.5;
    sv_vm_usage huge = vm("huge", 1, 8 * GiB);
    huge.hugepage_size = GiB;
    sv_vm_usage u[] = {huge, vm("a", 1, 56 * GiB)};
    /* allowed: 8 + (48 - 8) x 1.5 = 68 GiB; used 64 */
    sv_vm_usage c = vm("c", 1, 4 * GiB);
    pass(u, 2, &c);
    c.memory = 5 * GiB;
    refused(u, 2, &c, "not enough memory: VMs use 64.0 GiB, this one asks 5.0 GiB, the node allows 68.0 GiB "
                      "(8.0 GiB hugepage-backed, never overcommitted, + the other 40.0 GiB × memory_overcommit 1.5)");

    /* a hugepage-backed candidate shrinks the base of the others:
     * 66 GiB used; with 4 GiB of hugepages: 4 + 44 x 1.5 = 70 = 66 + 4 */
    sv_vm_usage v[] = {vm("a", 1, 66 * GiB)};
    c.hugepage_size = GiB;
    c.memory = 4 * GiB;
    pass(v, 1, &c);
    /* with 5: 5 + 43 x 1.5 = 69.5 < 71, though 8 pages are free */
    c.memory = 5 * GiB;
    refused(v, 1, &c, "not enough memory: VMs use 66.0 GiB, this one asks 5.0 GiB, the node allows 69.5 GiB "
                      "(5.0 GiB hugepage-backed, never overcommitted, + the other 43.0 GiB × memory_overcommit 1.5)");
    /* the same candidate as ordinary memory would have fitted (72 GiB) */
    c.hugepage_size = 0;
    pass(v, 1, &c);
}

static void test_hugepages(void **st) {
    (void)st;
    /* 1G: 2 free on node 0, 6 free of 8 on node 1: 8 on the machine */
    sv_vm_usage c = vm("c", 1, 8 * GiB);
    c.hugepage_size = GiB;
    pass(NULL, 0, &c);
    c.memory = 9 * GiB;
    refused(NULL, 0, &c, "not enough free 1G hugepages: 2 of 10 pages are in use, this one asks 9 pages (9.0 GiB), "
                         "8 are free (8.0 GiB); hugepage-backed memory is never overcommitted");
    /* on node 1 */
    c.numa_node = 1;
    c.memory = 6 * GiB;
    pass(NULL, 0, &c);
    c.memory = 7 * GiB;
    refused(NULL, 0, &c, "not enough free 1G hugepages on NUMA node 1: 2 of 8 pages are in use, this one asks 7 "
                         "pages (7.0 GiB), 6 are free (6.0 GiB); hugepage-backed memory is never overcommitted");
    /* a part of a page takes a whole one */
    c.numa_node = 0;
    c.memory = 2 * GiB;
    pass(NULL, 0, &c);
    c.memory = 2 * GiB + MiB;
    refused(NULL, 0, &c, "not enough free 1G hugepages on NUMA node 0: 0 of 2 pages are in use, this one asks 3 "
                         "pages (2049.0 MiB), 2 are free (2.0 GiB); hugepage-backed memory is never overcommitted");
    /* 2M on node 0: 500 free */
    c.hugepage_size = 2 * MiB;
    c.memory = 1000 * MiB;
    pass(NULL, 0, &c);
    c.memory = 1002 * MiB;
    refused(NULL, 0, &c, "not enough free 2M hugepages on NUMA node 0: 12 of 512 pages are in use, this one asks 501 "
                         "pages (1002.0 MiB), 500 are free (1000.0 MiB); hugepage-backed memory is never overcommitted");
    /* a size the kernel has no pool of */
    c.hugepage_size = 16 * GiB;
    c.memory = 16 * GiB;
    refused(NULL, 0, &c, "no 16G hugepages on NUMA node 0: the kernel has no pool of that size (hugepagesz=16G)");
}

static void test_numa_node_limits(void **st) {
    (void)st;
    /* node 0: 4 CPUs x 4.0 = 16 vCPUs, 16 GiB; VMs not bound to it do not count */
    sv_vm_usage a = vm("a", 12, 12 * GiB), far = vm("far", 8, 8 * GiB);
    a.numa_node = 0;
    far.numa_node = 1;
    sv_vm_usage u[] = {a, far, vm("loose", 4, 4 * GiB)};
    sv_vm_usage c = vm("c", 4, 4 * GiB);
    c.numa_node = 0;
    pass(u, 3, &c);
    c.cpus = 5;
    refused(u, 3, &c, "not enough CPUs on NUMA node 0: VMs bound to it use 12 vCPUs, this one asks 5, NUMA node 0 "
                      "allows 16 (4 CPUs × cpu_overcommit 4.0)");
    c.cpus = 4;
    c.memory = 4 * GiB + MiB;
    refused(u, 3, &c, "not enough memory on NUMA node 0: VMs bound to it use 12.0 GiB, this one asks 4097.0 MiB, "
                      "NUMA node 0 allows 16.0 GiB (16.0 GiB × memory_overcommit 1.0)");
    /* the same VM fits on node 1 */
    c.numa_node = 1;
    pass(u, 3, &c);

    c.numa_node = 2;
    qv_error err = {0};
    assert_int_equal(sv_admission_check(&cap, &pol, u, 3, &c, &err), -EINVAL);
    assert_string_equal(err.msg, "there is no NUMA node 2 on this machine (nodes: 0, 1)");
}

static void test_pool_quotas(void **st) {
    (void)st;
    _cleanup_(sv_config_freep) sv_config *cfg = NULL;
    qv_error err = {0};
    const char *y = "resources:\n  cpu_overcommit: 2.0\n"
                    "pools:\n  batch:\n    cpus: 8\n    memory: 16G\n    gpus: 1\n  nogpu:\n    gpus: 0\n";
    assert_int_equal(sv_config_parse("t.yaml", y, strlen(y), &cfg, &err), 0);
    assert_int_equal(sv_admission_policy_init(&pol, cfg, "batch", &err), 0);
    assert_string_equal(pol.pool, "batch");
    assert_true(pol.cpu_overcommit == 2.0 && pol.memory_overcommit == 1.0);
    assert_true(pol.pool_cpus == 8 && pol.pool_memory == 16 * GiB && pol.pool_gpus == 1);

    sv_vm_usage b1 = vm("b1", 6, 12 * GiB), other = vm("other", 4, 8 * GiB);
    b1.pool = "batch";
    b1.gpus = 1;
    other.gpus = 3; /* pool "default": not batch's */
    sv_vm_usage u[] = {b1, other};
    sv_vm_usage c = vm("c", 2, 4 * GiB);
    c.pool = "batch";
    pass(u, 2, &c);
    c.cpus = 3;
    refused(u, 2, &c, "not enough vCPUs in pool 'batch': its VMs use 6, this one asks 3, the quota is 8 "
                      "(pools.batch.cpus)");
    c.cpus = 2;
    c.memory = 4 * GiB + MiB;
    refused(u, 2, &c, "not enough memory in pool 'batch': its VMs use 12.0 GiB, this one asks 4097.0 MiB, the quota is "
                      "16.0 GiB (pools.batch.memory)");
    c.memory = 4 * GiB;
    c.gpus = 1;
    refused(u, 2, &c, "not enough GPUs in pool 'batch': its VMs use 1, this one asks 1, the quota is 1 "
                      "(pools.batch.gpus)");
    /* b1 stopping frees its share */
    pass(&other, 1, &c);

    /* gpus: 0 forbids them; unset quotas do not limit */
    assert_int_equal(sv_admission_policy_init(&pol, cfg, "nogpu", &err), 0);
    c.pool = "nogpu";
    refused(u, 2, &c, "not enough GPUs in pool 'nogpu': its VMs use 0, this one asks 1, the quota is 0 "
                      "(pools.nogpu.gpus)");
    c.gpus = 0;
    c.cpus = 6;
    pass(u, 2, &c);

    /* the default pool: NULL and "" mean it */
    assert_int_equal(sv_admission_policy_init(&pol, cfg, NULL, &err), 0);
    assert_string_equal(pol.pool, "default");
    assert_true(pol.pool_cpus == SV_NO_QUOTA);
    c.pool = "";
    c.gpus = 5;
    pass(u, 2, &c);
    /* the node limit still holds (8 CPUs x 2.0 = 16) */
    c.cpus = 7;
    refused(u, 2, &c, "not enough CPUs: VMs use 10 vCPUs, this one asks 7, the node allows 16 "
                      "(8 CPUs × cpu_overcommit 2.0)");

    assert_int_equal(sv_admission_policy_init(&pol, cfg, "gone", &err), -ENOENT);
    assert_string_equal(err.msg, "no pool 'gone' in the node config");
}

static void test_usage_sum(void **st) {
    (void)st;
    sv_vm_usage a = vm("a", 2, 4 * GiB), b = vm("b", 4, 8 * GiB), c = vm("c", 1, GiB);
    a.pool = "batch";
    a.numa_node = 1;
    b.hugepage_size = GiB;
    b.numa_node = 1;
    b.gpus = 2;
    sv_vm_usage u[] = {a, b, c};
    sv_usage_total t;
    sv_usage_sum(u, 3, NULL, -1, &t);
    assert_true(t.vms == 3 && t.cpus == 7 && t.memory == 13 * GiB && t.hugepage_memory == 8 * GiB && t.gpus == 2);
    sv_usage_sum(u, 3, "default", -1, &t);
    assert_true(t.vms == 2 && t.cpus == 5);
    sv_usage_sum(u, 3, NULL, 1, &t);
    assert_true(t.vms == 2 && t.memory == 12 * GiB);
    sv_usage_sum(u, 3, "batch", 0, &t);
    assert_true(t.vms == 0 && t.cpus == 0);
}

static void test_storage_fit(void **st) {
    (void)st;
    /* 100 GiB free, the pool's disks hold 20 GiB and may grow to 100 GiB:
     * room for 120, so 20 more */
    sv_storage_usage p = {.pool = "fast", .free = 100 * GiB, .allocated = 100 * GiB, .used = 20 * GiB};
    qv_error err = {0};
    assert_int_equal(sv_storage_fit(&p, 20 * GiB, &err), SV_STORAGE_FITS);
    assert_int_equal(sv_storage_fit(&p, 20 * GiB + 1, &err), -QV_ECAPACITY);
    assert_string_equal(err.msg, "not enough space in storage pool 'fast': its disks may grow to 100.0 GiB, this one "
                                 "to 20.00 GiB, the pool has room for 120.0 GiB (100.0 GiB free + 20.0 GiB its disks "
                                 "hold); thin overcommit is off for this pool (storage_pools.fast.thin_overcommit)");
    assert_int_equal(qv_exit_code_for_errno(-QV_ECAPACITY), 75);
    /* what the disks hold unknown: stricter */
    p.used = 0;
    assert_int_equal(sv_storage_fit(&p, 1, &err), -QV_ECAPACITY);
    p.allocated = 0;
    assert_int_equal(sv_storage_fit(&p, 100 * GiB, &err), SV_STORAGE_FITS);
    assert_int_equal(sv_storage_fit(&p, 100 * GiB + 1, &err), -QV_ECAPACITY);
    /* thin overcommit lets it through, and says so */
    p.thin_overcommit = true;
    assert_int_equal(sv_storage_fit(&p, 100 * GiB, &err), SV_STORAGE_FITS);
    assert_int_equal(sv_storage_fit(&p, 10 * 1024 * GiB, &err), SV_STORAGE_THIN);
}

static int place(const sv_vm_usage *usage, size_t n, const sv_vm_usage *cand, const int *gpus, size_t n_gpus) {
    qv_error err = {0};
    int r = sv_placement_choose(&cap, &pol, usage, n, cand, gpus, n_gpus, &err);
    if (r < 0)
        fail_msg("%s: %d %s", cand->name, r, err.msg);
    return r;
}

static void test_placement(void **st) {
    (void)st;
    /* empty machine: node 1 has more memory */
    sv_vm_usage c = vm("c", 4, 4 * GiB);
    assert_int_equal(place(NULL, 0, &c, NULL, 0), 1);

    /* node 1 loaded with 24 of its 32 GiB: node 0 has more left (16 > 8) */
    sv_vm_usage big = vm("big", 2, 24 * GiB);
    big.numa_node = 1;
    sv_vm_usage u[] = {big, vm("loose", 2, 30 * GiB)}; /* unbound: charged to no node */
    assert_int_equal(place(u, 2, &c, NULL, 0), 0);
    /* ... but a GPU on node 1 wins, as long as the VM fits there */
    int gpu_nodes[] = {cap.gpus[0].numa_node};
    assert_int_equal(gpu_nodes[0], 1);
    assert_int_equal(place(u, 2, &c, gpu_nodes, 1), 1);
    c.memory = 8 * GiB;
    assert_int_equal(place(u, 2, &c, gpu_nodes, 1), 1); /* exactly at node 1's limit */
    c.memory = 8 * GiB + MiB;
    assert_int_equal(place(u, 2, &c, gpu_nodes, 1), 0); /* one more: node 0 */
    /* GPUs of unknown node are no preference; most GPUs wins */
    c.memory = 4 * GiB;
    int unknown[] = {-1, -1};
    assert_int_equal(place(u, 2, &c, unknown, 2), 0);
    int split[] = {0, 1, 1};
    assert_int_equal(place(u, 2, &c, split, 3), 1);

    /* the vCPUs must fit too: node 0 allows 16 */
    c.cpus = 17;
    c.memory = GiB;
    assert_int_equal(sv_placement_choose(&cap, &pol, NULL, 0, &c, NULL, 0, NULL), -QV_ECAPACITY);
    c.cpus = 16;
    assert_int_equal(place(NULL, 0, &c, NULL, 0), 1);

    /* equal memory left: more vCPUs left, then the lower id */
    sv_vm_usage m1 = vm("m1", 8, 16 * GiB);
    m1.numa_node = 1;
    sv_vm_usage eq[] = {m1};
    c.cpus = 1;
    assert_int_equal(place(eq, 1, &c, NULL, 0), 0);
    sv_vm_usage m0 = vm("m0", 8, 0);
    m0.numa_node = 0;
    sv_vm_usage tie[] = {m1, m0};
    assert_int_equal(place(tie, 2, &c, NULL, 0), 0);
}

static void test_placement_hugepages(void **st) {
    (void)st;
    /* 1G pages: 2 free on node 0, 6 on node 1 */
    sv_vm_usage c = vm("c", 2, 2 * GiB);
    c.hugepage_size = GiB;
    assert_int_equal(place(NULL, 0, &c, NULL, 0), 1);
    /* with the GPU on node 0 it goes there while the pages last */
    int gpu0[] = {0};
    assert_int_equal(place(NULL, 0, &c, gpu0, 1), 0);
    c.memory = 3 * GiB;
    assert_int_equal(place(NULL, 0, &c, gpu0, 1), 1);
    c.memory = 6 * GiB;
    assert_int_equal(place(NULL, 0, &c, NULL, 0), 1);
    c.memory = 7 * GiB;
    qv_error err = {0};
    assert_int_equal(sv_placement_choose(&cap, &pol, NULL, 0, &c, NULL, 0, &err), -QV_ECAPACITY);
    assert_string_equal(err.msg,
                        "no NUMA node can take this VM (2 vCPUs, 7.0 GiB); "
                        "not enough free 1G hugepages on NUMA node 0: 0 of 2 pages are in use, this one asks 7 pages "
                        "(7.0 GiB), 2 are free (2.0 GiB); hugepage-backed memory is never overcommitted; "
                        "not enough free 1G hugepages on NUMA node 1: 2 of 8 pages are in use, this one asks 7 pages "
                        "(7.0 GiB), 6 are free (6.0 GiB); hugepage-backed memory is never overcommitted");
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_cpus),
        T(test_memory),
        T(test_memory_with_hugepages),
        T(test_hugepages),
        T(test_numa_node_limits),
        T(test_pool_quotas),
        T(test_usage_sum),
        T(test_storage_fit),
        T(test_placement),
        T(test_placement_hugepages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
