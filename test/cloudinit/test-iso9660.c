/* The ISO9660 writer, checked by the independent reader in isoread.c. */
#include "testlib.h"

#include "cloudinit/iso9660.h"
#include "isoread.h"

#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TS 1700000000 /* 2023-11-14 22:13:20 UTC */

static rd_image *parse(const uint8_t *img, size_t len) {
    rd_image *im = malloc(sizeof *im);
    assert_non_null(im);
    rd_parse(img, len, im);
    return im;
}

static void build(const ci_iso_file *files, size_t n, int64_t ts, uint8_t **img, size_t *len) {
    qv_error err = {0};
    int r = ci_iso_write_buf("cidata", files, n, ts, img, len, &err);
    if (r < 0)
        fail_msg("ci_iso_write_buf: %s", err.msg);
    uint64_t sz;
    assert_int_equal(ci_iso_image_size("cidata", files, n, &sz, &err), 0);
    assert_true(sz == *len);
}

/* Checks the image holds exactly files[] under their names in both trees. */
static rd_image *check_content(const ci_iso_file *files, size_t n, const uint8_t *img, size_t len) {
    rd_image *im = parse(img, len);
    assert_string_equal(im->label, "cidata");
    assert_string_equal(im->joliet_label, "cidata");
    assert_int_equal(im->n, n);
    for (size_t i = 0; i < n; i++) {
        const rd_file *rr = rd_find(im->iso, im->n, files[i].name);
        const rd_file *jo = rd_find(im->joliet, im->n, files[i].name);
        if (!rr || !jo)
            fail_msg("'%s' missing (rr %p, joliet %p)", files[i].name, (const void *)rr, (const void *)jo);
        assert_int_equal(rr->size, files[i].size);
        assert_int_equal(jo->size, files[i].size);
        if (files[i].size)
            assert_memory_equal(rr->data, files[i].data, files[i].size);
        assert_int_equal(rr->mode, 0100000 | (files[i].mode ? files[i].mode : 0644));
    }
    return im;
}

static void test_zero_files(void **state) {
    (void)state;
    uint8_t *img;
    size_t len;
    build(NULL, 0, TS, &img, &len);
    rd_image *im = check_content(NULL, 0, img, len);
    /* 16 + 3 descriptors + 4 path tables + 2 roots + CE */
    assert_int_equal(im->volume_sectors, 26);
    assert_int_equal(im->iso_root, 23);
    assert_int_equal(im->root_mode, 040555);
    assert_string_equal(im->creation, "2023111422132000");
    free(im);
    free(img);
}

static const char md[] = "instance-id: iid-1\nlocal-hostname: vm1\n";
static const char ud[] = "#cloud-config\nhostname: vm1\n";
static const char nc[] = "version: 2\nethernets: {}\n";

static void test_one_file(void **state) {
    (void)state;
    ci_iso_file f[] = {{.name = "user-data", .data = ud, .size = sizeof ud - 1}};
    uint8_t *img;
    size_t len;
    build(f, 1, TS, &img, &len);
    rd_image *im = check_content(f, 1, img, len);
    assert_int_equal(im->volume_sectors, 27);
    assert_string_equal(im->iso[0].iso_id, "USER_DATA.;1");
    free(im);
    free(img);
}

static void test_typical_seed(void **state) {
    (void)state;
    ci_iso_file f[] = {
        {.name = "user-data", .data = ud, .size = sizeof ud - 1},
        {.name = "meta-data", .data = md, .size = sizeof md - 1},
        {.name = "network-config", .data = nc, .size = sizeof nc - 1},
        {.name = "vendor-data", .data = "", .size = 0},
    };
    uint8_t *img;
    size_t len;
    build(f, 4, TS, &img, &len);
    rd_image *im = check_content(f, 4, img, len);
    /* "about 30 sectors": 26 of metadata + 3 of data */
    assert_int_equal(im->volume_sectors, 29);
    assert_string_equal(im->iso[0].name, "meta-data");
    assert_string_equal(im->iso[1].name, "network-config");
    assert_string_equal(im->iso[2].name, "user-data");
    assert_string_equal(im->iso[3].name, "vendor-data");
    free(im);
    free(img);
}

