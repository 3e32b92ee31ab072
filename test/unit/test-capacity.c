/* Node capacity against fake /sys and /proc trees in a temp dir (the sysfs
 * root): two NUMA nodes of one package each (2 packages x 2 cores x 2
 * threads), 2M and 1G hugepages with different counts per node, an SR-IOV
 * NIC and one of its VFs on node 1, a NIC whose node is unknown, virtual
 * interfaces that are left out, GPUs added by the caller; and a machine
 * without NUMA. */
#include "testlib.h"

#include "cleanup.h"
#include "faketopo.h"
#include "host/capacity.h"
#include "sysroot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GiB (1ull << 30)
#define MiB (1ull << 20)

static char *root;

static int setup(void **st) {
    (void)st;
    root = qv_test_mkdtemp("qv-capacity");
    unsetenv("QVISOR_SYSROOT");
    assert_int_equal(qv_sysroot_set(root), 0);
    return 0;
}

static int teardown(void **st) {
    (void)st;
    qv_sysroot_set(NULL);
    qv_test_rm_rf(root);
    free(root);
    return 0;
}

static void w(const char *rel, const char *content) {
    qv_test_write(root, rel, content);
}

static void mkd(const char *rel) {
    qv_faketopo_mkdir(root, rel);
}

static void topology(unsigned cpu, int package, int core) {
    qv_faketopo_cpu_topology(root, cpu, package, core);
}

static void hugepages(const char *dir, unsigned kb, unsigned total, unsigned free_pages) {
    qv_faketopo_hugepages(root, dir, kb, total, free_pages);
}

static void pci_nic(const char *ifname, const char *bdf, const char *numa) {
    qv_faketopo_pci_nic(root, ifname, bdf, numa);
}

static void virtual_nic(const char *ifname) {
    qv_faketopo_virtual_nic(root, ifname);
}

/* The two-node machine of the file comment (test/lib/faketopo.h). */
static void two_node_tree(void) {
    qv_faketopo_two_nodes(root);
}

static void test_two_nodes(void **st) {
    (void)st;
    two_node_tree();
    sv_capacity c;
    qv_error err = {0};
    if (sv_capacity_read(&c, &err) < 0)
        fail_msg("%s", err.msg);
    assert_true(c.numa);
    assert_int_equal(c.n_nodes, 2);
    assert_int_equal(c.n_cpus, 8);
    assert_int_equal(c.n_cores, 4);
    assert_true(c.mem_total == 48 * GiB);
    assert_true(c.mem_free == 30 * GiB);

    const sv_numa_node *n0 = sv_capacity_node(&c, 0), *n1 = sv_capacity_node(&c, 1);
    assert_non_null(n0);
    assert_non_null(n1);
    assert_null(sv_capacity_node(&c, 2));
    assert_int_equal(n0->n_cpus, 4);
    const unsigned want0[] = {0, 1, 4, 5};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(n0->cpus[i], want0[i]);
    /* core ids repeat across packages: (package, core) tells them apart */
    assert_int_equal(n0->n_cores, 2);
    assert_int_equal(n1->n_cores, 2);
    assert_true(n0->mem_total == 16 * GiB);
    assert_true(n0->mem_free == 10 * GiB);
    assert_true(n1->mem_total == 32 * GiB);

    assert_int_equal(n0->n_hugepages, 2);
    assert_true(n0->hugepages[0].page_size == 2 * MiB);
    assert_true(n0->hugepages[0].total == 512 && n0->hugepages[0].free == 500);
    assert_true(n0->hugepages[1].page_size == GiB);
    assert_true(n0->hugepages[1].total == 2 && n0->hugepages[1].free == 2);
    sv_hugepages h;
    assert_int_equal(sv_capacity_hugepages(&c, 1, GiB, &h), 0);
    assert_true(h.total == 8 && h.free == 6);
    assert_int_equal(sv_capacity_hugepages(&c, -1, GiB, &h), 0);
    assert_true(h.total == 10 && h.free == 8);
    assert_int_equal(sv_capacity_hugepages(&c, -1, 2 * MiB, &h), 0);
    assert_true(h.total == 1536 && h.free == 1524);
    assert_int_equal(sv_capacity_hugepages(&c, -1, 16 * GiB, &h), -ENOENT);
    assert_true(h.total == 0 && h.free == 0);
    assert_int_equal(sv_capacity_hugepages(&c, 3, GiB, &h), -ENOENT);

    /* physical NICs only, sorted by name */
    assert_int_equal(c.n_nics, 3);
    const sv_nic *eno1 = &c.nics[0], *pf = &c.nics[1], *vf = &c.nics[2];
    assert_string_equal(eno1->name, "eno1");
    assert_string_equal(eno1->device, "0000:00:1f.6");
    assert_int_equal(eno1->numa_node, -1); /* two nodes: unknown stays unknown */
    assert_false(eno1->sriov);
    assert_string_equal(pf->name, "enp59s0f0");
    assert_string_equal(pf->device, "0000:3b:00.0");
    assert_int_equal(pf->numa_node, 1);
    assert_true(pf->sriov);
    assert_int_equal(pf->sriov_totalvfs, 8);
    assert_int_equal(pf->sriov_numvfs, 2);
    assert_false(pf->virtfn);
    assert_string_equal(vf->name, "enp59s0f0v0");
    assert_true(vf->virtfn);
    assert_false(vf->sriov);
    assert_int_equal(vf->numa_node, 1);

    /* GPUs come from the caller */
    assert_int_equal(c.n_gpus, 0);
    assert_int_equal(sv_capacity_add_gpu(&c, "0000:41:00.0", "NVIDIA Corporation GA102GL [A10]", 1), 0);
    assert_int_equal(sv_capacity_add_gpu(&c, "0000:42:00.0", NULL, -1), 0);
    assert_int_equal(sv_capacity_add_gpu(&c, "0000:43:00.0", "", 7), 0); /* no node 7 */
    assert_int_equal(c.n_gpus, 3);
    assert_int_equal(c.gpus[0].numa_node, 1);
    assert_int_equal(c.gpus[1].numa_node, -1);
    assert_string_equal(c.gpus[1].model, "");
    assert_int_equal(c.gpus[2].numa_node, -1);

    sv_capacity_clear(&c);
    assert_null(c.nodes);
    assert_int_equal(c.n_nodes, 0);
    sv_capacity_clear(&c); /* twice is fine */
}

