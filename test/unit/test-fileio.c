/* Atomic file replacement, whole-file reads, mkdir -p, and the sysfs root. */
#include "testlib.h"

#include "cleanup.h"
#include "fileio.h"
#include "sysroot.h"

#include <errno.h>
#include <stdbool.h>
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

/* the ordered (no fsync) strength replaces the same way, through a dirfd */
static void test_atomic_ordered_at(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    for (int i = 0; i < 3; i++) {
        char text[16];
        int n = snprintf(text, sizeof text, "version %d", i);
        assert_int_equal(qv_write_file_atomic_flags_at(dfd, "state.json", text, (size_t)n, 0640, QV_ATOMIC_ORDERED),
                         0);
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/state.json", dir);
        _cleanup_free_ char *data = NULL;
        size_t len;
        assert_int_equal(qv_read_file(path, 1024, &data, &len), 0);
        assert_string_equal(data, text);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0640);
    }
    assert_int_equal(count_entries(dir), 1); /* no temp file left behind */
    assert_int_equal(qv_write_file_atomic_flags_at(dfd, "a/b", "x", 1, 0600, QV_ATOMIC_ORDERED), -EINVAL);
    qv_test_rm_rf(dir);
}

/* keep_old: the replaced file stays alive (unlinked, held by an O_PATH
 * fd) until the caller closes it; nothing is held when nothing was
 * replaced or the commit failed. */
