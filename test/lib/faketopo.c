#include "faketopo.h"

#include "testlib.h"

#include "sysroot.h"
#include "supervisor/resources/admission.h"
#include "host/capacity.h"

#include "fileio.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void qv_faketopo_mkdir(const char *root, const char *rel) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    assert_int_equal(qv_mkdir_p(path, 0755), 0);
}

void qv_faketopo_link(const char *root, const char *target, const char *rel) {
    char path[PATH_MAX], parent[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    snprintf(parent, sizeof parent, "%s", path);
    *strrchr(parent, '/') = '\0';
    assert_int_equal(qv_mkdir_p(parent, 0755), 0);
    assert_int_equal(symlink(target, path), 0);
}

void qv_faketopo_cpu_topology(const char *root, unsigned cpu, int package, int core) {
    char rel[PATH_MAX], v[32];
    snprintf(v, sizeof v, "%d\n", package);
    snprintf(rel, sizeof rel, "sys/devices/system/cpu/cpu%u/topology/physical_package_id", cpu);
    qv_test_write(root, rel, v);
    snprintf(v, sizeof v, "%d\n", core);
    snprintf(rel, sizeof rel, "sys/devices/system/cpu/cpu%u/topology/core_id", cpu);
    qv_test_write(root, rel, v);
}

void qv_faketopo_hugepages(const char *root, const char *dir, unsigned kb, unsigned total, unsigned free_pages) {
    char rel[PATH_MAX], v[32];
    snprintf(v, sizeof v, "%u\n", total);
    snprintf(rel, sizeof rel, "%s/hugepages-%ukB/nr_hugepages", dir, kb);
    qv_test_write(root, rel, v);
    snprintf(v, sizeof v, "%u\n", free_pages);
    snprintf(rel, sizeof rel, "%s/hugepages-%ukB/free_hugepages", dir, kb);
    qv_test_write(root, rel, v);
    snprintf(rel, sizeof rel, "%s/hugepages-%ukB/surplus_hugepages", dir, kb);
    qv_test_write(root, rel, "0\n");
}

void qv_faketopo_pci_nic(const char *root, const char *ifname, const char *bdf, const char *numa) {
    char rel[PATH_MAX], target[PATH_MAX];
    snprintf(rel, sizeof rel, "sys/devices/pci0000:3a/%s/net/%s/device", bdf, ifname);
    snprintf(target, sizeof target, "../../../%s", bdf);
    qv_faketopo_link(root, target, rel);
    snprintf(rel, sizeof rel, "sys/devices/pci0000:3a/%s/net/%s/address", bdf, ifname);
    qv_test_write(root, rel, "52:54:00:12:34:56\n");
    if (numa) {
        snprintf(rel, sizeof rel, "sys/devices/pci0000:3a/%s/numa_node", bdf);
        qv_test_write(root, rel, numa);
    }
    snprintf(rel, sizeof rel, "sys/class/net/%s", ifname);
    snprintf(target, sizeof target, "../../devices/pci0000:3a/%s/net/%s", bdf, ifname);
    qv_faketopo_link(root, target, rel);
}

void qv_faketopo_virtual_nic(const char *root, const char *ifname) {
    char rel[PATH_MAX], target[PATH_MAX];
    snprintf(rel, sizeof rel, "sys/devices/virtual/net/%s/address", ifname);
    qv_test_write(root, rel, "00:00:00:00:00:00\n");
    snprintf(rel, sizeof rel, "sys/class/net/%s", ifname);
    snprintf(target, sizeof target, "../../devices/virtual/net/%s", ifname);
    qv_faketopo_link(root, target, rel);
}

void qv_faketopo_two_nodes(const char *root) {
    for (unsigned p = 0; p < 2; p++)
        for (unsigned c = 0; c < 2; c++)
            for (unsigned t = 0; t < 2; t++)
                qv_faketopo_cpu_topology(root, c + 2 * p + 4 * t, (int)p, (int)c);
    qv_test_write(root, "sys/devices/system/cpu/online", "0-7\n");
    qv_test_write(root, "sys/devices/system/node/online", "0-1\n");
    qv_test_write(root, "sys/devices/system/node/possible", "0-1\n");
    qv_test_write(root, "sys/devices/system/node/has_cpu", "0-1\n");
    qv_test_write(root, "sys/devices/system/node/node0/cpulist", "0-1,4-5\n");
    qv_test_write(root, "sys/devices/system/node/node1/cpulist", "2-3,6-7\n");
    qv_test_write(root, "sys/devices/system/node/node0/meminfo",
                  "Node 0 MemTotal:       16777216 kB\n"
                  "Node 0 MemFree:        10485760 kB\n"
                  "Node 0 MemUsed:         6291456 kB\n"
                  "Node 0 HugePages_Total:   512\n");
    qv_test_write(root, "sys/devices/system/node/node1/meminfo",
                  "Node 1 MemTotal:       33554432 kB\n"
                  "Node 1 MemFree:        20971520 kB\n"
                  "Node 1 MemUsed:        12582912 kB\n");
    qv_faketopo_hugepages(root, "sys/devices/system/node/node0/hugepages", 2048, 512, 500);
    qv_faketopo_hugepages(root, "sys/devices/system/node/node0/hugepages", 1048576, 2, 2);
    qv_faketopo_hugepages(root, "sys/devices/system/node/node1/hugepages", 2048, 1024, 1024);
    qv_faketopo_hugepages(root, "sys/devices/system/node/node1/hugepages", 1048576, 8, 6);
    qv_test_write(root, "proc/meminfo", "MemTotal:       99999999 kB\nMemFree:        1 kB\n");

    qv_faketopo_pci_nic(root, "enp59s0f0", "0000:3b:00.0", "1\n");
    qv_test_write(root, "sys/devices/pci0000:3a/0000:3b:00.0/sriov_totalvfs", "8\n");
    qv_test_write(root, "sys/devices/pci0000:3a/0000:3b:00.0/sriov_numvfs", "2\n");
    qv_faketopo_pci_nic(root, "enp59s0f0v0", "0000:3b:02.0", "1\n");
    qv_faketopo_link(root, "../0000:3b:00.0", "sys/devices/pci0000:3a/0000:3b:02.0/physfn");
    qv_faketopo_pci_nic(root, "eno1", "0000:00:1f.6", "-1\n");
    qv_faketopo_virtual_nic(root, "lo");
    qv_faketopo_virtual_nic(root, "qvbr0");
    qv_faketopo_virtual_nic(root, "tap-web-0");
}

void qv_faketopo_fixture_up(const char *prefix, char **ret_root, sv_capacity *ret_cap,
                            sv_admission_policy *ret_policy) {
    char *root = qv_test_mkdtemp(prefix);
    unsetenv("QVISOR_SYSROOT");
    assert_int_equal(qv_sysroot_set(root), 0);
    qv_faketopo_two_nodes(root);
    qv_error err = {0};
    if (sv_capacity_read(ret_cap, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(sv_capacity_add_gpu(ret_cap, "0000:41:00.0", "A10", 1), 0);
    *ret_policy = (sv_admission_policy){.cpu_overcommit = 4.0, .memory_overcommit = 1.0, .pool = "default",
                                        .pool_cpus = SV_NO_QUOTA, .pool_memory = SV_NO_QUOTA,
                                        .pool_gpus = SV_NO_QUOTA};
    *ret_root = root;
}

void qv_faketopo_fixture_down(char **root, sv_capacity *cap) {
    sv_capacity_clear(cap);
    qv_sysroot_set(NULL);
    qv_test_rm_rf(*root);
    free(*root);
    *root = NULL;
}