/* The reader is not vacuous: each single defect is caught. */
static void test_reader_catches_defects(void **state) {
    (void)state;
    ci_iso_file f[] = {
        {.name = "user-data", .data = ud, .size = sizeof ud - 1},
        {.name = "meta-data", .data = md, .size = sizeof md - 1},
        {.name = "network-config", .data = nc, .size = sizeof nc - 1},
        {.name = "vendor-data", .data = "", .size = 0},
    };
    uint8_t *img;
    size_t len;
    build(f, 4, TS, &img, &len);
    rd_image *im = malloc(sizeof *im);
    assert_int_equal(rd_try_parse(img, len, im), 0);
    /* sectors: 16 PVD, 17 SVD, 20 ISO M path table, 23 ISO root, 24 Joliet
     * root, 25 CE, 26.. data; first file record at 23*2048 + 132 + 96, its
     * TF after the identifier META_DATA.;1, a pad byte and the 36-byte PX */
    const size_t pvd = 16 * 2048, svd = 17 * 2048, iso = 23 * 2048, jol = 24 * 2048, file1 = iso + 132 + 96;
    const size_t file1_tf = file1 + 33 + 12 + 1 + 36;
    assert_memory_equal(img + file1 + 33, "META_DATA.;1", 12);
    assert_memory_equal(img + file1_tf, "TF", 2);
    const struct {
        size_t off;
        uint8_t xor;
        const char *what;
    } defects[] = {
        {100, 1, "system area"},
        {pvd + 84, 1, "BE half of the volume space size"},
        {pvd + 122, 1, "BE half of the volume set size"},
        {pvd + 131, 1, "BE half of the block size"},
        {pvd + 136, 1, "BE half of the path table size"},
        {svd + 84, 1, "Joliet volume space size"},
        {svd + 90, 1, "Joliet escape sequence"},
        {pvd + 156 + 9, 1, "BE half of the root extent in the PVD"},
        {pvd + 156 + 31, 1, "BE half of the root's volume sequence number in the PVD"},
        {svd + 156 + 31, 1, "BE half of the root's volume sequence number in the Joliet SVD"},
        {20 * 2048 + 5, 1, "root location in the M path table"},
        {19 * 2048 + 2, 1, "root location in the L path table"},
        {iso + 9, 1, "BE half of '.' extent"},
        {iso + 34 + 4, 1, "SP check byte"},
        {iso + 34 + 7 + 8, 1, "BE half of the root PX mode"},
        {file1, 1, "odd record length"},
        {file1 + 17, 1, "BE half of a file size"},
        {file1 + 33, 'M' ^ 'Z', "ISO sort order"},
        {file1_tf, 'T' ^ 'X', "a file without TF"},
        {jol + 34 + 34 + 33 + 1, 1, "Joliet name"},
        {jol + 34 + 34 + 9, 1, "Joliet extent"},
        {25 * 2048 + 8 + 9, 1, "ER identifier"},
        {26 * 2048 + 2000, 1, "padding after file data"},
        {18 * 2048, 1, "terminator"},
        {2047 + 23 * 2048, 1, "junk after the last record"},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(defects); i++) {
        img[defects[i].off] ^= defects[i].xor;
        if (rd_try_parse(img, len, im) == 0)
            fail_msg("the reader missed: %s", defects[i].what);
        img[defects[i].off] ^= defects[i].xor;
    }
    assert_int_equal(rd_try_parse(img, len - 2048, im), -1);
    assert_int_equal(rd_try_parse(img, len, im), 0);
    free(im);
    free(img);
}

static void test_fifty_files(void **state) {
    (void)state;
    enum { N = 50 };
    ci_iso_file f[N];
    char names[N][64];
    static uint8_t big[5 * 1000 * 1000 + 17];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 2654435761u >> 13);
    for (int i = 0; i < N; i++) {
        /* long names so that the root spans several sectors */
        snprintf(names[i], sizeof names[i], "file-%02d-with-a-rather-long-name-to-fill-the-directory.txt", N - i);
        f[i] = (ci_iso_file){.name = names[i], .data = names[i], .size = strlen(names[i])};
    }
    f[3].size = 0;
    f[4].size = 0;
    f[5].data = big;
    f[5].size = sizeof big;
    f[6].mode = 0600;
    f[7].size = 2048; /* exactly one sector */
    f[7].data = big;
    uint8_t *img;
    size_t len;
    build(f, N, TS, &img, &len);
    rd_image *im = check_content(f, N, img, len);
    assert_true(im->iso_root_size > 2048);
    assert_true(im->joliet_root_size > 2048);
    free(im);
    free(img);
}

