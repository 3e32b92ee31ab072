/* Fake NUMA topologies written into a test's sysfs root (a temp dir), for
 * host/capacity.c and what is built on it. */
#pragma once

/* The two-node machine: 2 packages x 2 cores x 2 threads (CPUs c + 2p + 4t),
 * package p on NUMA node p; node 0 has 16 GiB (10 free), node 1 32 GiB (20
 * free).  Hugepages: node 0 2M 512 (500 free) and 1G 2 (2 free); node 1
 * 2M 1024 (1024 free) and 1G 8 (6 free).  NICs: enp59s0f0, an SR-IOV PF with
 * 8 VFs of which 2 are enabled, and its VF enp59s0f0v0, both on node 1;
 * eno1 with numa_node -1; virtual lo, qvbr0 and tap-web-0.  proc/meminfo
 * holds nonsense that must not be used when there are nodes. */
void qv_faketopo_two_nodes(const char *root);

/* A test fixture: a temp dir with the two-node machine as the sysfs root,
 * its capacity read, plus a GPU "0000:41:00.0" ("A10") on node 1, and the
 * built-in policy (ratios 4.0 and 1.0, pool "default" without quotas); and
 * the matching cleanup. */
struct sv_capacity;
struct sv_admission_policy;
void qv_faketopo_fixture_up(const char *prefix, char **ret_root, struct sv_capacity *ret_cap,
                            struct sv_admission_policy *ret_policy);
void qv_faketopo_fixture_down(char **root, struct sv_capacity *cap);

/* Helpers for variations. */
void qv_faketopo_link(const char *root, const char *target, const char *rel);
void qv_faketopo_mkdir(const char *root, const char *rel);
void qv_faketopo_cpu_topology(const char *root, unsigned cpu, int package, int core);
void qv_faketopo_hugepages(const char *root, const char *dir, unsigned kb, unsigned total, unsigned free_pages);
/* A PCI network function: sys/class/net/IF -> ../../devices/pci0000:3a/BDF/net/IF
 * and IF/device -> ../../../BDF; numa (like "1\n") NULL: no numa_node file. */
void qv_faketopo_pci_nic(const char *root, const char *ifname, const char *bdf, const char *numa);
/* An interface without a device (lo, bridges, TAPs). */
void qv_faketopo_virtual_nic(const char *root, const char *ifname);