static void test_gpus_from_vfio(void **st) {
    (void)st;
    two_node_tree();
    sv_capacity c;
    qv_error err = {0};
    assert_int_equal(sv_capacity_read(&c, &err), 0);
    vfio_gpu gpus[2] = {0};
    snprintf(gpus[0].dev.bdf, sizeof gpus[0].dev.bdf, "0000:41:00.0");
    snprintf(gpus[0].dev.vendor_name, sizeof gpus[0].dev.vendor_name, "NVIDIA Corporation");
    snprintf(gpus[0].dev.device_name, sizeof gpus[0].dev.device_name, "GA102GL [A10]");
    gpus[0].dev.numa_node = 1;
    snprintf(gpus[1].dev.bdf, sizeof gpus[1].dev.bdf, "0000:81:00.0");
    gpus[1].dev.numa_node = -1;
    vfio_gpu_list l = {gpus, 2};
    assert_int_equal(sv_capacity_add_gpus(&c, &l), 0);
    assert_int_equal(c.n_gpus, 2);
    assert_string_equal(c.gpus[0].device, "0000:41:00.0");
    assert_string_equal(c.gpus[0].model, "NVIDIA Corporation GA102GL [A10]");
    assert_int_equal(c.gpus[0].numa_node, 1);
    assert_string_equal(c.gpus[1].model, "");
    assert_int_equal(c.gpus[1].numa_node, -1);
    sv_capacity_clear(&c);
}

/* What a start reads: the nodes as sv_capacity_read() has them, without
 * the NICs and the per-CPU core topology it does not use. */
static void test_parts_for_a_start(void **st) {
    (void)st;
    two_node_tree();
    sv_capacity all, part;
    qv_error err = {0};
    assert_int_equal(sv_capacity_read(&all, &err), 0);
    assert_int_equal(sv_capacity_read_parts(&part, 0, &err), 0);
    assert_true(all.n_nics > 0 && all.n_cores > 0);
    assert_int_equal(part.n_nics, 0);
    assert_int_equal(part.n_cores, 0);
    assert_int_equal(part.n_nodes, all.n_nodes);
    assert_int_equal(part.n_cpus, all.n_cpus);
    assert_true(part.mem_total == all.mem_total && part.mem_free == all.mem_free);
    for (size_t i = 0; i < all.n_nodes; i++) {
        assert_int_equal(part.nodes[i].id, all.nodes[i].id);
        assert_int_equal(part.nodes[i].n_cpus, all.nodes[i].n_cpus);
        assert_memory_equal(part.nodes[i].cpus, all.nodes[i].cpus, all.nodes[i].n_cpus * sizeof(unsigned));
        assert_int_equal(part.nodes[i].n_hugepages, all.nodes[i].n_hugepages);
        assert_memory_equal(part.nodes[i].hugepages, all.nodes[i].hugepages,
                            all.nodes[i].n_hugepages * sizeof(sv_hugepages));
    }
    sv_capacity_clear(&part);
    assert_int_equal(sv_capacity_read_parts(&part, SV_CAP_NICS, &err), 0);
    assert_int_equal(part.n_nics, all.n_nics);
    assert_int_equal(part.n_cores, 0);
    sv_capacity_clear(&part);
    sv_capacity_clear(&all);
}

