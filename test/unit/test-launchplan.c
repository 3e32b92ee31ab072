/* Launch plans (supervisor/vm/launchplan.h) pinned by golden files in
 * test/unit/golden/ (NAME.plan): the descriptor map, the limits and the command
 * line a start executes.  QVISOR_UPDATE_GOLDEN=1 rewrites them. */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "supervisor/vm/launchplan.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *plan_text(const sv_launch_plan *p) {
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    assert_non_null(m);
    for (size_t i = 0; i < p->n_slots; i++) {
        fprintf(m, "fd %zu: %s", 3 + i, sv_plan_fd_name(p->slots[i].what));
        if (p->slots[i].what == SV_PLAN_TAP || p->slots[i].what == SV_PLAN_VHOST)
            fprintf(m, " (nic %u)", p->slots[i].nic);
        fprintf(m, "\n");
    }
    _cleanup_free_ char *log = sv_launch_plan_log(p);
    assert_non_null(log);
    fprintf(m, "-- qemu.log --\n%s-- argv --\n", log);
    for (char **a = p->argv; *a; a++)
        fprintf(m, "%s\n", *a);
    fclose(m);
    return text;
}

static void check_golden(const char *name, const sv_launch_plan *p) {
    _cleanup_free_ char *text = plan_text(p);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/test/unit/golden/%s.plan", getenv("QVISOR_SOURCE_ROOT"), name);
    if (getenv("QVISOR_UPDATE_GOLDEN")) {
        assert_int_equal(qv_write_file_atomic(path, text, strlen(text), 0644), 0);
        return;
    }
    _cleanup_free_ char *want = NULL;
    if (qv_read_file(path, 1 << 20, &want, NULL) < 0)
        fail_msg("missing golden file %s (run with QVISOR_UPDATE_GOLDEN=1)", path);
    if (strcmp(want, text) != 0)
        fail_msg("plan differs from %s:\n--- got ---\n%s", path, text);
}

#define DIR_ "/var/lib/qvisor/instances/"

/* The everyday VM under TCG: agent, user NIC with the SSH forward, seed. */
static void test_plan_default(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = qv_test_spec("{\"name\":\"web\",\"image\":\"debian\"}");
    sv_launch_input in = {
        .spec = s,
        .env = {.binary = "qemu-system-x86_64", .kvm = false, .sandbox = true, .run_as = "qvisor-qemu"},
        .disk = DIR_ "web/disk.qcow2",
        .serial_log = DIR_ "web/serial.log",
        .pidfile = "/run/qvisor/vm/web/qemu.pid",
        .seed_iso = DIR_ "web/seed.iso",
        .qga = true,
        .ssh_port = 2222,
    };
    in.file[SV_PLAN_DISK - SV_PLAN_DISK] = in.file[SV_PLAN_BASE - SV_PLAN_DISK] = true;
    in.file[SV_PLAN_SEED - SV_PLAN_DISK] = in.file[SV_PLAN_SERIAL - SV_PLAN_DISK] = true;
    sv_launch_plan p;
    qv_error err = {0};
    assert_int_equal(sv_launch_plan_make(&in, &p, &err), 0);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_QMP, 0), 3);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_QGA, 0), 4);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_KERNEL, 0), 0); /* none passed */
    assert_int_equal(p.memlock, 0);
    check_golden("plan-default", &p);
    sv_launch_plan_clear(&p);
}

/* KVM with a nat NIC (TAP + vhost-net) and a bridge NIC (TAP only), UEFI,
 * and a GPU with its audio function: RLIMIT_MEMLOCK is guest RAM + 1 GiB. */
