/* Slurm's configuration as qvisor reads it (slurm/slurmconf.h): hostlists,
 * gres.conf's GPU lines for a node, slurm.conf's GPU count for a node, and
 * the GPUs offered to Slurm. */
#include "testlib.h"

#include "slurm/slurmconf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void expect_expand(const char *expr, const char *const *want) {
    char **got = NULL;
    size_t n = 0;
    assert_int_equal(slurm_hostlist_expand(expr, &got, &n), 0);
    size_t k = 0;
    for (; want[k]; k++) {
        assert_true(k < n);
        assert_string_equal(got[k], want[k]);
    }
    assert_int_equal(n, k);
    assert_null(got[n]);
    slurm_strv_free(got);
}

static void test_hostlist(void **state) {
    (void)state;
    expect_expand("node1", (const char *[]){"node1", NULL});
    expect_expand("node[1-3,5]", (const char *[]){"node1", "node2", "node3", "node5", NULL});
    expect_expand("gpu[08-10]", (const char *[]){"gpu08", "gpu09", "gpu10", NULL});
    expect_expand("a,b[1-2]", (const char *[]){"a", "b1", "b2", NULL});
    expect_expand("r[1-2]n[1-2]", (const char *[]){"r1n1", "r1n2", "r2n1", "r2n2", NULL});
    expect_expand("/dev/vfio/[3-4]", (const char *[]){"/dev/vfio/3", "/dev/vfio/4", NULL});
    char **v = NULL;
    static const char *const bad[] = {"", "n[", "n]", "n[]", "n[3-1]", "n[a-b]", "n[1-2", "a,,b", "n[[1]]",
                                      "n[1-2]]", NULL};
    for (size_t i = 0; bad[i]; i++)
        assert_int_equal(slurm_hostlist_expand(bad[i], &v, NULL), -EINVAL);
    /* a hostile range is refused, not expanded */
    assert_int_equal(slurm_hostlist_expand("n[0-99999999]", &v, NULL), -E2BIG);
    assert_int_equal(slurm_hostlist_expand("a[0-999]b[0-999]", &v, NULL), -E2BIG);
    assert_true(slurm_hostlist_has("node[1-3]", "node2"));
    assert_false(slurm_hostlist_has("node[1-3]", "node4"));
    assert_false(slurm_hostlist_has("node[1-", "node1"));
}