static void test_name_collisions(void **state) {
    (void)state;
    ci_iso_file f[] = {
        {.name = "a-b", .data = "1", .size = 1}, {.name = "a_b", .data = "2", .size = 1},
        {.name = "A-B", .data = "3", .size = 1}, {.name = "x.tar.gz", .data = "4", .size = 1},
        {.name = ".hidden", .data = "5", .size = 1},
    };
    uint8_t *img;
    size_t len;
    build(f, 5, TS, &img, &len);
    rd_image *im = check_content(f, 5, img, len);
    free(im);
    free(img);
}

static void test_determinism(void **state) {
    (void)state;
    ci_iso_file f[] = {
        {.name = "user-data", .data = ud, .size = sizeof ud - 1},
        {.name = "meta-data", .data = md, .size = sizeof md - 1},
        {.name = "network-config", .data = nc, .size = sizeof nc - 1},
    };
    ci_iso_file g[] = {f[2], f[0], f[1]};
    uint8_t *a, *b, *c;
    size_t la, lb, lc;
    build(f, 3, TS, &a, &la);
    build(g, 3, TS, &b, &lb);
    build(f, 3, TS + 1, &c, &lc);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    assert_int_equal(la, lc);
    assert_true(memcmp(a, c, la) != 0);

    /* the fd variant writes the same bytes */
    char *dir = qv_test_mkdtemp("ci-iso");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/x.iso", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    qv_error err = {0};
    assert_int_equal(ci_iso_write_fd(fd, "cidata", f, 3, TS, &err), 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, la);
    uint8_t *d = malloc(la);
    assert_int_equal(pread(fd, d, la, 0), (ssize_t)la);
    assert_memory_equal(a, d, la);
    close(fd);
    free(d);
    qv_test_rm_rf(dir);
    free(dir);
    free(a);
    free(b);
    free(c);
}

static void test_source_date_epoch(void **state) {
    (void)state;
    qv_error err = {0};
    int64_t ts;
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    assert_int_equal(ci_iso_timestamp(&ts, &err), 0);
    assert_true(ts == 1700000000);
    setenv("SOURCE_DATE_EPOCH", "12x", 1);
    assert_int_equal(ci_iso_timestamp(&ts, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "SOURCE_DATE_EPOCH"));
    setenv("SOURCE_DATE_EPOCH", "", 1);
    assert_int_equal(ci_iso_timestamp(&ts, &err), -EINVAL);
    setenv("SOURCE_DATE_EPOCH", "-5", 1);
    assert_int_equal(ci_iso_timestamp(&ts, &err), -EINVAL);
    unsetenv("SOURCE_DATE_EPOCH");
    time_t now = time(NULL);
    assert_int_equal(ci_iso_timestamp(&ts, &err), 0);
    assert_true(ts >= now - 1 && ts <= now + 5);

    /* out of range for the one-byte year of directory records */
    uint8_t *img;
    size_t len;
    assert_int_equal(ci_iso_write_buf("cidata", NULL, 0, 5869584000LL, &img, &len, &err), -ERANGE);
    assert_int_equal(ci_iso_write_buf("cidata", NULL, 0, -2208988801LL, &img, &len, &err), -ERANGE);
    assert_int_equal(ci_iso_write_buf("cidata", NULL, 0, 5869583999LL, &img, &len, &err), 0);
    rd_image *last = parse(img, len);
    assert_string_equal(last->creation, "2155123123595900");
    free(last);
    free(img);
    assert_int_equal(ci_iso_write_buf("cidata", NULL, 0, 0, &img, &len, &err), 0);
    rd_image *im = parse(img, len);
    assert_string_equal(im->creation, "1970010100000000");
    free(im);
    free(img);
}