static void test_plan_nics_uefi_gpu(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = qv_test_spec(
        "{\"name\":\"ml\",\"image\":\"debian\",\"memory\":\"16G\",\"cpus\":8,\"gpus\":[\"0000:01:00.0\"],"
        "\"nets\":[\"nat,ip=192.168.100.7,mac=0a:51:76:00:00:02\",\"bridge,bridge=br0,mac=0a:51:76:00:00:03\"],"
        "\"firmware\":\"uefi\",\"firmware_code\":\"/usr/share/OVMF/OVMF_CODE_4M.fd\","
        "\"firmware_vars\":\"/usr/share/OVMF/OVMF_VARS_4M.fd\"}");
    sv_hostdev devs[] = {{"0000:01:00.0", 0, 0}, {"0000:01:00.1", 0, 1}};
    sv_launch_input in = {
        .spec = s,
        .env = {.binary = "qemu-system-x86_64", .kvm = true, .sandbox = true, .run_as = "qvisor-qemu"},
        .disk = DIR_ "ml/disk.qcow2",
        .serial_log = DIR_ "ml/serial.log",
        .pidfile = "/run/qvisor/vm/ml/qemu.pid",
        .seed_iso = DIR_ "ml/seed.iso",
        .firmware_vars = DIR_ "ml/efivars.fd",
        .qga = true,
        .numa_bind = true,
        .numa_node = 1,
        .hostdevs = devs,
        .n_hostdevs = 2,
    };
    in.tap[0] = in.vhost[0] = in.tap[1] = true;
    for (int f = 0; f < SV_PLAN_FILES; f++)
        in.file[f] = f + SV_PLAN_DISK != SV_PLAN_KERNEL && f + SV_PLAN_DISK != SV_PLAN_INITRD;
    sv_launch_plan p;
    qv_error err = {0};
    assert_int_equal(sv_launch_plan_make(&in, &p, &err), 0);
    assert_int_equal(p.memlock, (16ull << 30) + (1ull << 30));
    /* the NICs' descriptors come in NIC order, each TAP before its vhost-net */
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_TAP, 0), 6);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_VHOST, 0), 7);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_TAP, 1), 8);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_VHOST, 1), 0);
    check_golden("plan-nics-uefi-gpu", &p);
    sv_launch_plan_clear(&p);
}

/* No agent, no seed, a direct kernel boot: the console moves up to fd 4. */
static void test_plan_kernel_no_agent(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = qv_test_spec(
        "{\"name\":\"tiny\",\"image\":\"busybox\",\"memory\":\"128M\",\"cpus\":1,\"agent\":false,\"seed\":false,"
        "\"kernel\":\"" DIR_ "tiny/kernel\",\"initrd\":\"" DIR_ "tiny/initrd\",\"append\":\"console=ttyS0\"}");
    sv_launch_input in = {
        .spec = s,
        .env = {.binary = "qemu-system-x86_64", .kvm = false, .sandbox = false},
        .disk = DIR_ "tiny/disk.qcow2",
        .serial_log = DIR_ "tiny/serial.log",
        .pidfile = "/run/qvisor/vm/tiny/qemu.pid",
        .seed_iso = DIR_ "tiny/seed.iso", /* not open: not passed */
        .ssh_port = 40022,
    };
    in.file[SV_PLAN_DISK - SV_PLAN_DISK] = in.file[SV_PLAN_BASE - SV_PLAN_DISK] = true;
    in.file[SV_PLAN_SERIAL - SV_PLAN_DISK] = true;
    in.file[SV_PLAN_KERNEL - SV_PLAN_DISK] = in.file[SV_PLAN_INITRD - SV_PLAN_DISK] = true;
    sv_launch_plan p;
    qv_error err = {0};
    assert_int_equal(sv_launch_plan_make(&in, &p, &err), 0);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_QGA, 0), 0);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_CONSOLE, 0), 4);
    assert_int_equal(sv_launch_plan_fd(&p, SV_PLAN_SEED, 0), 0);
    check_golden("plan-kernel-no-agent", &p);
    sv_launch_plan_clear(&p);
}

/* A plan that cannot be made leaves nothing behind (ASan checks). */
static void test_plan_refused(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *s =
        qv_test_spec("{\"name\":\"n\",\"image\":\"i\",\"nets\":[\"nat,ip=192.168.100.7,mac=0a:51:76:00:00:02\"]}");
    sv_launch_input in = {
        .spec = s,
        .env = {.binary = "qemu-system-x86_64"},
        .disk = DIR_ "n/disk.qcow2",
        .serial_log = DIR_ "n/serial.log",
        .pidfile = "/run/qvisor/vm/n/qemu.pid",
    };
    sv_launch_plan p = {0};
    qv_error err = {0};
    /* the nat NIC's TAP was not passed */
    assert_int_equal(sv_launch_plan_make(&in, &p, &err), -EINVAL);
    assert_null(p.argv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_default),
        cmocka_unit_test(test_plan_nics_uefi_gpu),
        cmocka_unit_test(test_plan_kernel_no_agent),
        cmocka_unit_test(test_plan_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