static void test_atomic_keep_old(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    int old = 7;
    assert_int_equal(
        qv_write_file_atomic_keep_old_at(dfd, "state.json", "one", 3, 0640, QV_ATOMIC_ORDERED, NULL, &old), 0);
    assert_int_equal(old, -1); /* nothing was there */
    struct stat first, held, now;
    assert_int_equal(fstatat(dfd, "state.json", &first, 0), 0);
    assert_int_equal(
        qv_write_file_atomic_keep_old_at(dfd, "state.json", "two", 3, 0640, QV_ATOMIC_ORDERED, NULL, &old), 0);
    assert_true(old >= 0);
    assert_int_equal(fstat(old, &held), 0);
    assert_true(held.st_ino == first.st_ino && held.st_dev == first.st_dev);
    assert_int_equal(held.st_nlink, 0); /* no longer in the directory, not yet freed */
    assert_int_equal(fstatat(dfd, "state.json", &now, 0), 0);
    assert_true(now.st_ino != first.st_ino);
    assert_int_equal(fcntl(old, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    close(old);
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_file_at(dfd, "state.json", 64, &data, NULL), 0);
    assert_string_equal(data, "two");
    assert_int_equal(count_entries(dir), 1);
    /* durable and plain replacements hold the old file the same way */
    assert_int_equal(
        qv_write_file_atomic_keep_old_at(dfd, "state.json", "three", 5, 0640, QV_ATOMIC_DURABLE, NULL, &old), 0);
    assert_int_equal(fstat(old, &held), 0);
    assert_true(held.st_ino == now.st_ino && held.st_nlink == 0);
    close(old);
    assert_int_equal(qv_write_file_atomic_keep_old_at(dfd, "state.json", "four", 4, 0640, 0, NULL, &old), 0);
    assert_true(old >= 0);
    assert_int_equal(fstat(old, &held), 0);
    assert_int_equal(held.st_nlink, 0);
    close(old);
    assert_int_equal(count_entries(dir), 1);
    /* a failed commit (a directory in the way) holds nothing */
    assert_int_equal(mkdirat(dfd, "d", 0700), 0);
    old = 7;
    assert_true(qv_write_file_atomic_keep_old_at(dfd, "d", "x", 1, 0640, QV_ATOMIC_ORDERED, NULL, &old) < 0);
    assert_int_equal(old, -1);
    assert_int_equal(count_entries(dir), 2);
    qv_test_rm_rf(dir);
}

/* A visible replacement goes into the file made ahead for it, when that
 * is there as prepare made it; anything else under that name is removed
 * and a temp file used; prepare never touches what is there. */
static void test_atomic_prepared(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    /* none made yet: a temp file, as ever */
    assert_int_equal(qv_write_file_atomic_keep_old_at(dfd, "state.json", "one", 3, 0640, QV_ATOMIC_ORDERED, ".next",
                                                      NULL),
                     0);
    assert_int_equal(count_entries(dir), 1);
    /* made ahead: that very file becomes state.json */
    assert_int_equal(qv_atomic_prepare_at(dfd, ".next", 0640), 0);
    struct stat made, now;
    assert_int_equal(fstatat(dfd, ".next", &made, AT_SYMLINK_NOFOLLOW), 0);
    assert_true(S_ISREG(made.st_mode) && made.st_size == 0);
    assert_int_equal(qv_write_file_atomic_keep_old_at(dfd, "state.json", "two", 3, 0640, QV_ATOMIC_ORDERED, ".next",
                                                      NULL),
                     0);
    assert_int_equal(fstatat(dfd, "state.json", &now, 0), 0);
    assert_true(now.st_ino == made.st_ino);
    assert_int_equal(faccessat(dfd, ".next", F_OK, AT_SYMLINK_NOFOLLOW), -1);
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_file_at(dfd, "state.json", 64, &data, NULL), 0);
    assert_string_equal(data, "two");
    /* prepare leaves what is there alone, even when it is not empty */
    qv_test_write(dir, ".next", "left by a write cut short");
    assert_int_equal(qv_atomic_prepare_at(dfd, ".next", 0640), 0);
    free(data);
    data = NULL;
    assert_int_equal(qv_read_file_at(dfd, ".next", 64, &data, NULL), 0);
    assert_string_equal(data, "left by a write cut short");
    /* ... and the write does not use it: removed, a temp file instead */
    assert_int_equal(qv_write_file_atomic_keep_old_at(dfd, "state.json", "three", 5, 0640, QV_ATOMIC_ORDERED,
                                                      ".next", NULL),
                     0);
    assert_int_equal(count_entries(dir), 1);
    free(data);
    data = NULL;
    assert_int_equal(qv_read_file_at(dfd, "state.json", 64, &data, NULL), 0);
    assert_string_equal(data, "three");
    /* a symlink under the name is not followed: removed, its target kept */
    qv_test_write(dir, "target", "keep");
    assert_int_equal(symlinkat("target", dfd, ".next"), 0);
    assert_int_equal(qv_atomic_prepare_at(dfd, ".next", 0640), 0);
    assert_int_equal(qv_write_file_atomic_keep_old_at(dfd, "state.json", "four", 4, 0640, QV_ATOMIC_ORDERED, ".next",
                                                      NULL),
                     0);
    assert_int_equal(faccessat(dfd, ".next", F_OK, AT_SYMLINK_NOFOLLOW), -1);
    free(data);
    data = NULL;
    assert_int_equal(qv_read_file_at(dfd, "target", 64, &data, NULL), 0);
    assert_string_equal(data, "keep");
    assert_int_equal(qv_atomic_prepare_at(dfd, "a/b", 0640), -EINVAL);
    qv_test_rm_rf(dir);
}

/* a group commit replaces each file as a single commit would; one that
 * cannot be renamed in (a directory in its place) fails alone and leaves
 * no temp file, the others are replaced */
