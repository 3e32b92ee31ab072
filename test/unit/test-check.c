/* `qvisor check` items against small fake /sys and /proc trees written
 * into a temp dir (the sysfs root), the KVM item through the fake kernel
 * of test/lib/fakekvm.c, and the accelerator item against fake QEMU caps. */
#include "testlib.h"

#include "cleanup.h"
#include "fakekvm.h"
#include "fileio.h"
#include "sysroot.h"
#include "host/check.h"
#include "vfio/vfio.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *root;   /* the fake sysfs root */
static char *state;  /* root/state: state_dir */
static sv_config *cfg;
static sv_check_report rep;

static void set_path(char **field, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_path(char **field, const char *fmt, ...) {
    free(*field);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(field, fmt, ap) < 0)
        abort();
    va_end(ap);
}

static int setup(void **st) {
    (void)st;
    root = qv_test_mkdtemp("qv-check");
    unsetenv("QVISOR_SYSROOT");
    assert_int_equal(qv_sysroot_set(root), 0);
    cfg = sv_config_new_default();
    assert_non_null(cfg);
    set_path(&cfg->state_dir, "%s/state", root);
    set_path(&cfg->images_dir, "%s/state/images", root);
    set_path(&cfg->instances_dir, "%s/state/instances", root);
    set_path(&cfg->run_dir, "%s/run", root);
    state = cfg->state_dir;
    rep = (sv_check_report){0};
    return 0;
}

static int teardown(void **st) {
    (void)st;
    sv_check_report_clear(&rep);
    sv_config_free(cfg);
    qv_sysroot_set(NULL);
    qv_test_rm_rf(root);
    free(root);
    return 0;
}

static sv_check_opts opts(unsigned needs) {
    return (sv_check_opts){.config = cfg, .needs = needs, .kvm_device = FAKE_KVM_DEVICE, .kvm_ops = &fake_kvm_ops,
                           .kvm_timeout_ms = (int)qv_test_timeout_ms(5000)};
}

static void fresh(void) {
    sv_check_report_clear(&rep);
}

/* The n-th item called name (there is exactly n+1 or more). */
static const sv_check_item *item(const char *name, int n) {
    for (size_t i = 0; i < rep.n; i++)
        if (strcmp(rep.items[i].name, name) == 0 && n-- == 0)
            return &rep.items[i];
    fail_msg("no item %s", name);
    return NULL;
}

static size_t count(const char *name) {
    size_t c = 0;
    for (size_t i = 0; i < rep.n; i++)
        c += strcmp(rep.items[i].name, name) == 0;
    return c;
}

#define assert_contains(s, sub)                                                                                  \
    do {                                                                                                         \
        if (!strstr((s), (sub)))                                                                                 \
            fail_msg("'%s' does not contain '%s'", (s), (sub));                                                  \
    } while (0)
#define assert_lacks(s, sub)                                                                                     \
    do {                                                                                                         \
        if (strstr((s), (sub)))                                                                                  \
            fail_msg("'%s' contains '%s'", (s), (sub));                                                          \
    } while (0)

static void w(const char *rel, const char *content) {
    qv_test_write(root, rel, content);
}

static void mkd(const char *rel) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    assert_int_equal(qv_mkdir_p(path, 0755), 0);
}

/* A relative symlink at rel, as sysfs has them. */
static void ln(const char *target, const char *rel) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", path);
    *strrchr(parent, '/') = '\0';
    assert_int_equal(qv_mkdir_p(parent, 0755), 0);
    assert_int_equal(symlink(target, path), 0);
}

/* A PCI function under sys/devices/pci0000:00, linked from
 * sys/bus/pci/devices, in IOMMU group `group` (-1: none). */
static void pci_dev(const char *bdf, unsigned class_code, int group, bool bridge) {
    char rel[PATH_MAX], target[PATH_MAX], buf[32];
    snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/class", bdf);
    snprintf(buf, sizeof buf, "0x%06x\n", class_code);
    w(rel, buf);
    if (bridge) {
        snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/pci_bus", bdf);
        mkd(rel);
    }
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s", bdf);
    snprintf(target, sizeof target, "../../../devices/pci0000:00/%s", bdf);
    ln(target, rel);
    if (group < 0)
        return;
    snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/iommu_group", bdf);
    snprintf(target, sizeof target, "../../../kernel/iommu_groups/%d", group);
    ln(target, rel);
    snprintf(rel, sizeof rel, "sys/kernel/iommu_groups/%d/devices/%s", group, bdf);
    snprintf(target, sizeof target, "../../../../devices/pci0000:00/%s", bdf);
    ln(target, rel);
}

