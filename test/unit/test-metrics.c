/* The metrics text: the exposition writer (escaping, values, grouping), the
 * whole rendering pinned by a golden file, and the small parsers behind it
 * (metrics.listen, /proc/PID/stat). */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "listenaddr.h"
#include "supervisor/metrics/expo.h"
#include "supervisor/metrics/render.h"
#include "supervisor/vm/proc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

static char *take(sv_expo *e) {
    char *t = sv_expo_take(e, NULL);
    assert_non_null(t);
    return t;
}

/* ---- the writer ---------------------------------------------------------------- */

static void test_escape(void **state) {
    (void)state;
    char buf[64];
    /* label values: backslash, double quote and newline, nothing else */
    assert_int_equal(sv_expo_escape("a\\b\"c\nd\te\xc3\xa9", true, buf, sizeof buf), 14);
    assert_string_equal(buf, "a\\\\b\\\"c\\nd\te\xc3\xa9");
    /* HELP: a double quote stays */
    sv_expo_escape("say \"hi\"\\\n", false, buf, sizeof buf);
    assert_string_equal(buf, "say \"hi\"\\\\\\n");
    /* truncated like snprintf, the length still the whole */
    assert_int_equal(sv_expo_escape("\"\"\"\"", true, buf, 5), 8);
    assert_string_equal(buf, "\\\"\\\"");
    assert_int_equal(sv_expo_escape("", true, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
}

static void test_samples(void **state) {
    (void)state;
    sv_expo e = {0};
    sv_expo_family(&e, "m_total", "counter", "A \"counter\"\\ with\nlines.");
    sv_expo_u64(&e, "m_total", NULL, UINT64_MAX);
    sv_expo_u64(&e, "m_total", (const char *[]){NULL}, 0);
    sv_expo_u64(&e, "m_total", (const char *[]){"vm", "we\"ird\\\nname", "pool", "p", NULL}, 7);
    sv_expo_family(&e, "g", "gauge", "Reals.");
    sv_expo_double(&e, "g", (const char *[]){"k", "1", NULL}, 0.5);
    sv_expo_double(&e, "g", (const char *[]){"k", "2", NULL}, 12345.67);
    sv_expo_double(&e, "g", (const char *[]){"k", "3", NULL}, 1e20);
    sv_expo_double(&e, "g", (const char *[]){"k", "4", NULL}, NAN);
    sv_expo_double(&e, "g", (const char *[]){"k", "5", NULL}, INFINITY);
    sv_expo_double(&e, "g", (const char *[]){"k", "6", NULL}, -INFINITY);
    sv_expo_double(&e, "g", (const char *[]){"k", "7", NULL}, 3.0);
    sv_expo_double(&e, "g", (const char *[]){"k", "8", NULL}, 0.1 + 0.2);
    _cleanup_free_ char *t = take(&e);
    assert_string_equal(t, "# HELP m_total A \"counter\"\\\\ with\\nlines.\n"
                           "# TYPE m_total counter\n"
                           "m_total 18446744073709551615\n"
                           "m_total 0\n"
                           "m_total{vm=\"we\\\"ird\\\\\\nname\",pool=\"p\"} 7\n"
                           "# HELP g Reals.\n"
                           "# TYPE g gauge\n"
                           "g{k=\"1\"} 0.5\n"
                           "g{k=\"2\"} 12345.67\n"
                           "g{k=\"3\"} 1e+20\n"
                           "g{k=\"4\"} NaN\n"
                           "g{k=\"5\"} +Inf\n"
                           "g{k=\"6\"} -Inf\n"
                           "g{k=\"7\"} 3\n"
                           "g{k=\"8\"} 0.3\n");
    /* taken: the writer starts over */
    assert_null(e.buf);
    sv_expo_u64(&e, "x", NULL, 1);
    _cleanup_free_ char *t2 = take(&e);
    assert_string_equal(t2, "x 1\n");
}

static void test_grows(void **state) {
    (void)state;
    sv_expo e = {0};
    char name[200];
    memset(name, 'a', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    for (int i = 0; i < 2000; i++)
        sv_expo_u64(&e, "n", (const char *[]){"l", name, NULL}, (uint64_t)i);
    size_t len;
    _cleanup_free_ char *t = sv_expo_take(&e, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    assert_true(len > 2000 * 200);
    assert_non_null(strstr(t, "} 1999\n"));
}

/* ---- the whole text ---------------------------------------------------------- */

/* Checks what promtool would: every sample belongs to the family whose
 * TYPE came last (families are not split), names and label names are
 * valid, each family's HELP and TYPE come once, counters end in _total. */
static void lint(const char *text) {
    char family[128] = "";
    char seen[256][128];
    size_t n_seen = 0;
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        assert_non_null(end);
        char l[4096];
        size_t len = (size_t)(end - line);
        assert_true(len < sizeof l);
        memcpy(l, line, len);
        l[len] = '\0';
        line = end + 1;
        char name[128], type[32];
        if (sscanf(l, "# TYPE %127s %31s", name, type) == 2) {
            for (size_t i = 0; i < n_seen; i++)
                if (strcmp(seen[i], name) == 0)
                    fail_msg("family %s declared twice", name);
            assert_true(n_seen < 256);
            snprintf(seen[n_seen++], sizeof seen[0], "%s", name);
            snprintf(family, sizeof family, "%s", name);
            if (strcmp(type, "counter") == 0 && !strstr(name, "_total"))
                fail_msg("counter %s without _total", name);
            continue;
        }
        if (l[0] == '#')
            continue;
        size_t k = strcspn(l, "{ ");
        if (strlen(family) != k || strncmp(l, family, k) != 0)
            fail_msg("sample '%s' outside its family (last TYPE: %s)", l, family);
        assert_true(isalpha((unsigned char)l[0]) || l[0] == '_');
        for (size_t i = 0; i < k; i++)
            assert_true(isalnum((unsigned char)l[i]) || l[i] == '_' || l[i] == ':');
        if (strncmp(family, "qvisor_", 7) != 0)
            fail_msg("%s without the qvisor_ prefix", family);
    }
}

static const unsigned node0_cpus[] = {0, 1, 2, 3}, node1_cpus[] = {4, 5, 6, 7};

/* Two NUMA nodes, hugepages on one; two pools (one with quotas); two
 * storage pools (one unreadable); a running VM with disks, a TAP and an
 * agent, a stopped one, and one whose QEMU left out its parts. */
static void fixture(sv_capacity *cap, sv_metrics_node *node, sv_vm_stats vms[3]) {
    static sv_hugepages huge[] = {{.page_size = 2u << 20, .total = 512, .free = 500},
                                  {.page_size = 1u << 30, .total = 0, .free = 0}};
    static sv_numa_node nodes[2];
    nodes[0] = (sv_numa_node){.id = 0, .cpus = (unsigned *)node0_cpus, .n_cpus = 4, .n_cores = 2,
                              .mem_total = 16ull << 30, .mem_free = 10ull << 30, .hugepages = huge,
                              .n_hugepages = 2};
    nodes[1] = (sv_numa_node){.id = 1, .cpus = (unsigned *)node1_cpus, .n_cpus = 4, .n_cores = 2,
                              .mem_total = 16ull << 30, .mem_free = 15ull << 30};
    *cap = (sv_capacity){.numa = true, .nodes = nodes, .n_nodes = 2, .n_cpus = 8, .n_cores = 4,
                         .mem_total = 32ull << 30, .mem_free = 25ull << 30};
    static sv_metrics_numa numa[2];
    numa[0] = (sv_metrics_numa){.bound = {.vms = 1, .cpus = 2, .memory = 1u << 30, .hugepage_memory = 1u << 30},
                                .pinned_vcpus = 2};
    numa[1] = (sv_metrics_numa){0};
    static sv_metrics_pool pools[2];
    pools[0] = (sv_metrics_pool){.name = "default", .used = {.vms = 2, .cpus = 3, .memory = 3u << 30},
                                 .quota_cpus = SV_NO_QUOTA, .quota_memory = SV_NO_QUOTA, .quota_gpus = SV_NO_QUOTA};
    pools[1] = (sv_metrics_pool){.name = "batch", .used = {.vms = 1, .cpus = 1, .memory = 512u << 20, .gpus = 1},
                                 .quota_cpus = 8, .quota_memory = 4ull << 30, .quota_gpus = SV_NO_QUOTA};
    static sv_metrics_store stores[2];
    stores[0] = (sv_metrics_store){.name = "default", .known = true,
                                   .usage = {.free = 100ull << 30, .allocated = 60ull << 30, .used = 3ull << 30}};
    stores[1] = (sv_metrics_store){.name = "gone", .known = false};
    *node = (sv_metrics_node){
        .version = "9.8.7",
        .start_time = 1700000000,
        .cap = cap,
        .numa = numa,
        .cpu_overcommit = 4.0,
        .memory_overcommit = 1.5,
        .defined = {.vms = 3, .cpus = 4, .memory = 3ull << 30, .hugepage_memory = 1u << 30, .gpus = 1},
        .running = {.vms = 1, .cpus = 2, .memory = 1u << 30, .hugepage_memory = 1u << 30},
        .gpus = {[SV_GPU_STUCK] = 0, [SV_GPU_IN_USE] = 0, [SV_GPU_ASSIGNED] = 1, [SV_GPU_FREE] = 2},
        .pools = pools,
        .n_pools = 2,
        .stores = stores,
        .n_stores = 2,
        .now = 1700000100,
        .scrape_seconds = 0.25,
        .missed = 1,
    };
    static sv_disk_stats disks[2] = {
        {.device = "disk0", .read_bytes = 1048576, .write_bytes = 4096, .read_ops = 256, .write_ops = 1},
        {.device = "seed0", .read_bytes = 2048, .read_ops = 1},
    };
    memset(vms, 0, 3 * sizeof *vms);
    vms[0] = (sv_vm_stats){.name = "web", .pool = "default", .state = SV_VM_RUNNING, .cpus = 2, .memory = 1u << 30,
                           .restarts = 1, .restarts_total = 3, .has_qemu = true, .started_at = 1700000040,
                           .have_proc = true, .cpu_seconds = 12.34, .rss_bytes = 300ull << 20, .agent = 1,
                           .n_nics = 1, .have_disks = true, .disks = disks, .n_disks = 2};
    vms[0].nics[0] = (sv_nic_stats){.index = 1, .tap = "qv-web-1", .rx_bytes = 1000, .tx_bytes = 2000,
                                    .rx_packets = 10, .tx_packets = 20};
    vms[1] = (sv_vm_stats){.name = "batch-1", .pool = "batch", .state = SV_VM_STOPPED, .cpus = 1,
                           .memory = 512u << 20, .gpus = 1, .agent = -1};
    /* a QEMU that answered nothing in time, an agent that did not either */
    vms[2] = (sv_vm_stats){.name = "slow", .pool = "default", .state = SV_VM_PAUSED, .cpus = 1, .memory = 1u << 30,
                           .has_qemu = true, .started_at = 1700000099, .agent = 0};
}

static void test_render_golden(void **state) {
    (void)state;
    sv_capacity cap;
    sv_metrics_node node;
    sv_vm_stats vms[3];
    fixture(&cap, &node, vms);
    _cleanup_free_ char *text = NULL;
    size_t len;
    assert_int_equal(sv_metrics_render(&node, vms, 3, &text, &len), 0);
    assert_int_equal(strlen(text), len);
    lint(text);
    char path[4096];
    snprintf(path, sizeof path, "%s/test/unit/golden/metrics.prom", getenv("QVISOR_SOURCE_ROOT"));
    if (getenv("QVISOR_UPDATE_GOLDEN")) {
        assert_int_equal(qv_write_file_atomic(path, text, len, 0644), 0);
        return;
    }
    _cleanup_free_ char *want = NULL;
    assert_int_equal(qv_read_file(path, 1 << 20, &want, NULL), 0);
    if (strcmp(text, want) != 0)
        fail_msg("rendering differs from %s (QVISOR_UPDATE_GOLDEN=1 rewrites it); got:\n%s", path, text);
}

/* Label values are escaped whatever their origin; a VM section without
 * VMs and a node without capacity still make a valid text. */
static void test_render_edges(void **state) {
    (void)state;
    sv_capacity cap;
    sv_metrics_node node;
    sv_vm_stats vms[3];
    fixture(&cap, &node, vms);
    snprintf(vms[0].name, sizeof vms[0].name, "a\"b\\c\nd");
    snprintf(vms[0].disks[0].device, sizeof vms[0].disks[0].device, "x\"y");
    _cleanup_free_ char *text = NULL;
    size_t len;
    assert_int_equal(sv_metrics_render(&node, vms, 1, &text, &len), 0);
    lint(text);
    assert_non_null(strstr(text, "qvisor_vm_vcpus{vm=\"a\\\"b\\\\c\\nd\",pool=\"default\"} 2\n"));
    assert_non_null(strstr(text, "device=\"x\\\"y\"} 1048576\n"));
    snprintf(vms[0].disks[0].device, sizeof vms[0].disks[0].device, "disk0");

    node.cap = NULL;
    _cleanup_free_ char *bare = NULL;
    assert_int_equal(sv_metrics_render(&node, NULL, 0, &bare, &len), 0);
    lint(bare);
    assert_null(strstr(bare, "qvisor_numa_node_cpus{"));
    assert_null(strstr(bare, "qvisor_node_gpus"));
    assert_non_null(strstr(bare, "# TYPE qvisor_vm_state gauge\n"));
    assert_non_null(strstr(bare, "qvisor_daemon_info{version=\"9.8.7\"} 1\n"));
}

/* ---- metrics.listen --------------------------------------------------------------- */

static void test_listen_addr(void **state) {
    (void)state;
    qv_listen_addr a;
    char why[256];
    assert_int_equal(qv_listen_addr_parse("127.0.0.1:9641", &a, why, sizeof why), 0);
    assert_int_equal(a.family, AF_INET);
    struct sockaddr_in *in = (struct sockaddr_in *)&a.sa;
    assert_int_equal(ntohs(in->sin_port), 9641);
    assert_int_equal(ntohl(in->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(a.len, sizeof *in);
    assert_int_equal(qv_listen_addr_parse("[::1]:1", &a, why, sizeof why), 0);
    assert_int_equal(a.family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&a.sa)->sin6_port), 1);
    assert_int_equal(qv_listen_addr_parse("0.0.0.0:65535", &a, why, sizeof why), 0);
    assert_int_equal(qv_listen_addr_parse("/run/qvisor/metrics.sock", &a, why, sizeof why), 0);
    assert_int_equal(a.family, AF_UNIX);
    assert_string_equal(((struct sockaddr_un *)&a.sa)->sun_path, "/run/qvisor/metrics.sock");

    static const char *const bad[] = {
        "", "localhost:9641", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+80",
        "127.0.0.1:80x", "::1:80", "[::1]", "[::1]80", "[::1:80", "[]:80", "[fe80::1%eth0]:80", "[127.0.0.1]:80",
        "1.2.3:80", "metrics.sock", ":80",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        if (qv_listen_addr_parse(bad[i], &a, why, sizeof why) != -EINVAL)
            fail_msg("'%s' was accepted", bad[i]);
        assert_non_null(strstr(why, "expected"));
    }
    char longpath[200] = "/";
    memset(longpath + 1, 'x', 120);
    assert_int_equal(qv_listen_addr_parse(longpath, &a, why, sizeof why), -EINVAL);
    assert_non_null(strstr(why, "longer than a unix socket path"));
}

/* ---- /proc/PID/stat ----------------------------------------------------------------- */

static void test_proc_usage(void **state) {
    (void)state;
    /* comm with spaces and parentheses, as a guest-named thread could make it */
    const char *stat = "4242 (qemu) (x y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 5 0 "
                       "987654 2000000000 73000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
    sv_proc_usage u;
    assert_int_equal(sv_proc_parse_usage(stat, &u), 0);
    assert_int_equal(u.cpu_ticks, 1234 + 567);
    assert_int_equal(u.start_ticks, 987654);
    assert_int_equal(u.rss_pages, 73000);
    assert_int_equal(sv_proc_parse_usage("4242 qemu S 1", &u), -EBADMSG);
    assert_int_equal(sv_proc_parse_usage("4242 (qemu) S 1 2 3", &u), -EBADMSG);
    assert_int_equal(sv_proc_parse_usage("1 (a) S 1 1 1 0 -1 0 0 0 0 0 x 5 0 0 20 0 1 0 9 1 7 1", &u), -EBADMSG);
    assert_int_equal(sv_proc_parse_usage("1 (a) S 1 1 1 0 -1 0 0 0 0 0 -3 5 0 0 20 0 1 0 9 1 7 1", &u), -EBADMSG);
    /* this process: its own start time, some CPU, some memory */
    assert_int_equal(sv_proc_usage_read(getpid(), &u), 0);
    assert_true(u.rss_pages > 0);
    uint64_t st;
    assert_int_equal(sv_proc_start_time(getpid(), &st), 0);
    assert_int_equal(st, u.start_ticks);
    assert_int_equal(sv_proc_usage_read(0x7ffffff0, &u), -ENOENT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_samples),
        cmocka_unit_test(test_grows),
        cmocka_unit_test(test_render_golden),
        cmocka_unit_test(test_render_edges),
        cmocka_unit_test(test_listen_addr),
        cmocka_unit_test(test_proc_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