static void test_atomic_commit_group(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    enum { N = 4 };
    char names[N][16], path[PATH_MAX];
    qv_atomic a[N];
    int ret[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "f%d", i);
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (i == 2)
            assert_int_equal(mkdir(path, 0755), 0); /* cannot be replaced */
        else
            qv_test_write(dir, names[i], "old");
        assert_int_equal(qv_atomic_begin(path, 0640, &a[i]), 0);
        char text[16];
        int n = snprintf(text, sizeof text, "new %d", i);
        assert_int_equal(qv_write_all(a[i].fd, text, (size_t)n), 0);
    }
    qv_atomic_commit_group(a, N, ret);
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (i == 2) {
            assert_true(ret[i] < 0);
            struct stat st;
            assert_int_equal(stat(path, &st), 0);
            assert_true(S_ISDIR(st.st_mode));
            continue;
        }
        assert_int_equal(ret[i], 0);
        _cleanup_free_ char *data = NULL;
        assert_int_equal(qv_read_file(path, 64, &data, NULL), 0);
        char want[16];
        snprintf(want, sizeof want, "new %d", i);
        assert_string_equal(data, want);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0640);
        assert_int_equal(a[i].fd, -1); /* consumed */
    }
    assert_int_equal(count_entries(dir), N); /* no temp file left behind */
    qv_atomic_commit_group(a, 0, ret);      /* an empty group is nothing */
    qv_test_rm_rf(dir);
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

static ino_t inode_of(const char *dir, const char *name) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    return st.st_ino;
}

static void assert_content(const char *dir, const char *name, const char *want) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_file(path, 64, &data, NULL), 0);
    assert_string_equal(data, want);
}

/* One durable replacement through the spare, as a group of one. */
static int spare_write(const char *dir, const char *text, bool *ret_spare) {
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    qv_atomic a;
    int r = qv_atomic_begin_spare_at(dfd, "state.json", ".spare", 0640, &a);
    if (r < 0)
        return r;
    *ret_spare = a.spare;
    assert_int_equal(qv_write_all(a.fd, text, strlen(text)), 0);
    qv_atomic_commit_group(&a, 1, &r);
    assert_int_equal(a.fd, -1);
    return r;
}

static void test_atomic_spare(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    bool spare = false;
    /* nothing there yet: the spare is made and renamed in */
    assert_int_equal(spare_write(dir, "first version", &spare), 0);
    assert_true(spare);
    assert_content(dir, "state.json", "first version");
    assert_int_equal(count_entries(dir), 1);
    /* from then on the two files swap: no inode is made or freed */
    assert_int_equal(spare_write(dir, "second", &spare), 0);
    ino_t a = inode_of(dir, "state.json"), b = inode_of(dir, ".spare");
    assert_content(dir, "state.json", "second");
    assert_content(dir, ".spare", "first version");
    assert_int_equal(spare_write(dir, "3", &spare), 0); /* shorter: the old tail is cut */
    assert_content(dir, "state.json", "3");
    assert_true(inode_of(dir, "state.json") == b && inode_of(dir, ".spare") == a);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/state.json", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    assert_int_equal(count_entries(dir), 2);
    assert_int_equal(qv_atomic_begin_spare_at(AT_FDCWD, "state.json", "state.json", 0640, &(qv_atomic){0}),
                     -EINVAL);
}

/* A spare that is not a plain file of ours is never written through: the
 * replacement takes a temp file, and what was planted stays as it was. */
