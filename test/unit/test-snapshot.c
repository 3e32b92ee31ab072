/* Disk snapshots' pure parts (supervisor/vm/snapmeta.c): the names qvisor
 * gives (they become qemu-img arguments), QEMU's snapshot lists read as
 * hostile input, and qvisor's records reconciled with the image. */
#include "testlib.h"

#include "supervisor/vm/snapshot.h"

#include <stdlib.h>
#include <string.h>

static void test_names(void **state) {
    (void)state;
    static const char *const good[] = {"a", "before-upgrade", "v1.2_rc", "0day", "2026-12-07", "A.b-c_d", NULL};
    for (size_t i = 0; good[i]; i++)
        assert_true(sv_snapshot_name_valid(good[i]));
    char longest[SV_SNAPSHOT_NAME_MAX + 2];
    memset(longest, 'x', sizeof longest);
    longest[SV_SNAPSHOT_NAME_MAX] = '\0';
    assert_true(sv_snapshot_name_valid(longest));
    longest[SV_SNAPSHOT_NAME_MAX] = 'x';
    longest[SV_SNAPSHOT_NAME_MAX + 1] = '\0';
    assert_false(sv_snapshot_name_valid(longest)); /* 64 bytes */
    /* an option to qemu-img, an id qemu-img would take first, paths,
     * spaces, controls, non-ASCII, empty */
    static const char *const bad[] = {"-c", "--help", "1",   "42",     "a/b", "../x",  "a b",   "a\nb",
                                      "a\tb", ".x", "_x",  "caf\xc3\xa9", "a,b", "a=b", "x\x1b[2J", "", NULL};
    for (size_t i = 0; bad[i]; i++)
        assert_false(sv_snapshot_name_valid(bad[i]));
    assert_false(sv_snapshot_name_valid(NULL));
    qv_error err = {0};
    assert_int_equal(sv_snapshot_name_check("-rf", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a valid snapshot name"));
    assert_int_equal(sv_snapshot_name_check("ok", &err), 0);
}

static json_t *load(const char *text) {
    json_error_t je;
    json_t *j = json_loads(text, JSON_ALLOW_NUL, &je); /* as a QMP reply may carry */
    assert_non_null(j);
    return j;
}

static void test_parse_image(void **state) {
    (void)state;
    json_t *info = load("{\"virtual-size\": 1073741824, \"snapshots\": ["
                        "{\"icount\": 0, \"vm-clock-nsec\": 0, \"name\": \"s1\", \"date-sec\": 1796642470,"
                        " \"date-nsec\": 5, \"vm-clock-sec\": 0, \"id\": \"1\", \"vm-state-size\": 0},"
                        "{\"name\": \"with vm\", \"date-sec\": 7, \"id\": \"2\", \"vm-state-size\": 4096}]}");
    json_t *list = NULL;
    qv_error err = {0};
    assert_int_equal(sv_snapshot_parse_image(info, &list, &err), 0);
    assert_int_equal(json_array_size(list), 2);
    json_t *s = json_array_get(list, 0);
    assert_string_equal(json_string_value(json_object_get(s, "name")), "s1");
    assert_string_equal(json_string_value(json_object_get(s, "id")), "1");
    assert_int_equal(json_integer_value(json_object_get(s, "time")), 1796642470);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 1), "vm_state_size")), 4096);
    assert_true(sv_snapshot_listed(list, "with vm"));
    assert_false(sv_snapshot_listed(list, "s2"));
    json_decref(list);
    json_decref(info);
    /* no snapshots at all: an empty list */
    info = load("{\"virtual-size\": 1}");
    assert_int_equal(sv_snapshot_parse_image(info, &list, &err), 0);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    json_decref(info);
}

/* Anything off is refused whole: QEMU read it from a disk the guest writes. */
static void test_parse_image_hostile(void **state) {
    (void)state;
    static const char *const bad[] = {
        "[]",
        "{\"snapshots\": {}}",
        "{\"snapshots\": [1]}",
        "{\"snapshots\": [{\"id\": \"1\", \"date-sec\": 1, \"vm-state-size\": 0}]}",             /* no name */
        "{\"snapshots\": [{\"name\": \"a\", \"date-sec\": 1, \"vm-state-size\": 0}]}",           /* no id */
        "{\"snapshots\": [{\"name\": \"\", \"id\": \"1\", \"date-sec\": 1, \"vm-state-size\": 0}]}",
        "{\"snapshots\": [{\"name\": \"a\\u0000b\", \"id\": \"1\", \"date-sec\": 1, \"vm-state-size\": 0}]}",
        "{\"snapshots\": [{\"name\": 5, \"id\": \"1\", \"date-sec\": 1, \"vm-state-size\": 0}]}",
        "{\"snapshots\": [{\"name\": \"a\", \"id\": \"1\", \"date-sec\": -1, \"vm-state-size\": 0}]}",
        "{\"snapshots\": [{\"name\": \"a\", \"id\": \"1\", \"date-sec\": 1.5, \"vm-state-size\": 0}]}",
        "{\"snapshots\": [{\"name\": \"a\", \"id\": \"1\", \"date-sec\": 1, \"vm-state-size\": -4}]}",
        "{\"snapshots\": [{\"name\": \"a\", \"id\": \"1\", \"date-sec\": 1}]}",
        NULL,
    };
    for (size_t i = 0; bad[i]; i++) {
        json_t *info = load(bad[i]), *list = (json_t *)0x1;
        qv_error err = {0};
        assert_int_equal(sv_snapshot_parse_image(info, &list, &err), -EBADMSG);
        assert_ptr_equal(list, (json_t *)0x1); /* untouched */
        json_decref(info);
    }
    /* a name longer than any qvisor gives, longer than 255: refused */
    char *big = malloc(400);
    char name[300];
    memset(name, 'n', 256);
    name[256] = '\0';
    snprintf(big, 400, "{\"snapshots\": [{\"name\": \"%s\", \"id\": \"1\", \"date-sec\": 1, \"vm-state-size\": 0}]}",
             name);
    json_t *info = load(big), *list = NULL;
    assert_int_equal(sv_snapshot_parse_image(info, &list, NULL), -EBADMSG);
    json_decref(info);
    free(big);
    /* more entries than SV_SNAPSHOT_MAX */
    json_t *many = json_array();
    for (int i = 0; i <= SV_SNAPSHOT_MAX; i++)
        json_array_append_new(many, json_pack("{s:s, s:s, s:i, s:i}", "name", "a", "id", "1", "date-sec", 1,
                                              "vm-state-size", 0));
    info = json_pack("{s:o}", "snapshots", many);
    assert_int_equal(sv_snapshot_parse_image(info, &list, NULL), -EBADMSG);
    json_decref(info);
}