static void expect_name_error(const char *name, int code) {
    qv_error err = {0};
    ci_iso_file f = {.name = name, .data = "x", .size = 1};
    uint8_t *img = NULL;
    size_t len;
    int r = ci_iso_write_buf("cidata", &f, 1, TS, &img, &len, &err);
    if (r != -code)
        fail_msg("name '%s': got %d, expected %d (%s)", name ? name : "(null)", r, -code, err.msg);
    assert_null(img);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(ci_iso_validate_name(name, NULL), -code);
}

static void test_names_validated(void **state) {
    (void)state;
    expect_name_error(NULL, EINVAL);
    expect_name_error("", EINVAL);
    expect_name_error(".", EINVAL);
    expect_name_error("..", EINVAL);
    expect_name_error("a/b", EINVAL);
    expect_name_error("a b", EINVAL);
    expect_name_error("a:b", EINVAL);
    expect_name_error("a;1", EINVAL);
    expect_name_error("a\\b", EINVAL);
    expect_name_error("a*", EINVAL);
    expect_name_error("a?", EINVAL);
    expect_name_error("tab\there", EINVAL);
    expect_name_error("caf\xc3\xa9", EINVAL);
    char longname[80];
    memset(longname, 'a', 65);
    longname[65] = '\0';
    expect_name_error(longname, ENAMETOOLONG);
    longname[64] = '\0';
    assert_int_equal(ci_iso_validate_name(longname, NULL), 0);

    qv_error err = {0};
    assert_int_equal(ci_iso_validate_name("a:b", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "'a:b'"));

    /* duplicates */
    ci_iso_file d[] = {{.name = "user-data"}, {.name = "user-data"}};
    uint8_t *img;
    size_t len;
    assert_int_equal(ci_iso_write_buf("cidata", d, 2, TS, &img, &len, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "twice"));

    /* labels */
    assert_int_equal(ci_iso_validate_label("cidata", NULL), 0);
    assert_int_equal(ci_iso_validate_label("CIDATA", NULL), 0);
    assert_int_equal(ci_iso_validate_label("", &err), -EINVAL);
    assert_int_equal(ci_iso_validate_label(NULL, &err), -EINVAL);
    assert_int_equal(ci_iso_validate_label("ci data", &err), -EINVAL);
    assert_int_equal(ci_iso_validate_label("abcdefghijklmnopq", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "16"));
    assert_int_equal(ci_iso_validate_label("abcdefghijklmnop", NULL), 0);

    /* size without data, mode with file type bits */
    ci_iso_file bad = {.name = "x", .data = NULL, .size = 3};
    assert_int_equal(ci_iso_write_buf("cidata", &bad, 1, TS, &img, &len, &err), -EINVAL);
    bad = (ci_iso_file){.name = "x", .data = "abc", .size = 3, .mode = 0100644};
    assert_int_equal(ci_iso_write_buf("cidata", &bad, 1, TS, &img, &len, &err), -EINVAL);
}

static void test_label_other(void **state) {
    (void)state;
    uint8_t *img;
    size_t len;
    qv_error err = {0};
    assert_int_equal(ci_iso_write_buf("CIDATA", NULL, 0, TS, &img, &len, &err), 0);
    rd_image *im = malloc(sizeof *im);
    rd_parse(img, len, im);
    assert_string_equal(im->label, "CIDATA");
    assert_string_equal(im->joliet_label, "CIDATA");
    free(im);
    free(img);
}

/* 4 GiB - 1 bytes in one file: the image is streamed through a pipe from
 * untouched anonymous memory, only the head is kept. */