static void test_gres_conf(void **state) {
    (void)state;
    const char *conf = "# GPUs for VMs\n"
                       "AutoDetect=off\n"
                       "NodeName=node[1-2] Name=gpu File=/dev/vfio/[3-4]   # two\n"
                       "NodeName=node3 Name=gpu File=/dev/vfio/7\n"
                       "Name=gpu Type=t4 File=/dev/vfio/9\n"
                       "Name=mps Count=100\n"
                       "nodename=node2 name=GPU count=2\n";
    char **files = NULL;
    size_t n = 0;
    qv_error err = {0};
    assert_int_equal(slurm_gres_conf_gpus(conf, "node2", &files, &n, &err), 0);
    assert_int_equal(n, 5);
    assert_string_equal(files[0], "/dev/vfio/3");
    assert_string_equal(files[1], "/dev/vfio/4");
    assert_string_equal(files[2], "/dev/vfio/9"); /* no NodeName: every node */
    assert_null(files[3]);                        /* Count= without File= */
    assert_null(files[4]);
    slurm_gres_files_free(files, n);
    assert_int_equal(slurm_gres_conf_gpus(conf, "node3", &files, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(files[0], "/dev/vfio/7");
    slurm_gres_files_free(files, n);
    assert_int_equal(slurm_gres_conf_gpus("", "node1", &files, &n, &err), 0);
    assert_int_equal(n, 0);
    slurm_gres_files_free(files, n);
    /* errors name the line */
    assert_int_equal(slurm_gres_conf_gpus("\nName=gpu File=/dev/x[\n", "n", &files, &n, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "line 2"));
    assert_int_equal(slurm_gres_conf_gpus("Name=gpu nonsense\n", "n", &files, &n, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "line 1"));
    assert_int_equal(slurm_gres_conf_gpus("Name=gpu Count=x\n", "n", &files, &n, &err), -EINVAL);
}

static void test_slurm_conf(void **state) {
    (void)state;
    const char *conf = "ClusterName=lab\n"
                       "NodeName=DEFAULT CPUs=8 Gres=gpu:1\n"
                       "NodeName=node1 RealMemory=1000 \\\n"
                       "   Gres=gpu:t4:2,gpu:a100:1(S:0),mps:100\n"
                       "NodeName=node[2-3] RealMemory=1000\n"
                       "NodeName=node4 Gres=mps:50\n"
                       "Include /etc/slurm/more.conf\n"
                       "PartitionName=all Nodes=ALL\n";
    long n = -1;
    bool include = false;
    qv_error err = {0};
    assert_int_equal(slurm_conf_node_gpus(conf, "node1", &n, &include, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(slurm_conf_node_gpus(conf, "node3", &n, &include, &err), 0);
    assert_int_equal(n, 1); /* NodeName=DEFAULT's */
    assert_int_equal(slurm_conf_node_gpus(conf, "node4", &n, &include, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(slurm_conf_node_gpus(conf, "node9", &n, &include, &err), -ENOENT);
    assert_true(include);
    assert_int_equal(slurm_conf_node_gpus("NodeName=n1 Gres=gpu:t4:lots\n", "n1", &n, &include, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "line 1"));
}

static void test_job_alloc(void **state) {
    (void)state;
    const char *job = "JobId=42 JobName=wrap\n"
                      "   UserId=alice(1001) GroupId=alice(1001) MCS_label=N/A\n"
                      "   JobState=RUNNING Reason=None Dependency=(null)\n"
                      "   NodeList=node[1-3]\n"
                      "   TRES=cpu=10,mem=6G,node=3,billing=10,gres/gpu=3\n"
                      "   JOB_GRES=gpu:3\n"
                      "     Nodes=node[1-2] CPU_IDs=0-3,8 Mem=2048 GRES=gpu:t4:1(IDX:1),gpu:a100:1(IDX:3)\n"
                      "     Nodes=node3 CPU_IDs=0-4 Mem=2048 GRES=\n"
                      "   MinCPUsNode=1 MinMemoryNode=2G MinTmpDiskNode=0\n";
    slurm_alloc a;
    qv_error err = {0};
    assert_int_equal(slurm_job_alloc(job, "node2", &a, &err), 0);
    assert_int_equal(a.cpus, 5);
    assert_int_equal(a.mem_mib, 2048);
    assert_int_equal(a.n_gpus, 2);
    assert_int_equal(a.gpus[0], 1);
    assert_int_equal(a.gpus[1], 3);
    assert_true(a.has_uid);
    assert_int_equal(a.uid, 1001);
    assert_int_equal(slurm_job_alloc(job, "node3", &a, &err), 0);
    assert_int_equal(a.cpus, 5);
    assert_int_equal(a.n_gpus, 0);
    /* NodeList= is not an allocation line; a node the job is not on */
    assert_int_equal(slurm_job_alloc(job, "node4", &a, &err), -ENOENT);
    assert_int_equal(slurm_job_alloc("JobId=1\n   NodeList=n1\n", "n1", &a, &err), -ENOENT);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=0-x Mem=1\n", "n1", &a, &err), -EINVAL);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=0 Mem=1 GRES=gpu:1(IDX:0-99999)\n", "n1", &a, &err),
                     -EINVAL);
    /* numbers past what strtoul holds, or negative: refused, never a loop
     * whose end is ULONG_MAX (fuzz-slurm found it spinning forever) */
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=0-3,81111111111111111111111111 Mem=1\n", "n1", &a, &err),
                     -EINVAL);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=18446744073709551615 Mem=1\n", "n1", &a, &err), -EINVAL);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=-1 Mem=1\n", "n1", &a, &err), -EINVAL);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=0- Mem=1\n", "n1", &a, &err), -EINVAL);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=0,+1 Mem=1\n", "n1", &a, &err), -EINVAL);
    assert_int_equal(slurm_job_alloc("     Nodes=n1 CPU_IDs=0-1 GRES=gpu:2(IDX:0-1)\n", "n1", &a, &err), 0);
    assert_int_equal(a.cpus, 2);
    assert_int_equal(a.mem_mib, 0);
    assert_int_equal(a.n_gpus, 2);
    assert_false(a.has_uid);
}