static void test_json(void **st) {
    (void)st;
    two_node_tree();
    sv_capacity c;
    qv_error err = {0};
    assert_int_equal(sv_capacity_read(&c, &err), 0);
    assert_int_equal(sv_capacity_add_gpu(&c, "0000:41:00.0", "A10", 1), 0);
    json_t *j = sv_capacity_to_json(&c);
    assert_non_null(j);
    char *text = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    /* the whole document: the keys are an interface (capacity.h) */
    const char *want =
        "{\"cores\":4,\"cpus\":8,"
        "\"gpus\":[{\"device\":\"0000:41:00.0\",\"model\":\"A10\",\"numa_node\":1}],"
        "\"hugepages\":[{\"free\":1524,\"page_size\":2097152,\"total\":1536},"
        "{\"free\":8,\"page_size\":1073741824,\"total\":10}],"
        "\"memory_free\":32212254720,\"memory_total\":51539607552,"
        "\"nics\":[{\"device\":\"0000:00:1f.6\",\"name\":\"eno1\",\"numa_node\":null,\"sriov\":null,\"virtfn\":false},"
        "{\"device\":\"0000:3b:00.0\",\"name\":\"enp59s0f0\",\"numa_node\":1,"
        "\"sriov\":{\"num_vfs\":2,\"total_vfs\":8},\"virtfn\":false},"
        "{\"device\":\"0000:3b:02.0\",\"name\":\"enp59s0f0v0\",\"numa_node\":1,\"sriov\":null,\"virtfn\":true}],"
        "\"nodes\":[{\"cores\":2,\"cpulist\":\"0-1,4-5\",\"cpus\":4,"
        "\"hugepages\":[{\"free\":500,\"page_size\":2097152,\"total\":512},"
        "{\"free\":2,\"page_size\":1073741824,\"total\":2}],"
        "\"id\":0,\"memory_free\":10737418240,\"memory_total\":17179869184},"
        "{\"cores\":2,\"cpulist\":\"2-3,6-7\",\"cpus\":4,"
        "\"hugepages\":[{\"free\":1024,\"page_size\":2097152,\"total\":1024},"
        "{\"free\":6,\"page_size\":1073741824,\"total\":8}],"
        "\"id\":1,\"memory_free\":21474836480,\"memory_total\":34359738368}],"
        "\"numa\":true}";
    assert_string_equal(text, want);
    free(text);
    json_decref(j);
    sv_capacity_clear(&c);
}

/* No sys/devices/system/node: one node 0 from the machine-wide files. */
static void test_no_numa(void **st) {
    (void)st;
    w("sys/devices/system/cpu/online", "0-3\n");
    /* two cores with two threads each; cpu3 has no topology: its own core */
    topology(0, 0, 0);
    topology(1, 0, 1);
    topology(2, 0, 0);
    mkd("sys/devices/system/cpu/cpu3");
    w("proc/meminfo", "MemTotal:        8388608 kB\n"
                      "MemFree:         4194304 kB\n"
                      "MemAvailable:    6291456 kB\n"
                      "HugePages_Total:      64\n"
                      "Hugepagesize:       2048 kB\n");
    hugepages("sys/kernel/mm/hugepages", 2048, 64, 60);
    mkd("sys/kernel/mm/hugepages/not-a-pool");
    pci_nic("eth0", "0000:00:03.0", "-1\n");
    pci_nic("eth1", "0000:00:04.0", NULL); /* no numa_node file at all */
    virtual_nic("lo");

    sv_capacity c;
    qv_error err = {0};
    if (sv_capacity_read(&c, &err) < 0)
        fail_msg("%s", err.msg);
    assert_false(c.numa);
    assert_int_equal(c.n_nodes, 1);
    assert_int_equal(c.nodes[0].id, 0);
    assert_int_equal(c.n_cpus, 4);
    assert_int_equal(c.n_cores, 3);
    assert_int_equal(c.nodes[0].n_cores, 3);
    assert_true(c.mem_total == 8 * GiB);
    assert_true(c.mem_free == 4 * GiB);
    assert_int_equal(c.nodes[0].n_hugepages, 1);
    assert_true(c.nodes[0].hugepages[0].page_size == 2 * MiB);
    assert_true(c.nodes[0].hugepages[0].total == 64 && c.nodes[0].hugepages[0].free == 60);
    /* one node: a device with no node can only be on it */
    assert_int_equal(c.n_nics, 2);
    assert_int_equal(c.nics[0].numa_node, 0);
    assert_int_equal(c.nics[1].numa_node, 0);
    assert_int_equal(sv_capacity_add_gpu(&c, "0000:00:05.0", "", -1), 0);
    assert_int_equal(c.gpus[0].numa_node, 0);
    json_t *j = sv_capacity_to_json(&c);
    assert_true(json_is_false(json_object_get(j, "numa")));
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(j, "nodes"), 0), "cpulist")),
                        "0-3");
    json_decref(j);
    sv_capacity_clear(&c);
}

