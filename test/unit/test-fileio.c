/* Atomic file replacement, whole-file reads, mkdir -p, and the sysfs root. */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "sysroot.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

static void test_atomic_write_replaces_and_leaves_no_temp(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/state.json", dir);
    assert_int_equal(qv_write_file_atomic(path, "one", 3, 0600), 0);
    assert_int_equal(qv_write_file_atomic(path, "second", 6, 0640), 0);
    _cleanup_free_ char *data = NULL;
    size_t len;
    assert_int_equal(qv_read_file(path, 1024, &data, &len), 0);
    assert_int_equal(len, 6);
    assert_string_equal(data, "second");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
            entries++;
    closedir(d);
    assert_int_equal(entries, 1); /* no temp file left behind */
    /* a directory that does not exist fails cleanly */
    snprintf(path, sizeof path, "%s/missing/state.json", dir);
    assert_int_equal(qv_write_file_atomic(path, "x", 1, 0600), -ENOENT);
    qv_test_rm_rf(dir);
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void test_streaming_atomic_exchange_and_abort(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/seed.iso", dir);
    qv_test_write(dir, "seed.iso", "old");
    struct stat before;
    assert_int_equal(stat(path, &before), 0);

    /* abort: the old file stays, no temp file is left */
    qv_atomic a;
    assert_int_equal(qv_atomic_begin(path, 0644, &a), 0);
    assert_int_equal(qv_write_all(a.fd, "half", 4), 0);
    qv_atomic_abort(&a);
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_file(path, 64, &data, NULL), 0);
    assert_string_equal(data, "old");
    assert_int_equal(count_entries(dir), 1);

    /* non-durable commit swaps the new file in (a new inode) */
    assert_int_equal(qv_atomic_begin(path, 0600, &a), 0);
    assert_int_equal(qv_write_all(a.fd, "new", 3), 0);
    assert_int_equal(qv_atomic_commit(&a, 0), 0);
    free(data);
    data = NULL;
    assert_int_equal(qv_read_file(path, 64, &data, NULL), 0);
    assert_string_equal(data, "new");
    struct stat after;
    assert_int_equal(stat(path, &after), 0);
    assert_true(after.st_ino != before.st_ino);
    assert_int_equal(after.st_mode & 0777, 0600);
    assert_int_equal(count_entries(dir), 1);

    /* a directory in the way is never replaced */
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/d", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    assert_int_equal(qv_atomic_begin(sub, 0644, &a), 0);
    assert_int_equal(qv_atomic_commit(&a, 0), -EISDIR);
    assert_int_equal(count_entries(dir), 2);
    qv_test_rm_rf(dir);
}

static void test_read_limits(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    char big[10000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    qv_test_write(dir, "big", big);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/big", dir);
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_file(path, 4096, &data, NULL), -EFBIG);
    assert_int_equal(qv_read_file(path, 10000, &data, NULL), 0);
    assert_int_equal(strlen(data), sizeof big - 1);
    qv_test_rm_rf(dir);
}

static void test_mkdir_p(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/a/b/c", dir);
    assert_int_equal(qv_mkdir_p(path, 0755), 0);
    assert_int_equal(qv_mkdir_p(path, 0755), 0); /* existing is fine */
    qv_test_write(dir, "a/file", "x");
    snprintf(path, sizeof path, "%s/a/file", dir);
    assert_int_equal(qv_mkdir_p(path, 0755), -ENOTDIR);
    qv_test_rm_rf(dir);
}

static void test_sysroot_fake_tree(void **state) {
    (void)state;
    _cleanup_free_ char *root = qv_test_mkdtemp("qv-sysroot");
    qv_test_write(root, "sys/bus/pci/devices/0000:01:00.0/vendor", "0x10de\n");
    qv_test_write(root, "sys/bus/pci/devices/0000:01:00.0/driver_override", "(null)\n");
    char target[PATH_MAX], link[PATH_MAX];
    snprintf(target, sizeof target, "%s/sys/kernel/iommu_groups/7", root);
    assert_int_equal(qv_mkdir_p(target, 0755), 0);
    snprintf(link, sizeof link, "%s/sys/bus/pci/devices/0000:01:00.0/iommu_group", root);
    assert_int_equal(symlink("../../../../kernel/iommu_groups/7", link), 0);

    unsetenv("QVISOR_SYSROOT");
    assert_int_equal(qv_sysroot_set(root), 0);
    assert_string_equal(qv_sysroot_path(), root);
    char buf[64];
    assert_int_equal(qv_sysroot_read_line("/sys/bus/pci/devices/0000:01:00.0/vendor", buf, sizeof buf), 0);
    assert_string_equal(buf, "0x10de");
    assert_int_equal(qv_sysroot_write("sys/bus/pci/devices/0000:01:00.0/driver_override", "vfio-pci"), 0);
    assert_int_equal(qv_sysroot_read_line("sys/bus/pci/devices/0000:01:00.0/driver_override", buf, sizeof buf), 0);
    assert_string_equal(buf, "vfio-pci");
    assert_int_equal(qv_sysroot_readlink("sys/bus/pci/devices/0000:01:00.0/iommu_group", buf, sizeof buf), 0);
    assert_string_equal(buf, "../../../../kernel/iommu_groups/7");
    assert_int_equal(qv_sysroot_exists("sys/bus/pci/devices/0000:01:00.0/iommu_group"), 1);
    assert_int_equal(qv_sysroot_exists("sys/bus/pci/devices/0000:02:00.0"), 0);
    assert_int_equal(qv_sysroot_read_line("sys/nothing", buf, sizeof buf), -ENOENT);

    /* the environment variable wins over the configured root */
    _cleanup_free_ char *other = qv_test_mkdtemp("qv-sysroot2");
    qv_test_write(other, "proc/1/comm", "fake-init\n");
    setenv("QVISOR_SYSROOT", other, 1);
    assert_int_equal(qv_sysroot_set(root), 0);
    assert_int_equal(qv_sysroot_read_line("proc/1/comm", buf, sizeof buf), 0);
    assert_string_equal(buf, "fake-init");
    unsetenv("QVISOR_SYSROOT");
    assert_int_equal(qv_sysroot_set(NULL), 0);
    assert_string_equal(qv_sysroot_path(), "/");
    qv_sysroot_close();
    qv_test_rm_rf(root);
    qv_test_rm_rf(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_atomic_write_replaces_and_leaves_no_temp),
        cmocka_unit_test(test_streaming_atomic_exchange_and_abort),
        cmocka_unit_test(test_read_limits),
        cmocka_unit_test(test_mkdir_p),
        cmocka_unit_test(test_sysroot_fake_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