static void test_atomic_spare_planted(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    _cleanup_free_ char *outside = qv_test_mkdtemp("qv-fileio-out");
    qv_test_write(outside, "victim", "keep");
    char path[PATH_MAX], target[PATH_MAX];
    snprintf(target, sizeof target, "%s/victim", outside);
    bool spare = true;
    /* a symlink */
    snprintf(path, sizeof path, "%s/.spare", dir);
    assert_int_equal(symlink(target, path), 0);
    assert_int_equal(spare_write(dir, "v1", &spare), 0);
    assert_false(spare);
    assert_content(dir, "state.json", "v1");
    assert_content(outside, "victim", "keep");
    /* a second link of another file */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(link(target, path), 0);
    assert_int_equal(spare_write(dir, "v2", &spare), 0);
    assert_false(spare);
    assert_content(dir, "state.json", "v2");
    assert_content(outside, "victim", "keep");
    /* a FIFO: no hang */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(spare_write(dir, "v3", &spare), 0);
    assert_false(spare);
    assert_content(dir, "state.json", "v3");
    assert_int_equal(lstat(path, &(struct stat){0}), 0);
    assert_int_equal(count_entries(dir), 2); /* state.json and the FIFO: no temp file left */
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
    free(data);
    data = NULL;
    /* exactly max bytes fit; one more does not, also under 4 KiB */
    assert_int_equal(qv_read_file(path, sizeof big - 1, &data, NULL), 0);
    assert_int_equal(strlen(data), sizeof big - 1);
    free(data);
    data = NULL;
    assert_int_equal(qv_read_file(path, 100, &data, NULL), -EFBIG);
    qv_test_write(dir, "small", "0123456789");
    snprintf(path, sizeof path, "%s/small", dir);
    assert_int_equal(qv_read_file(path, 9, &data, NULL), -EFBIG);
    assert_int_equal(qv_read_file(path, 10, &data, NULL), 0);
    assert_string_equal(data, "0123456789");
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

static bool exists_nofollow(const char *dir, const char *name) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return lstat(p, &st) == 0;
}

/* The victim: a file and a directory outside the tree being removed, reached
 * only through symlinks planted inside it. */
static void test_rm_rf_at_never_follows(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    qv_test_write(dir, "outside/keep", "precious");
    qv_test_write(dir, "outside/sub/keep2", "precious");
    qv_test_write(dir, "tree/a/b/file", "x");
    qv_test_write(dir, "tree/top", "x");
    char p[PATH_MAX], t[PATH_MAX];
    snprintf(t, sizeof t, "%s/outside/keep", dir);
    snprintf(p, sizeof p, "%s/tree/disk.qcow2", dir);
    assert_int_equal(symlink(t, p), 0);
    snprintf(t, sizeof t, "%s/outside", dir);
    snprintf(p, sizeof p, "%s/tree/a/linkdir", dir);
    assert_int_equal(symlink(t, p), 0);
    snprintf(p, sizeof p, "%s/tree/fifo", dir);
    assert_int_equal(mkfifo(p, 0600), 0);

    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    assert_int_equal(qv_rm_rf_at(dfd, "tree"), 0);
    assert_false(exists_nofollow(dir, "tree"));
    assert_true(exists_nofollow(dir, "outside/keep"));
    assert_true(exists_nofollow(dir, "outside/sub/keep2"));
    assert_int_equal(qv_rm_rf_at(dfd, "tree"), 0); /* missing is fine */

    /* the name itself a symlink to a directory: the link goes, not the directory's content */
    snprintf(t, sizeof t, "%s/outside", dir);
    snprintf(p, sizeof p, "%s/.vm.removing", dir);
    assert_int_equal(symlink(t, p), 0);
    assert_int_equal(qv_rm_rf_at(dfd, ".vm.removing"), 0);
    assert_false(exists_nofollow(dir, ".vm.removing"));
    assert_true(exists_nofollow(dir, "outside/keep"));
    /* the path form too */
    assert_int_equal(symlink(t, p), 0);
    assert_int_equal(qv_rm_rf(p), 0);
    assert_true(exists_nofollow(dir, "outside/keep"));
    assert_false(exists_nofollow(dir, ".vm.removing"));

    assert_int_equal(qv_rm_rf_at(dfd, ".."), -EINVAL);
    assert_int_equal(qv_rm_rf_at(dfd, "outside/keep"), -EINVAL);
    assert_int_equal(qv_open_dir_at(dfd, "nothing"), -ENOENT);
    snprintf(p, sizeof p, "%s/dirlink", dir);
    assert_int_equal(symlink(t, p), 0);
    assert_int_equal(qv_open_dir_at(dfd, "dirlink"), -ENOTDIR); /* O_DIRECTORY|O_NOFOLLOW on a link */
    int fd = qv_open_dir_at(dfd, "outside");
    assert_true(fd >= 0);
    close(fd);
    qv_test_rm_rf(dir);
}