/* One NUMA node whose meminfo lags the machine's (lazily initialised memory,
 * as on this project's microVM test machines): the machine's count wins. */
static void test_one_node_lagging_meminfo(void **st) {
    (void)st;
    w("sys/devices/system/cpu/online", "0-1\n");
    w("sys/devices/system/node/node0/cpulist", "0-1\n");
    w("sys/devices/system/node/node0/meminfo", "Node 0 MemTotal:        6291456 kB\n"
                                              "Node 0 MemFree:         5242880 kB\n");
    w("proc/meminfo", "MemTotal:       25165824 kB\nMemFree:        24117248 kB\n");
    sv_capacity c;
    qv_error err = {0};
    if (sv_capacity_read(&c, &err) < 0)
        fail_msg("%s", err.msg);
    assert_true(c.numa);
    assert_int_equal(c.n_nodes, 1);
    assert_true(c.nodes[0].mem_total == 24 * GiB);
    assert_true(c.mem_total == 24 * GiB);
    assert_true(c.mem_free == 23 * GiB);
    sv_capacity_clear(&c);
}

/* A memory-only node (CXL, or CPUs offline): no CPUs, still memory. */
static void test_cpuless_node(void **st) {
    (void)st;
    two_node_tree();
    w("sys/devices/system/node/node2/cpulist", "\n");
    w("sys/devices/system/node/node2/meminfo", "Node 2 MemTotal: 1048576 kB\nNode 2 MemFree: 1048576 kB\n");
    sv_capacity c;
    qv_error err = {0};
    if (sv_capacity_read(&c, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(c.n_nodes, 3);
    assert_int_equal(c.nodes[2].id, 2);
    assert_int_equal(c.nodes[2].n_cpus, 0);
    assert_null(c.nodes[2].cpus);
    assert_int_equal(c.nodes[2].n_cores, 0);
    assert_int_equal(c.n_cpus, 8);
    assert_true(c.mem_total == 49 * GiB);
    sv_capacity_clear(&c);
}

static void expect_read_error(int code, const char *msg) {
    sv_capacity c;
    qv_error err = {0};
    int r = sv_capacity_read(&c, &err);
    if (r != -code || strcmp(err.msg, msg) != 0)
        fail_msg("got %d '%s', want %d '%s'", r, err.msg, -code, msg);
}

static void test_errors(void **st) {
    (void)st;
    /* nothing at all: no meminfo to fall back to */
    expect_read_error(ENOENT, "cannot read /sys/devices/system/cpu/online: No such file or directory");
    w("sys/devices/system/cpu/online", "0-3\n");
    expect_read_error(ENOENT, "cannot read /proc/meminfo: No such file or directory");
    w("proc/meminfo", "MemTotal: lots\n");
    expect_read_error(EBADMSG, "/proc/meminfo: no MemTotal and MemFree lines in kB");

    two_node_tree();
    w("sys/devices/system/node/node1/cpulist", "2-3,6-\n");
    expect_read_error(EBADMSG, "/sys/devices/system/node/node1/cpulist: '2-3,6-' is not a CPU list");
    w("sys/devices/system/node/node1/cpulist", "2-3,6-7\n");
    w("sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages", "many\n");
    expect_read_error(EBADMSG, "cannot read /sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages: "
                               "Bad message");
    w("sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages", "5\n");
    mkd("sys/devices/system/node/node3");
    expect_read_error(ENOENT, "cannot read /sys/devices/system/node/node3/cpulist: No such file or directory");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_two_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gpus_from_vfio, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parts_for_a_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_numa, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_node_lagging_meminfo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cpuless_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