static void on_vfio_pci(const char *bdf) {
    char rel[PATH_MAX], target[PATH_MAX];
    snprintf(rel, sizeof rel, "sys/bus/pci/drivers/vfio-pci/%s", bdf);
    snprintf(target, sizeof target, "../../../../devices/pci0000:00/%s", bdf);
    ln(target, rel);
}

/* ---- needs and the report ----------------------------------------------- */

static void test_parse_needs(void **st) {
    (void)st;
    unsigned n = 0;
    assert_int_equal(sv_check_parse_needs("kvm", &n), 0);
    assert_int_equal(n, SV_NEED_KVM);
    assert_int_equal(sv_check_parse_needs("vfio,hugepages", &n), 0);
    assert_int_equal(n, SV_NEED_KVM | SV_NEED_VFIO | SV_NEED_HUGEPAGES);
    assert_int_equal(sv_check_parse_needs("uefi", &n), 0);
    assert_int_equal(n, SV_NEED_KVM | SV_NEED_VFIO | SV_NEED_HUGEPAGES | SV_NEED_UEFI);
    const char *bad[] = {"", "gpu", "kvm,", ",kvm", "kvm,,vfio", "KVM", "kvm vfio"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned m = SV_NEED_VFIO;
        assert_int_equal(sv_check_parse_needs(bad[i], &m), -EINVAL);
        assert_int_equal(m, SV_NEED_VFIO); /* untouched */
    }
    assert_string_equal(sv_check_status_name(SV_CHECK_OK), "ok");
    assert_string_equal(sv_check_status_name(SV_CHECK_WARN), "warn");
    assert_string_equal(sv_check_status_name(SV_CHECK_FAIL), "fail");
}

/* ---- CPU and IOMMU ---------------------------------------------------------- */

static const char intel_cpu[] = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse2\n\n"
                                "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse2\n";
static const char amd_cpu_no_svm[] = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm_lock sse2\n";