static void test_create_at_and_unlink_own(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    qv_test_write(dir, "outside", "precious");
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char p[PATH_MAX], t[PATH_MAX];
    snprintf(t, sizeof t, "%s/outside", dir);
    snprintf(p, sizeof p, "%s/vm.qcow2", dir);
    assert_int_equal(symlink(t, p), 0);
    snprintf(p, sizeof p, "%s/dangling.qcow2", dir);
    assert_int_equal(symlink("/nonexistent/qv-test-target", p), 0);

    /* a planted link, dangling or not, is EEXIST: nothing is created through it */
    mode_t old = umask(0);
    assert_int_equal(qv_create_at(dfd, "vm.qcow2", O_WRONLY, 0600), -EEXIST);
    assert_int_equal(qv_create_at(dfd, "dangling.qcow2", O_WRONLY, 0600), -EEXIST);
    assert_int_equal(access("/nonexistent/qv-test-target", F_OK), -1);
    int fd = qv_create_at(dfd, "new.qcow2", O_RDWR, 0600);
    umask(old);
    assert_true(fd >= 0);
    struct stat st, want;
    assert_int_equal(fstat(fd, &want), 0);
    assert_int_equal(want.st_mode & 07777, 0600); /* whatever the umask */
    /* the fd's path reaches the same file whatever its name becomes */
    char fp[64];
    assert_int_equal(qv_fd_path(fd, fp, sizeof fp), 0);
    assert_int_equal(renameat(dfd, "new.qcow2", dfd, "moved.qcow2"), 0);
    assert_int_equal(stat(fp, &st), 0);
    assert_int_equal(st.st_ino, want.st_ino);
    assert_int_equal(renameat(dfd, "moved.qcow2", dfd, "new.qcow2"), 0);
    close(fd);

    /* unlink only what is ours: not a link, not another file under the name */
    assert_int_equal(qv_unlink_own_file_at(dfd, "vm.qcow2", NULL), -EPERM);
    assert_true(exists_nofollow(dir, "vm.qcow2"));
    assert_int_equal(qv_unlink_own_file_at(dfd, "outside", &want), -EPERM);
    assert_int_equal(linkat(dfd, "new.qcow2", dfd, "hard", 0), 0);
    assert_int_equal(qv_unlink_own_file_at(dfd, "new.qcow2", &want), -EPERM); /* two links */
    assert_int_equal(unlinkat(dfd, "hard", 0), 0);
    assert_int_equal(qv_unlink_own_file_at(dfd, "new.qcow2", &want), 0);
    assert_int_equal(qv_unlink_own_file_at(dfd, "new.qcow2", &want), -ENOENT);
    assert_true(exists_nofollow(dir, "outside"));

    /* open-or-create of a regular file only: never through a link, never a FIFO */
    assert_int_equal(qv_open_regular_at(dfd, "vm.qcow2", O_WRONLY, 0640), -ELOOP);
    snprintf(p, sizeof p, "%s/fifo", dir);
    assert_int_equal(mkfifo(p, 0600), 0);
    assert_int_equal(qv_open_regular_at(dfd, "fifo", O_WRONLY, 0640), -EINVAL);
    fd = qv_open_regular_at(dfd, "serial.log", O_WRONLY | O_APPEND, 0640);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    close(fd);
    qv_test_rm_rf(dir);
}

static int commit_regular(const char *path) {
    qv_atomic a;
    int r = qv_atomic_begin(path, 0644, &a);
    if (r < 0)
        return r;
    assert_int_equal(qv_write_all(a.fd, "new", 3), 0);
    return qv_atomic_commit(&a, QV_ATOMIC_REGULAR);
}