static void test_kill_wait(void **state) {
    (void)state;
    const char *config = "Configuration data as of 2026-12-07T09:00:00\n"
                         "JobSubmitPlugins        = (null)\n"
                         "KillOnBadExit           = 0\n"
                         "KillWait                = 5 sec\n"
                         "LaunchParameters        = (null)\n";
    unsigned s = 0;
    assert_int_equal(slurm_config_kill_wait(config, &s), 0);
    assert_int_equal(s, 5);
    assert_int_equal(slurm_config_kill_wait("KillWait=0 sec", &s), 0);
    assert_int_equal(s, 0);
    assert_int_equal(slurm_config_kill_wait("KillOnBadExit = 1\nKillWaitX = 3 sec\n", &s), -ENOENT);
    assert_int_equal(slurm_config_kill_wait("", &s), -ENOENT);
    assert_int_equal(slurm_config_kill_wait("KillWait = soon\n", &s), -EINVAL);
    assert_int_equal(slurm_config_kill_wait("KillWait = 99999999999999999999 sec\n", &s), -EINVAL);
    assert_int_equal(slurm_config_kill_wait("KillWait = 5x\n", &s), -EINVAL);
}

static void test_offered_gpus(void **state) {
    (void)state;
    vfio_gpu gpus[4] = {0};
    const char *bdfs[] = {"0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:04:00.0"};
    int groups[] = {5, -1, 7, 7};
    for (int i = 0; i < 4; i++) {
        snprintf(gpus[i].dev.bdf, sizeof gpus[i].dev.bdf, "%s", bdfs[i]);
        gpus[i].dev.iommu_group = groups[i];
        gpus[i].index = i;
    }
    vfio_gpu_list l = {.gpus = gpus, .n = 4};
    const vfio_gpu *off[4];
    char why[4][128];
    assert_int_equal(slurm_offered_gpus(&l, off, why), 1);
    assert_ptr_equal(off[0], &gpus[0]);
    assert_string_equal(why[0], "");
    assert_non_null(strstr(why[1], "no IOMMU group"));
    assert_non_null(strstr(why[2], "0000:04:00.0"));
    assert_non_null(strstr(why[3], "0000:03:00.0"));
    char file[64];
    assert_int_equal(slurm_gpu_file(off[0], NULL, file, sizeof file), 0);
    assert_string_equal(file, "/dev/vfio/5");
    assert_int_equal(slurm_gpu_file(off[0], "/tmp/devs", file, sizeof file), 0);
    assert_string_equal(file, "/tmp/devs/5");
    assert_int_equal(slurm_gpu_file(off[0], "/tmp/devs", file, 8), -ENAMETOOLONG);
}

/* A group member the host uses keeps the GPU from Slurm; its own slot's
 * functions, bridges and members on vfio-pci, pci-stub or no driver do
 * not. */
static void test_offered_gpus_host_device(void **state) {
    (void)state;
    vfio_pci_dev grp[5] = {0};
    const char *bdfs[] = {"0000:01:00.0", "0000:01:00.1", "0000:00:01.0", "0000:03:00.0", "0000:05:00.0"};
    const char *drivers[] = {"nouveau", "vfio-pci", "pcieport", "", "pci-stub"};
    for (int i = 0; i < 5; i++) {
        snprintf(grp[i].bdf, sizeof grp[i].bdf, "%s", bdfs[i]);
        snprintf(grp[i].driver, sizeof grp[i].driver, "%s", drivers[i]);
        grp[i].iommu_group = 3;
    }
    grp[0].class_code = 0x030000;
    grp[2].bridge = true;
    grp[3].class_code = 0x020000;
    vfio_gpu gpu = {.dev = grp[0], .group = grp, .n_group = 5};
    vfio_gpu_list l = {.gpus = &gpu, .n = 1};
    const vfio_gpu *off[1];
    char why[1][128];
    assert_int_equal(slurm_offered_gpus(&l, off, why), 1);
    assert_string_equal(why[0], "");
    /* the NIC on its host driver: left out, and why */
    snprintf(grp[3].driver, sizeof grp[3].driver, "e1000e");
    assert_int_equal(slurm_offered_gpus(&l, off, why), 0);
    assert_string_equal(why[0], "IOMMU group 3 holds host device 0000:03:00.0 (Ethernet controller, e1000e): "
                                "only take-group could pass it through");
    /* a bridge on its driver and the slot's own functions never count */
    snprintf(grp[3].driver, sizeof grp[3].driver, "vfio-pci");
    snprintf(grp[1].driver, sizeof grp[1].driver, "snd_hda_intel");
    assert_int_equal(slurm_offered_gpus(&l, off, NULL), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostlist),
        cmocka_unit_test(test_gres_conf),
        cmocka_unit_test(test_slurm_conf),
        cmocka_unit_test(test_job_alloc),
        cmocka_unit_test(test_kill_wait),
        cmocka_unit_test(test_offered_gpus),
        cmocka_unit_test(test_offered_gpus_host_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