static void test_cpu_flags(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    w("proc/cpuinfo", intel_cpu);
    sv_check_cpu(&rep, &o);
    assert_int_equal(item("cpu", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("cpu", 0)->detail, "vmx (Intel VT-x)");

    fresh();
    w("proc/cpuinfo", amd_cpu_no_svm); /* svm_lock is not svm */
    sv_check_cpu(&rep, &o);
    assert_int_equal(item("cpu", 0)->status, SV_CHECK_WARN);
    assert_string_equal(item("cpu", 0)->detail, "no vmx or svm flag in /proc/cpuinfo");
    assert_contains(item("cpu", 0)->hint, "AMD-V (SVM)");
    /* advice, never a failure: the kvm item decides */
    fresh();
    o.needs = SV_NEED_KVM;
    sv_check_cpu(&rep, &o);
    assert_int_equal(item("cpu", 0)->status, SV_CHECK_WARN);
}

static void test_iommu_on(void **st) {
    (void)st;
    sv_check_opts o = opts(SV_NEED_VFIO);
    pci_dev("0000:00:02.0", 0x030000, 0, false);
    pci_dev("0000:00:1f.0", 0x060100, 1, false);
    sv_check_iommu(&rep, &o);
    assert_int_equal(item("iommu", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("iommu", 0)->detail, "2 IOMMU groups");
    assert_string_equal(item("iommu", 0)->hint, "");
}

static void test_iommu_off_intel(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    w("proc/cpuinfo", intel_cpu);
    w("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n");
    mkd("sys/kernel/iommu_groups"); /* empty: the IOMMU is off */
    sv_check_iommu(&rep, &o);
    const sv_check_item *it = item("iommu", 0);
    assert_int_equal(it->status, SV_CHECK_WARN);
    assert_contains(it->detail, "no IOMMU groups");
    assert_contains(it->hint, "add intel_iommu=on iommu=pt to the kernel command line");
    assert_contains(it->hint, "/proc/cmdline has no intel_iommu=on now");
    assert_contains(it->hint, "VT-d");

    /* asked for: a failure */
    fresh();
    o.needs = SV_NEED_VFIO;
    sv_check_iommu(&rep, &o);
    assert_int_equal(item("iommu", 0)->status, SV_CHECK_FAIL);

    /* the parameter is there already: the firmware is what is missing */
    fresh();
    w("proc/cmdline", "root=/dev/sda1 intel_iommu=on iommu=pt\n");
    sv_check_iommu(&rep, &o);
    assert_contains(item("iommu", 0)->hint, "intel_iommu=on is already on the kernel command line");
    assert_contains(item("iommu", 0)->hint, "iommu=pt is set");

    /* turned off on the command line */
    fresh();
    w("proc/cmdline", "root=/dev/sda1 intel_iommu=off\n");
    sv_check_iommu(&rep, &o);
    assert_contains(item("iommu", 0)->hint, "the kernel command line has intel_iommu=off: remove it");
}

static void test_iommu_off_amd(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    w("proc/cpuinfo", amd_cpu_no_svm);
    w("proc/cmdline", "root=/dev/sda1\n");
    /* no iommu_groups directory at all */
    sv_check_iommu(&rep, &o);
    const sv_check_item *it = item("iommu", 0);
    assert_int_equal(it->status, SV_CHECK_WARN);
    assert_contains(it->hint, "AMD-Vi");
    assert_contains(it->hint, "there is no amd_iommu=on");
    assert_contains(it->hint, "add iommu=pt");
    assert_lacks(it->hint, "intel_iommu");
}

/* ---- vfio ----------------------------------------------------------------- */

static void test_vfio_modules(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    sv_check_vfio_modules(&rep, &o);
    assert_int_equal(item("vfio", 0)->status, SV_CHECK_WARN);
    assert_string_equal(item("vfio", 0)->detail, "vfio and vfio_pci not loaded");
    assert_contains(item("vfio", 0)->hint, "modprobe vfio-pci");
    assert_contains(item("vfio", 0)->hint, "/etc/modules-load.d/");

    fresh();
    mkd("sys/module/vfio/parameters");
    o.needs = SV_NEED_VFIO;
    sv_check_vfio_modules(&rep, &o);
    assert_int_equal(item("vfio", 0)->status, SV_CHECK_FAIL);
    assert_string_equal(item("vfio", 0)->detail, "vfio_pci not loaded");

    fresh();
    mkd("sys/module/vfio_pci/parameters");
    sv_check_vfio_modules(&rep, &o);
    assert_int_equal(item("vfio", 0)->status, SV_CHECK_OK);
}

static void record(const char *bdf, const char *vm, const char *driver, int rec_state, const char *reason) {
    vfio_record r = {.state = rec_state};
    snprintf(r.bdf, sizeof r.bdf, "%s", bdf);
    snprintf(r.vm, sizeof r.vm, "%s", vm);
    snprintf(r.driver, sizeof r.driver, "%s", driver);
    snprintf(r.reason, sizeof r.reason, "%s", reason);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/vfio", state);
    assert_int_equal(vfio_record_save(dir, &r), 0);
}

static void test_vfio_devices(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    /* nothing on vfio-pci (no driver directory at all) */
    sv_check_vfio_devices(&rep, &o);
    assert_int_equal(count("vfio-pci"), 1);
    assert_int_equal(item("vfio-pci", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("vfio-pci", 0)->detail, "no devices on vfio-pci");

    pci_dev("0000:01:00.0", 0x030000, 1, false);
    pci_dev("0000:01:00.1", 0x040300, 1, false);
    pci_dev("0000:02:00.0", 0x030200, 2, false);
    pci_dev("0000:03:00.0", 0x030000, 3, false);
    on_vfio_pci("0000:01:00.0");
    on_vfio_pci("0000:01:00.1");
    on_vfio_pci("0000:02:00.0");
    on_vfio_pci("0000:03:00.0");
    w("sys/bus/pci/drivers/vfio-pci/bind", "");
    w("sys/bus/pci/drivers/vfio-pci/new_id", "");
    /* 01:00.0: VM web exists; 01:00.1: no record; 02:00.0: VM gone; 03:00.0: stuck */
    char vmdir[PATH_MAX];
    snprintf(vmdir, sizeof vmdir, "%s/state/instances/web", root);
    assert_int_equal(qv_mkdir_p(vmdir, 0755), 0);
    record("0000:01:00.0", "web", "nvidia", VFIO_REC_BOUND, "");
    record("0000:02:00.0", "gone", "amdgpu", VFIO_REC_BOUND, "");
    record("0000:03:00.0", "web", "nouveau", VFIO_REC_STUCK, "unbind did not return within 10 s");

    fresh();
    sv_check_vfio_devices(&rep, &o);
    assert_int_equal(count("vfio-pci"), 4);
    const sv_check_item *owned = item("vfio-pci", 0);
    assert_int_equal(owned->status, SV_CHECK_OK);
    assert_string_equal(owned->detail, "0000:01:00.0 (VGA compatible controller) owned by VM web (bound)");

    const sv_check_item *stray = item("vfio-pci", 1);
    assert_int_equal(stray->status, SV_CHECK_WARN);
    assert_contains(stray->detail, "0000:01:00.1 (Audio device) is on vfio-pci, not owned by any VM");
    assert_contains(stray->hint, "echo 0000:01:00.1 > /sys/bus/pci/drivers/vfio-pci/unbind");
    assert_contains(stray->hint, "give it back to its host driver");

    const sv_check_item *orphan = item("vfio-pci", 2);
    assert_int_equal(orphan->status, SV_CHECK_WARN);
    assert_string_equal(orphan->detail, "0000:02:00.0 (3D controller) is on vfio-pci for VM gone, which no longer exists");
    assert_contains(orphan->hint, "`qvisor cleanup` gives it back to amdgpu");

    const sv_check_item *stuck = item("vfio-pci", 3);
    assert_int_equal(stuck->status, SV_CHECK_WARN);
    assert_contains(stuck->detail, "held by VM web is stuck: unbind did not return within 10 s");

    /* strays never fail the check, even when vfio is needed */
    fresh();
    o.needs = SV_NEED_VFIO;
    sv_check_vfio_devices(&rep, &o);
    assert_true(sv_check_report_ok(&rep));
}

static void test_gpu_groups(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    sv_check_gpu_groups(&rep, &o);
    assert_int_equal(item("gpu", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("gpu", 0)->detail, "no PCI display devices");

    /* group 1: a GPU, its audio function, the root port above it (a
     * bridge) and a NIC in another slot; group 2: a GPU alone; group 3: a
     * GPU with its own audio function only */
    pci_dev("0000:00:01.0", 0x060400, 1, true);
    pci_dev("0000:01:00.0", 0x030000, 1, false);
    pci_dev("0000:01:00.1", 0x040300, 1, false);
    pci_dev("0000:02:00.0", 0x020000, 1, false);
    pci_dev("0000:05:00.0", 0x030200, 2, false);
    pci_dev("0000:06:00.0", 0x030000, 3, false);
    pci_dev("0000:06:00.1", 0x040300, 3, false);
    pci_dev("0000:07:00.0", 0x010802, 4, false);

    fresh();
    sv_check_gpu_groups(&rep, &o);
    assert_int_equal(count("gpu"), 3);
    const sv_check_item *shared = item("gpu", 0);
    assert_int_equal(shared->status, SV_CHECK_WARN);
    assert_string_equal(shared->detail, "0000:01:00.0 (VGA compatible controller) shares IOMMU group 1 with "
                                        "0000:02:00.0 (Ethernet controller)");
    assert_contains(shared->hint, "0000:02:00.0 would have to go to vfio-pci and the same VM too");
    assert_contains(shared->hint, "pcie_acs_override=downstream,multifunction");
    assert_contains(shared->hint, "DMA into each other");
    assert_contains(shared->hint, "security risk");
    assert_lacks(shared->hint, "0000:01:00.1");
    assert_lacks(shared->hint, "0000:00:01.0");

    assert_int_equal(item("gpu", 1)->status, SV_CHECK_OK);
    assert_string_equal(item("gpu", 1)->detail, "0000:05:00.0 (3D controller): alone in IOMMU group 2");
    assert_int_equal(item("gpu", 2)->status, SV_CHECK_OK);
    assert_string_equal(item("gpu", 2)->detail,
                        "0000:06:00.0 (VGA compatible controller): IOMMU group 3, with 0000:06:00.1 of its own slot");
    /* a warning, not a failure, even with --need vfio: the node can still pass through whole groups */
    fresh();
    o.needs = SV_NEED_VFIO;
    sv_check_gpu_groups(&rep, &o);
    assert_true(sv_check_report_ok(&rep));
}

static void test_gpu_without_iommu(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    pci_dev("0000:01:00.0", 0x030000, -1, false);
    sv_check_gpu_groups(&rep, &o);
    assert_int_equal(item("gpu", 0)->status, SV_CHECK_WARN);
    assert_string_equal(item("gpu", 0)->detail,
                        "0000:01:00.0 (VGA compatible controller): no IOMMU group, cannot be passed through");
}

/* ---- hugepages ---------------------------------------------------------- */

static void test_hugepages(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    w("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0\n");
    w("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "0\n");
    w("sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "0\n");
    w("sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", "0\n");
    sv_check_hugepages(&rep, &o);
    assert_int_equal(item("hugepages", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("hugepages", 0)->detail, "none reserved (2M: none; 1G: none)");

    fresh();
    o.needs = SV_NEED_HUGEPAGES;
    sv_check_hugepages(&rep, &o);
    assert_int_equal(item("hugepages", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("hugepages", 0)->hint, "nr_hugepages");
    assert_contains(item("hugepages", 0)->hint, "hugepages=N");

    fresh();
    w("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "512\n");
    w("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "500\n");
    sv_check_hugepages(&rep, &o);
    assert_int_equal(item("hugepages", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("hugepages", 0)->detail, "2M: 512 reserved, 500 free; 1G: none");

    fresh();
    w("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "0\n");
    sv_check_hugepages(&rep, &o);
    assert_int_equal(item("hugepages", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("hugepages", 0)->hint, "in use");

    /* a kernel without them */
    fresh();
    qv_test_rm_rf(root); /* leaves nothing: every directory goes */
    assert_int_equal(qv_mkdir_p(root, 0755), 0);
    assert_int_equal(qv_sysroot_set(root), 0);
    sv_check_hugepages(&rep, &o);
    assert_int_equal(item("hugepages", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("hugepages", 0)->detail, "no hugepage sizes");
}

/* ---- directories -------------------------------------------------------- */

/* ---- UEFI firmware ------------------------------------------------------------ */

static void test_firmware(void **st) {
    (void)st;
    /* a node without OVMF: WARN, FAIL only with --need uefi */
    set_path(&cfg->firmware_dir, "%s/fw", root);
    w("fw/README", "nothing here");
    sv_check_opts o = opts(0);
    sv_check_firmware(&rep, &o);
    assert_int_equal(rep.n, 2);
    assert_int_equal(item("ovmf", 0)->status, SV_CHECK_WARN);
    assert_contains(item("ovmf", 0)->detail, "OVMF_CODE_4M.fd is missing");
    assert_contains(item("ovmf", 0)->hint, "apt-get install ovmf");
    assert_int_equal(item("ovmf-secure", 0)->status, SV_CHECK_WARN);
    assert_true(sv_check_report_ok(&rep));
    fresh();
    o = opts(SV_NEED_UEFI);
    sv_check_firmware(&rep, &o);
    assert_int_equal(item("ovmf", 0)->status, SV_CHECK_FAIL);
    assert_int_equal(item("ovmf-secure", 0)->status, SV_CHECK_FAIL);
    assert_false(sv_check_report_ok(&rep));
    /* the plain build only */
    fresh();
    w("fw/OVMF_CODE_4M.fd", "code");
    w("fw/OVMF_VARS_4M.fd", "vars");
    sv_check_firmware(&rep, &o);
    assert_int_equal(item("ovmf", 0)->status, SV_CHECK_OK);
    assert_contains(item("ovmf", 0)->detail, "/fw/OVMF_CODE_4M.fd with ");
    assert_int_equal(item("ovmf-secure", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("ovmf-secure", 0)->detail, "OVMF_CODE_4M.secboot.fd is missing");
}

static void test_dirs(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    char path[PATH_MAX];
    /* state exists; images and instances do not (their parent is writable);
     * run is below a regular file, so it can never be created */
    snprintf(path, sizeof path, "%s/state", root);
    assert_int_equal(qv_mkdir_p(path, 0755), 0);
    w("file", "x");
    set_path(&cfg->run_dir, "%s/file/run", root);
    sv_check_dirs(&rep, &o);
    assert_int_equal(rep.n, 4);
    assert_int_equal(item("state-dir", 0)->status, SV_CHECK_OK);
    assert_contains(item("state-dir", 0)->detail, "/state (writable)");
    assert_int_equal(item("images-dir", 0)->status, SV_CHECK_OK);
    assert_contains(item("images-dir", 0)->detail, "/state/images does not exist yet; it can be created in");
    assert_int_equal(item("instances-dir", 0)->status, SV_CHECK_OK);
    const sv_check_item *run = item("run-dir", 0);
    assert_int_equal(run->status, SV_CHECK_FAIL);
    assert_contains(run->detail, "/file/run does not exist and cannot be created");
    assert_contains(run->hint, "mkdir -p");
    assert_false(sv_check_report_ok(&rep));
    /* check created nothing */
    snprintf(path, sizeof path, "%s/state/images", root);
    struct stat sb;
    assert_int_equal(stat(path, &sb), -1);

    /* an existing file where a directory belongs */
    fresh();
    set_path(&cfg->run_dir, "%s/file", root);
    sv_check_dirs(&rep, &o);
    assert_int_equal(item("run-dir", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("run-dir", 0)->detail, "exists and is not a directory");

    /* not writable: only testable when not root (root may write anywhere) */
    if (geteuid() != 0) {
        fresh();
        snprintf(path, sizeof path, "%s/ro", root);
        assert_int_equal(mkdir(path, 0555), 0);
        set_path(&cfg->run_dir, "%s/ro/run", root);
        sv_check_dirs(&rep, &o);
        assert_int_equal(item("run-dir", 0)->status, SV_CHECK_FAIL);
    }
}

/* ---- KVM and the accelerator --------------------------------------------- */

static void test_kvm_item(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    fake_kvm_set(&(fake_kvm){.run = FAKE_RUN_WORKS});
    sv_check_kvm(&rep, &o);
    assert_int_equal(item("kvm", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("kvm", 0)->detail, FAKE_KVM_DEVICE " API 12, vCPU runs (real, protected and long mode)");

    /* present but unusable, accelerator auto: a warning that VMs use TCG */
    fresh();
    fake_kvm_set(&(fake_kvm){.run = FAKE_RUN_INTERNAL_ERROR});
    sv_check_kvm(&rep, &o);
    const sv_check_item *it = item("kvm", 0);
    assert_int_equal(it->status, SV_CHECK_WARN);
    assert_string_equal(it->detail, FAKE_KVM_DEVICE " present but unusable: KVM_RUN: emulation failure entering "
                                    "protected mode");
    assert_contains(it->hint, "VMs will run with TCG, much slower");

    /* --need kvm, or accelerator kvm: a failure */
    fresh();
    o.needs = SV_NEED_KVM;
    sv_check_kvm(&rep, &o);
    assert_int_equal(item("kvm", 0)->status, SV_CHECK_FAIL);
    fresh();
    o.needs = 0;
    cfg->accelerator = SV_ACCEL_KVM;
    sv_check_kvm(&rep, &o);
    assert_int_equal(item("kvm", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("kvm", 0)->hint, "VMs will not start");

    /* absent, denied, hung */
    cfg->accelerator = SV_ACCEL_AUTO;
    fresh();
    fake_kvm_set(&(fake_kvm){.open_error = ENOENT});
    sv_check_kvm(&rep, &o);
    assert_int_equal(item("kvm", 0)->status, SV_CHECK_WARN);
    assert_string_equal(item("kvm", 0)->detail, "no " FAKE_KVM_DEVICE);
    assert_contains(item("kvm", 0)->hint, "kvm_intel or kvm_amd");
    fresh();
    fake_kvm_set(&(fake_kvm){.open_error = EACCES});
    sv_check_kvm(&rep, &o);
    assert_string_equal(item("kvm", 0)->detail, FAKE_KVM_DEVICE ": Permission denied");
    assert_contains(item("kvm", 0)->hint, "kvm");
    fresh();
    fake_kvm_set(&(fake_kvm){.run = FAKE_RUN_HANG});
    o.kvm_timeout_ms = (int)qv_test_timeout_ms(300);
    sv_check_kvm(&rep, &o);
    assert_contains(item("kvm", 0)->detail, "present but unusable: KVM_RUN did not return");
    assert_contains(item("kvm", 0)->hint, "cannot run the start-up code every guest runs");
}

static sv_qemu_caps caps_with(bool kvm, const char *detail) {
    sv_qemu_caps c = {.major = 7, .minor = 2, .micro = 22, .sandbox = true, .kvm = kvm};
    snprintf(c.version, sizeof c.version, "7.2.22");
    snprintf(c.kvm_detail, sizeof c.kvm_detail, "%s", detail);
    return c;
}

static void test_accel_item(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    sv_qemu_caps broken = caps_with(false, "QEMU aborted: failed to set MSR 0x10a to 0x69");
    sv_qemu_caps works = caps_with(true, "KVM works");

    sv_check_accel(&rep, &o, &broken); /* auto */
    assert_int_equal(item("accel", 0)->status, SV_CHECK_WARN);
    assert_string_equal(item("accel", 0)->detail,
                        "KVM is unusable on this node (QEMU aborted: failed to set MSR 0x10a to 0x69); accelerator "
                        "auto falls back to TCG, which is much slower");
    fresh();
    o.needs = SV_NEED_KVM;
    sv_check_accel(&rep, &o, &broken);
    assert_int_equal(item("accel", 0)->status, SV_CHECK_FAIL);

    fresh();
    o.needs = 0;
    cfg->accelerator = SV_ACCEL_KVM;
    sv_check_accel(&rep, &o, &broken);
    assert_int_equal(item("accel", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("accel", 0)->detail, "accelerator kvm is configured but KVM is unusable on this node");
    fresh();
    sv_check_accel(&rep, &o, &works);
    assert_int_equal(item("accel", 0)->status, SV_CHECK_OK);
    assert_string_equal(item("accel", 0)->detail, "kvm: VMs use KVM (QEMU ran a guest under KVM with -cpu host)");

    fresh();
    cfg->accelerator = SV_ACCEL_TCG;
    sv_check_accel(&rep, &o, &broken);
    assert_int_equal(item("accel", 0)->status, SV_CHECK_OK);
    assert_contains(item("accel", 0)->detail, "tcg is configured: VMs use TCG");
    fresh();
    o.needs = SV_NEED_KVM;
    sv_check_accel(&rep, &o, &works);
    assert_int_equal(item("accel", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("accel", 0)->hint, "qemu.accelerator: auto");

    /* QEMU did not run at all */
    fresh();
    o.needs = 0;
    cfg->accelerator = SV_ACCEL_AUTO;
    sv_check_accel(&rep, &o, NULL);
    assert_int_equal(item("accel", 0)->status, SV_CHECK_WARN);
    assert_contains(item("accel", 0)->detail, "QEMU does not run");
}

static void test_missing_binaries(void **st) {
    (void)st;
    sv_check_opts o = opts(0);
    set_path(&cfg->qemu_binary, "%s/no-such-qemu", root);
    set_path(&cfg->qemu_img_binary, "%s/no-such-qemu-img", root);
    sv_qemu_caps caps;
    bool ran = true;
    sv_check_qemu(&rep, &o, &caps, &ran);
    assert_false(ran);
    sv_check_qemu_img(&rep, &o);
    assert_int_equal(item("qemu", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("qemu", 0)->detail, "No such file or directory");
    assert_contains(item("qemu", 0)->hint, "qemu.binary");
    assert_int_equal(item("qemu-img", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("qemu-img", 0)->detail, "cannot run");
    assert_contains(item("qemu-img", 0)->hint, "qemu.img_binary");
    assert_false(sv_check_report_ok(&rep));

    /* a qemu-img that prints no version */
    fresh();
    char fake[PATH_MAX];
    snprintf(fake, sizeof fake, "%s/qemu-img", root);
    w("qemu-img", "#!/bin/sh\necho 'usage: nothing'\nexit 1\n");
    assert_int_equal(chmod(fake, 0755), 0);
    set_path(&cfg->qemu_img_binary, "%s", fake);
    sv_check_qemu_img(&rep, &o);
    assert_int_equal(item("qemu-img", 0)->status, SV_CHECK_FAIL);
    assert_contains(item("qemu-img", 0)->detail, "exited with status 1 and printed no version");

    fresh();
    w("qemu-img", "#!/bin/sh\necho 'qemu-img version 9.1.0 (fake)'\necho 'Copyright'\n");
    sv_check_qemu_img(&rep, &o);
    assert_int_equal(item("qemu-img", 0)->status, SV_CHECK_OK);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof want, "%s 9.1.0 (fake)", fake);
    assert_string_equal(item("qemu-img", 0)->detail, want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parse_needs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_firmware, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cpu_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iommu_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iommu_off_intel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iommu_off_amd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vfio_modules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vfio_devices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gpu_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gpu_without_iommu, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hugepages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kvm_item, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accel_item, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_binaries, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