static void test_largest_file(void **state) {
    (void)state;
    qv_error err = {0};
    ci_iso_file too_big = {.name = "big", .data = "x", .size = (uint64_t)CI_ISO_FILE_MAX + 1};
    uint64_t sz;
    assert_int_equal(ci_iso_image_size("cidata", &too_big, 1, &sz, &err), -EFBIG);
    assert_non_null(strstr(err.msg, "big"));

    if (getenv("CI_SKIP_HUGE")) {
        skip();
        return;
    }
    size_t huge = CI_ISO_FILE_MAX;
    void *mem = mmap(NULL, huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(mem != MAP_FAILED);
    ci_iso_file f[] = {{.name = "huge", .data = mem, .size = huge}, {.name = "small", .data = "hi", .size = 2}};
    assert_int_equal(ci_iso_image_size("cidata", f, 2, &sz, &err), 0);
    assert_true(sz == (uint64_t)(26 + 2097152 + 1) * 2048);

    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        _exit(ci_iso_write_fd(p[1], "cidata", f, 2, TS, NULL) == 0 ? 0 : 1);
    }
    close(p[1]);
    size_t head_len = 32 * 2048, got = 0;
    uint8_t *head = malloc(head_len);
    static uint8_t sink[1 << 20];
    uint64_t total = 0;
    for (;;) {
        ssize_t r = got < head_len ? read(p[0], head + got, head_len - got) : read(p[0], sink, sizeof sink);
        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r >= 0);
        if (r == 0)
            break;
        if (got < head_len)
            got += (size_t)r;
        total += (uint64_t)r;
    }
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(total == sz);
    /* the first file record of the ISO root (after "." 132 and ".." 96) */
    const uint8_t *dr = head + 23 * 2048 + 132 + 96;
    assert_int_equal(dr[33], 'H');
    const uint8_t le[4] = {0xff, 0xff, 0xff, 0xff};
    assert_memory_equal(dr + 10, le, 4);
    assert_memory_equal(dr + 14, le, 4);
    /* volume space size in both halves */
    uint32_t vss = (uint32_t)(sz / 2048);
    const uint8_t *vd = head + 16 * 2048 + 80;
    assert_int_equal(vd[0] | vd[1] << 8 | vd[2] << 16 | (uint32_t)vd[3] << 24, vss);
    assert_int_equal((uint32_t)vd[4] << 24 | vd[5] << 16 | vd[6] << 8 | vd[7], vss);
    free(head);
    munmap(mem, huge);
}

static void test_atomic_file(void **state) {
    (void)state;
    char *dir = qv_test_mkdtemp("ci-iso");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/seed.iso", dir);
    qv_error err = {0};
    ci_iso_file f[] = {{.name = "user-data", .data = ud, .size = sizeof ud - 1}};
    qv_test_write(dir, "seed.iso", "old");
    assert_int_equal(ci_iso_write_file_atomic(path, 0640, CI_ISO_DURABLE, "cidata", f, 1, TS, &err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    assert_int_equal(st.st_size, 27 * 2048);
    /* without CI_ISO_DURABLE: same bytes, replaced in place */
    assert_int_equal(ci_iso_write_file_atomic(path, 0644, 0, "cidata", f, 1, TS, &err), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(st.st_size, 27 * 2048);
    assert_int_equal(ci_iso_write_file_atomic(path, 0644, 0x80, "cidata", f, 1, TS, &err), -EINVAL);

    /* a failure leaves the old image and no temporary file */
    ci_iso_file bad[] = {{.name = "a/b", .data = "x", .size = 1}};
    assert_int_equal(ci_iso_write_file_atomic(path, 0644, 0, "cidata", bad, 1, TS, &err), -EINVAL);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 27 * 2048);
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' || strstr(e->d_name, ".tmp"))
            entries++;
    closedir(d);
    assert_int_equal(entries, 1);

    /* a directory in the way is not replaced */
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/adir", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    qv_test_write(dir, "adir/keep", "x");
    assert_true(ci_iso_write_file_atomic(sub, 0644, 0, "cidata", f, 1, TS, &err) < 0);
    assert_true(ci_iso_write_file_atomic(sub, 0644, CI_ISO_DURABLE, "cidata", f, 1, TS, &err) < 0);
    assert_int_equal(stat(sub, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    qv_test_rm_rf(sub);

    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/no/such/dir/seed.iso", dir);
    assert_int_equal(ci_iso_write_file_atomic(missing, 0644, 0, "cidata", f, 1, TS, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "no/such/dir"));
    qv_test_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_files),    cmocka_unit_test(test_one_file),
        cmocka_unit_test(test_typical_seed),  cmocka_unit_test(test_reader_catches_defects),
        cmocka_unit_test(test_fifty_files),
        cmocka_unit_test(test_name_collisions), cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_source_date_epoch), cmocka_unit_test(test_names_validated),
        cmocka_unit_test(test_label_other),   cmocka_unit_test(test_largest_file),
        cmocka_unit_test(test_atomic_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