static void test_atomic_regular_only(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    qv_test_write(dir, "target", "old");
    char p[PATH_MAX], t[PATH_MAX];
    snprintf(p, sizeof p, "%s/out", dir);
    assert_int_equal(commit_regular(p), 0); /* absent: created */
    assert_int_equal(commit_regular(p), 0); /* a regular file: replaced */
    snprintf(p, sizeof p, "%s/fifo", dir);
    assert_int_equal(mkfifo(p, 0600), 0);
    assert_int_equal(commit_regular(p), -EEXIST);
    struct stat st;
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    snprintf(t, sizeof t, "%s/target", dir);
    snprintf(p, sizeof p, "%s/link", dir);
    assert_int_equal(symlink(t, p), 0);
    assert_int_equal(commit_regular(p), -EEXIST);
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_file(t, 64, &data, NULL), 0);
    assert_string_equal(data, "old");
    assert_int_equal(count_entries(dir), 4); /* target out fifo link: no temp file left */
    qv_test_rm_rf(dir);
}

/* The instance-directory helpers: a directory replaced by a symlink is not
 * entered, a file replaced by a symlink (or a FIFO) is not read, and an
 * atomic write relative to a directory fd lands in that directory. */
static void test_dir_fd_helpers(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-fileio");
    char sub[PATH_MAX], link[PATH_MAX], p[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/real", dir);
    snprintf(link, sizeof link, "%s/link", dir);
    assert_int_equal(mkdir(sub, 0750), 0);
    assert_int_equal(symlink(sub, link), 0);
    int r = qv_open_dir_nofollow(link);
    assert_true(r == -ENOTDIR || r == -ELOOP); /* O_DIRECTORY | O_NOFOLLOW on a link: ENOTDIR */
    int dfd = qv_open_dir_nofollow(sub);
    assert_true(dfd >= 0);
    assert_int_equal(qv_write_file_atomic_at(dfd, "state.json", "{}\n", 3, 0640), 0);
    assert_int_equal(qv_write_file_atomic_at(dfd, "a/b", "x", 1, 0640), -EINVAL);
    _cleanup_free_ char *data = NULL;
    assert_int_equal(qv_read_regular_file_at(dfd, "state.json", 64, &data, NULL), 0);
    assert_string_equal(data, "{}\n");
    struct stat st;
    snprintf(p, sizeof p, "%s/state.json", sub);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(qv_read_regular_file_at(dfd, "state.json", 2, &data, NULL), -EFBIG);
    qv_test_write(dir, "secret", "root only");
    snprintf(p, sizeof p, "%s/secret", dir);
    assert_int_equal(symlinkat(p, dfd, "spec.json"), 0);
    assert_int_equal(qv_read_regular_file_at(dfd, "spec.json", 64, &data, NULL), -ELOOP);
    assert_int_equal(mkfifoat(dfd, "fifo", 0600), 0);
    assert_int_equal(qv_read_regular_file_at(dfd, "fifo", 64, &data, NULL), -EINVAL);
    close(dfd);
    qv_test_rm_rf(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_atomic_write_replaces_and_leaves_no_temp),
        cmocka_unit_test(test_streaming_atomic_exchange_and_abort),
        cmocka_unit_test(test_atomic_ordered_at),
        cmocka_unit_test(test_atomic_keep_old),
        cmocka_unit_test(test_atomic_prepared),
        cmocka_unit_test(test_atomic_commit_group),
        cmocka_unit_test(test_atomic_spare),
        cmocka_unit_test(test_atomic_spare_planted),
        cmocka_unit_test(test_read_limits),
        cmocka_unit_test(test_mkdir_p),
        cmocka_unit_test(test_rm_rf_at_never_follows),
        cmocka_unit_test(test_create_at_and_unlink_own),
        cmocka_unit_test(test_atomic_regular_only),
        cmocka_unit_test(test_dir_fd_helpers),
        cmocka_unit_test(test_sysroot_fake_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