static void test_find_node(void **state) {
    (void)state;
    json_t *qb = load("[{\"device\": \"\", \"qdev\": \"/machine/peripheral/seed0-cd\", \"inserted\": "
                      "{\"node-name\": \"seed0\", \"image\": {\"virtual-size\": 1}}},"
                      "{\"device\": \"\", \"inserted\": {\"node-name\": \"disk0\", \"image\": {\"virtual-size\": 2}}},"
                      "{\"device\": \"x\"}, 7]");
    json_t *img = sv_snapshot_find_node(qb, "disk0");
    assert_non_null(img);
    assert_int_equal(json_integer_value(json_object_get(img, "virtual-size")), 2);
    assert_null(sv_snapshot_find_node(qb, "disk1"));
    json_decref(qb);
    json_t *obj = load("{\"inserted\": {}}");
    assert_null(sv_snapshot_find_node(obj, "disk0"));
    json_decref(obj);
}

/* Records against the image: a record without its snapshot is dropped, a
 * snapshot without a record is "unknown", a record whose time does not
 * match a snapshot of the same name (made again by someone else) is not
 * taken for it. */
static void test_reconcile(void **state) {
    (void)state;
    json_t *records = sv_snapmeta_parse(
        "{\"snapshots\": ["
        "{\"name\": \"ours\", \"started\": 1000, \"finished\": 1010, \"frozen\": true, \"state\": \"running\","
        " \"disk_size\": 1073741824},"
        "{\"name\": \"gone\", \"started\": 500, \"finished\": 501, \"frozen\": false, \"state\": \"stopped\"},"
        "{\"name\": \"remade\", \"started\": 100, \"finished\": 101, \"frozen\": true, \"state\": \"running\"},"
        "{\"name\": \"broken\", \"frozen\": \"yes\"}, 17]}");
    assert_int_equal(json_array_size(records), 3); /* the malformed ones skipped */
    json_t *image = json_pack("[{s:s, s:i}, {s:s, s:i}, {s:s, s:i}]", "name", "ours", "time", 1005, "name", "theirs",
                              "time", 2000, "name", "remade", "time", 3000);
    json_t *pruned = NULL;
    json_t *list = sv_snapshot_reconcile(image, records, &pruned);
    assert_int_equal(json_array_size(list), 3);
    json_t *ours = json_array_get(list, 0), *theirs = json_array_get(list, 1), *remade = json_array_get(list, 2);
    assert_true(json_is_true(json_object_get(ours, "frozen")));
    assert_string_equal(json_string_value(json_object_get(ours, "state")), "running");
    assert_int_equal(json_integer_value(json_object_get(ours, "disk_size")), 1073741824);
    assert_true(json_is_null(json_object_get(theirs, "frozen")));
    assert_true(json_is_null(json_object_get(theirs, "disk_size")));
    assert_true(json_is_null(json_object_get(remade, "frozen")));
    /* only "ours" keeps its record */
    assert_int_equal(json_array_size(pruned), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(pruned, 0), "name")), "ours");
    /* the file round-trips */
    char *text = sv_snapmeta_dump(pruned);
    json_t *again = sv_snapmeta_parse(text);
    assert_true(json_equal(again, pruned));
    free(text);
    json_decref(again);
    json_decref(pruned);
    json_decref(list);
    json_decref(image);
    json_decref(records);
    /* no file, a file that is no JSON: no records */
    json_t *none = sv_snapmeta_parse(NULL), *junk = sv_snapmeta_parse("{\"snapshots\": [");
    assert_int_equal(json_array_size(none), 0);
    assert_int_equal(json_array_size(junk), 0);
    json_decref(none);
    json_decref(junk);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),       cmocka_unit_test(test_parse_image),
        cmocka_unit_test(test_parse_image_hostile), cmocka_unit_test(test_find_node),
        cmocka_unit_test(test_reconcile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
