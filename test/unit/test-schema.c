/* The schema's list kinds and per-key checks, on a private table (the node
 * config and the VM spec have their own tests): strings lists from YAML and
 * JSON, item checks with positions, a cap on the number of items, copies,
 * rendering; ratios, optional numbers and maps of named entries. */
#include "testlib.h"

#include "cleanup.h"
#include "spec/schema.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct obj {
    char *word;
    char **tags;
    char **ips;
    bool flag;
} obj;

static int check_word(const char *v, char *why, size_t size) {
    if (strchr(v, ' ')) {
        snprintf(why, size, "'%s' has a space", v);
        return -EINVAL;
    }
    return 0;
}

#define F(field) offsetof(obj, field)
static const sv_key keys[] = {
    {NULL, "word", SV_K_STRING, F(word), NULL, 0, 0, NULL, false, false, check_word},
    {NULL, "tags", SV_K_STRLIST, F(tags), NULL, 0, 3, NULL, false, false, check_word}, /* at most 3 */
    {"net", "ips", SV_K_IPLIST, F(ips), NULL, 0, 0, NULL, true, false},
    {NULL, "flag", SV_K_BOOL, F(flag), "false", 0, 0, NULL, false, false},
};
static const sv_schema schema = SV_SCHEMA(keys);

static void obj_free(obj *o) {
    sv_schema_free_fields(&schema, o);
}

static int load_yaml(const char *y, obj *o, qv_error *err) {
    memset(o, 0, sizeof *o);
    assert_int_equal(sv_schema_apply_defaults(&schema, o), 0);
    return sv_schema_load_yaml(&schema, o, "t.yaml", y, strlen(y), EINVAL, err);
}

static int load_json(const char *text, obj *o, qv_error *err) {
    memset(o, 0, sizeof *o);
    assert_int_equal(sv_schema_apply_defaults(&schema, o), 0);
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    int r = sv_schema_load_json(&schema, o, j, "obj", EINVAL, err);
    json_decref(j);
    return r;
}

static void expect_yaml_error(const char *y, const char *msg) {
    obj o;
    qv_error err = {0};
    int r = load_yaml(y, &o, &err);
    obj_free(&o);
    if (r != -EINVAL || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d '%s', want '%s'", y, r, err.msg, msg);
}

static void expect_json_error(const char *j, const char *msg) {
    obj o;
    qv_error err = {0};
    int r = load_json(j, &o, &err);
    obj_free(&o);
    if (r != -EINVAL || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d '%s', want '%s'", j, r, err.msg, msg);
}

static void test_defaults_are_empty_lists(void **state) {
    (void)state;
    obj o;
    qv_error err = {0};
    assert_int_equal(load_yaml("", &o, &err), 0);
    assert_non_null(o.tags);
    assert_null(o.tags[0]);
    assert_non_null(o.ips);
    assert_null(o.word);
    char buf[64];
    sv_schema_render(&keys[1], &o, buf, sizeof buf);
    assert_string_equal(buf, "[]");
    obj_free(&o);
    assert_null(o.tags);
}

static void test_string_list_yaml(void **state) {
    (void)state;
    obj o;
    qv_error err = {0};
    assert_int_equal(load_yaml("word: one\ntags: [a, 'b:c', \"yes\"]\nnet:\n  ips: [10.0.0.1]\n", &o, &err), 0);
    assert_string_equal(o.word, "one");
    assert_string_equal(o.tags[0], "a");
    assert_string_equal(o.tags[1], "b:c");
    assert_string_equal(o.tags[2], "yes");
    assert_null(o.tags[3]);
    char buf[64];
    sv_schema_render(&keys[1], &o, buf, sizeof buf);
    assert_string_equal(buf, "a, b:c, yes");

    /* a deep copy: freeing the original leaves the copy intact */
    obj c = o;
    assert_int_equal(sv_schema_copy_fields(&schema, &c, &o), 0);
    assert_ptr_not_equal(c.tags, o.tags);
    obj_free(&o);
    assert_string_equal(c.tags[1], "b:c");

    /* to JSON and back */
    json_t *j = sv_schema_to_json(&schema, &c);
    json_t *tags = json_object_get(j, "tags");
    assert_true(json_is_array(tags));
    assert_int_equal(json_array_size(tags), 3);
    assert_string_equal(json_string_value(json_array_get(tags, 2)), "yes");
    char *text = json_dumps(j, 0);
    json_decref(j);
    obj back;
    assert_int_equal(load_json(text, &back, &err), 0);
    free(text);
    assert_string_equal(back.tags[0], "a");
    assert_null(back.tags[3]);
    assert_string_equal(back.ips[0], "10.0.0.1");
    obj_free(&back);
    obj_free(&c);

    /* a later value replaces the default list, the old one is freed */
    assert_int_equal(load_yaml("tags:\n- x\n", &o, &err), 0);
    assert_string_equal(o.tags[0], "x");
    assert_null(o.tags[1]);
    obj_free(&o);
}

static void test_string_list_yaml_errors(void **state) {
    (void)state;
    expect_yaml_error("tags: a\n", "t.yaml:1:7: tags: expected a list of strings, got a single value");
    expect_yaml_error("tags: {a: b}\n", "t.yaml:1:7: tags: expected a list of strings, got a mapping");
    expect_yaml_error("tags: [a, 'b c']\n", "t.yaml:1:11: tags: 'b c' has a space");
    expect_yaml_error("tags:\n- a\n- [b]\n", "t.yaml:3:3: tags: list items must be single values (strings)");
    expect_yaml_error("tags: [a, '']\n", "t.yaml:1:11: tags: list items must not be empty");
    expect_yaml_error("tags: [a, ~]\n", "t.yaml:1:11: tags: list items must not be empty");
    expect_yaml_error("tags: [a]\ntags: [b]\n", "t.yaml:2:1: tags: repeated key");
    expect_yaml_error("tags:\n- a\n- b\n- c\n- d\n", "t.yaml:2:1: tags: at most 3 items, got 4");
    expect_yaml_error("word: a b\n", "t.yaml:1:7: word: 'a b' has a space");
    /* the address list keeps its own wording */
    expect_yaml_error("net:\n  ips: [x]\n", "t.yaml:2:9: net.ips: 'x' is not an IP address");
    expect_yaml_error("net:\n  ips: x\n", "t.yaml:2:8: net.ips: expected a list of addresses, got a single value");
}

static void test_string_list_json_errors(void **state) {
    (void)state;
    expect_json_error("{\"tags\": \"a\"}", "obj: tags: expected a list of strings");
    expect_json_error("{\"tags\": [\"a\", 1]}", "obj: tags[1]: expected a string");
    expect_json_error("{\"tags\": [\"a\", \"x y\"]}", "obj: tags[1]: 'x y' has a space");
    expect_json_error("{\"tags\": [\"\"]}", "obj: tags[0]: list items must not be empty");
    expect_json_error("{\"tags\": [\"a\", \"b\", \"c\", \"d\"]}", "obj: tags: at most 3 items, got 4");
    expect_json_error("{\"word\": \"x y\"}", "obj: word: 'x y' has a space");
    expect_json_error("{\"net\": {\"ips\": [\"x\"]}}", "obj: net.ips: 'x' is not an IP address");
    /* null leaves the default */
    obj o;
    qv_error err = {0};
    assert_int_equal(load_json("{\"tags\": null}", &o, &err), 0);
    assert_non_null(o.tags);
    assert_null(o.tags[0]);
    obj_free(&o);
}

/* ---- ratios, optional numbers, maps ------------------------------------- */

typedef struct shelf {
    char *name;
    uint64_t slots; /* optional */
    uint64_t size;  /* optional */
    char *label;
    bool fixed;
} shelf;

typedef struct room {
    double ratio;
    shelf **shelves;
    uint64_t doors; /* optional, top level */
} room;

#define SF(field) offsetof(shelf, field)
static const sv_key shelf_keys[] = {
    {NULL, "slots", SV_K_UINT, SF(slots), NULL, 0, 100, NULL, false, false, NULL, NULL, true},
    {NULL, "size", SV_K_SIZE, SF(size), NULL, 0, 1ull << 40, NULL, false, false, NULL, NULL, true},
    {NULL, "label", SV_K_STRING, SF(label), "plain", 0, 0, NULL, false, false, check_word},
    {NULL, "fixed", SV_K_BOOL, SF(fixed), "false", 0, 0, NULL, false, false},
};
static const sv_schema shelf_schema = SV_SCHEMA(shelf_keys);
static const sv_map shelf_map = {&shelf_schema, sizeof(shelf), SF(name), "shelf"};

#define RF(field) offsetof(room, field)
static const sv_key room_keys[] = {
    {"room", "ratio", SV_K_RATIO, RF(ratio), "4.0", 0, 100, NULL, false, false},
    {NULL, "shelves", SV_K_MAP, RF(shelves), NULL, 0, 0, NULL, false, false, NULL, &shelf_map},
    {NULL, "doors", SV_K_UINT, RF(doors), NULL, 0, 10, NULL, false, false, NULL, NULL, true},
};
static const sv_schema room_schema = SV_SCHEMA(room_keys);

static int room_yaml(const char *y, room *o, qv_error *err) {
    memset(o, 0, sizeof *o);
    assert_int_equal(sv_schema_apply_defaults(&room_schema, o), 0);
    return sv_schema_load_yaml(&room_schema, o, "r.yaml", y, strlen(y), EINVAL, err);
}

static int room_json(json_t *j, room *o, qv_error *err) {
    memset(o, 0, sizeof *o);
    assert_int_equal(sv_schema_apply_defaults(&room_schema, o), 0);
    return sv_schema_load_json(&room_schema, o, j, "room", EINVAL, err);
}

static void room_free(room *o) {
    sv_schema_free_fields(&room_schema, o);
}

static void expect_room_yaml_error(const char *y, const char *msg) {
    room o;
    qv_error err = {0};
    int r = room_yaml(y, &o, &err);
    room_free(&o);
    if (r != -EINVAL || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d '%s', want '%s'", y, r, err.msg, msg);
}

static void expect_room_json_error(const char *text, const char *msg) {
    room o;
    qv_error err = {0};
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    int r = room_json(j, &o, &err);
    json_decref(j);
    room_free(&o);
    if (r != -EINVAL || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d '%s', want '%s'", text, r, err.msg, msg);
}

static void test_ratio(void **state) {
    (void)state;
    room o;
    qv_error err = {0};
    char buf[64];
    assert_int_equal(room_yaml("", &o, &err), 0);
    assert_true(o.ratio == 4.0);
    sv_schema_render(&room_keys[0], &o, buf, sizeof buf);
    assert_string_equal(buf, "4.0");
    assert_true(o.doors == SV_UNSET);
    room_free(&o);

    static const struct {
        const char *text;
        double value;
        const char *render;
    } good[] = {{"1.5", 1.5, "1.5"}, {"2", 2.0, "2.0"}, {"0.1", 0.1, "0.1"}, {"100", 100.0, "100.0"},
                {"0.333", 0.333, "0.333"}, {"007.50", 7.5, "7.5"}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char y[64];
        snprintf(y, sizeof y, "room:\n  ratio: %s\n", good[i].text);
        if (room_yaml(y, &o, &err) < 0)
            fail_msg("%s: %s", good[i].text, err.msg);
        assert_true(o.ratio == good[i].value);
        sv_schema_render(&room_keys[0], &o, buf, sizeof buf);
        assert_string_equal(buf, good[i].render);
        room_free(&o);
    }
    expect_room_yaml_error("room:\n  ratio: 0\n", "r.yaml:2:10: room.ratio: 0 is out of range (greater than 0, at most 100)");
    expect_room_yaml_error("room:\n  ratio: 0.0\n", "r.yaml:2:10: room.ratio: 0.0 is out of range (greater than 0, at most 100)");
    expect_room_yaml_error("room:\n  ratio: 100.5\n", "r.yaml:2:10: room.ratio: 100.5 is out of range (greater than 0, at most 100)");
    static const char *const bad[] = {"-1", "1.", ".5", "1e3", "inf", "nan", "0x10", "1,5", "four", "1.5x",
                                      "1234567890123456", "0.0000000000000001", "+2", "1..2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char y[64], want[128];
        snprintf(y, sizeof y, "room:\n  ratio: '%s'\n", bad[i]);
        snprintf(want, sizeof want, "r.yaml:2:10: room.ratio: expected a number like 4 or 1.5, got '%s'", bad[i]);
        expect_room_yaml_error(y, want);
    }
    /* JSON: numbers as reals or integers, and text */
    expect_room_json_error("{\"room\": {\"ratio\": -2.5}}", "room: room.ratio: -2.5 is out of range (greater than 0, at most 100)");
    expect_room_json_error("{\"room\": {\"ratio\": true}}", "room: room.ratio: expected a number like 4 or 1.5, got 'true'");
    json_t *j = json_pack("{s:{s:f}}", "room", "ratio", 0.75);
    assert_int_equal(room_json(j, &o, &err), 0);
    json_decref(j);
    assert_true(o.ratio == 0.75);
    room_free(&o);
    j = json_pack("{s:{s:i}}", "room", "ratio", 3);
    assert_int_equal(room_json(j, &o, &err), 0);
    json_decref(j);
    assert_true(o.ratio == 3.0);
    room_free(&o);
}

static void test_map_yaml(void **state) {
    (void)state;
    room o;
    qv_error err = {0};
    const char *y = "doors: 2\n"
                    "shelves:\n"
                    "  top:\n"
                    "    slots: 5\n"
                    "    size: 2G\n"
                    "  bottom:\n"
                    "    label: heavy\n"
                    "    fixed: true\n"
                    "    size: ~\n"
                    "  spare:\n"
                    "  empty: {}\n";
    if (room_yaml(y, &o, &err) < 0)
        fail_msg("%s", err.msg);
    assert_true(o.doors == 2);
    assert_non_null(o.shelves[3]);
    assert_null(o.shelves[4]);
    shelf *top = o.shelves[0], *bottom = o.shelves[1], *spare = o.shelves[2];
    assert_string_equal(top->name, "top");
    assert_true(top->slots == 5);
    assert_true(top->size == 2ull << 30);
    assert_string_equal(top->label, "plain");
    assert_false(top->fixed);
    assert_string_equal(bottom->name, "bottom");
    assert_true(bottom->slots == SV_UNSET);
    assert_true(bottom->size == SV_UNSET);
    assert_string_equal(bottom->label, "heavy");
    assert_true(bottom->fixed);
    assert_string_equal(spare->name, "spare");
    assert_true(spare->slots == SV_UNSET);
    assert_string_equal(spare->label, "plain");

    char buf[128];
    sv_schema_render(&room_keys[1], &o, buf, sizeof buf);
    assert_string_equal(buf, "top, bottom, spare, empty");
    sv_schema_render(&shelf_keys[0], bottom, buf, sizeof buf);
    assert_string_equal(buf, "unset");

    /* a deep copy survives the original */
    room c = o;
    assert_int_equal(sv_schema_copy_fields(&room_schema, &c, &o), 0);
    assert_ptr_not_equal(c.shelves, o.shelves);
    assert_ptr_not_equal(c.shelves[0], o.shelves[0]);
    room_free(&o);
    assert_string_equal(c.shelves[1]->label, "heavy");
    assert_string_equal(c.shelves[1]->name, "bottom");

    /* JSON: unset numbers are null; back from JSON gives the same */
    json_t *j = sv_schema_to_json(&room_schema, &c);
    json_t *jb = json_object_get(json_object_get(j, "shelves"), "bottom");
    assert_true(json_is_null(json_object_get(jb, "slots")));
    assert_string_equal(json_string_value(json_object_get(jb, "label")), "heavy");
    assert_true(json_integer_value(json_object_get(json_object_get(json_object_get(j, "shelves"), "top"), "slots")) == 5);
    assert_true(json_real_value(json_object_get(json_object_get(j, "room"), "ratio")) == 4.0);
    room back;
    assert_int_equal(room_json(j, &back, &err), 0);
    json_t *k = sv_schema_to_json(&room_schema, &back);
    assert_true(json_equal(j, k));
    assert_true(back.shelves[1]->slots == SV_UNSET);
    json_decref(j);
    json_decref(k);
    room_free(&back);
    room_free(&c);

    /* a map given again replaces the earlier one; null empties it */
    assert_int_equal(room_yaml("shelves:\n", &o, &err), 0);
    assert_non_null(o.shelves);
    assert_null(o.shelves[0]);
    sv_schema_render(&room_keys[1], &o, buf, sizeof buf);
    assert_string_equal(buf, "[]");
    room_free(&o);
}

static void collect(const char *key, const char *value, void *userdata) {
    char *out = userdata;
    size_t n = strlen(out);
    snprintf(out + n, 1024 - n, "%s=%s;", key, value);
}

static void test_map_visit_and_add(void **state) {
    (void)state;
    room o;
    qv_error err = {0};
    char out[1024] = "";
    assert_int_equal(room_yaml("", &o, &err), 0);
    sv_schema_visit(&room_schema, &o, collect, out);
    assert_string_equal(out, "room.ratio=4.0;shelves=[];doors=unset;");

    void *e = NULL;
    assert_int_equal(sv_schema_map_add(&room_keys[1], &o, "b", false, &e), 0);
    assert_string_equal(((shelf *)e)->label, "plain");
    assert_true(((shelf *)e)->slots == SV_UNSET);
    assert_int_equal(sv_schema_map_add(&room_keys[1], &o, "a", true, NULL), 0);
    assert_int_equal(sv_schema_map_add(&room_keys[1], &o, "b", true, NULL), -EEXIST);
    assert_int_equal(sv_schema_map_add(&room_keys[1], &o, "B", true, NULL), -EINVAL);
    out[0] = '\0';
    sv_schema_visit(&room_schema, &o, collect, out);
    assert_string_equal(out, "room.ratio=4.0;"
                             "shelves.a.slots=unset;shelves.a.size=unset;shelves.a.label=plain;shelves.a.fixed=false;"
                             "shelves.b.slots=unset;shelves.b.size=unset;shelves.b.label=plain;shelves.b.fixed=false;"
                             "doors=unset;");
    room_free(&o);
}

static void test_map_errors(void **state) {
    (void)state;
    expect_room_yaml_error("shelves: [a]\n", "r.yaml:1:10: shelves: expected a mapping of shelf names to settings, got a list");
    expect_room_yaml_error("shelves:\n  Top: {}\n",
                           "r.yaml:2:3: shelves: 'Top' is not a valid shelf name (lowercase letters, digits and '-', "
                           "starting with a letter or digit, at most 63 characters)");
    expect_room_yaml_error("shelves:\n  a: {}\n  a: {}\n", "r.yaml:3:3: shelves.a: repeated key");
    expect_room_yaml_error("shelves:\n  a: 3\n", "r.yaml:2:6: shelves.a: expected a mapping of settings, got a single value");
    expect_room_yaml_error("shelves:\n  a:\n    slot: 3\n", "r.yaml:3:5: shelves.a.slot: unknown key");
    expect_room_yaml_error("shelves:\n  a:\n    slots: 3\n    slots: 4\n", "r.yaml:4:5: shelves.a.slots: repeated key");
    expect_room_yaml_error("shelves:\n  a:\n    slots: 300\n", "r.yaml:3:12: shelves.a.slots: 300 is out of range (0 to 100)");
    expect_room_yaml_error("shelves:\n  a:\n    size: 12\n", "r.yaml:3:11: shelves.a.size: expected a size with a unit (like 512M or 20G), got '12'");
    expect_room_yaml_error("shelves:\n  a:\n    label: 'x y'\n", "r.yaml:3:12: shelves.a.label: 'x y' has a space");
    expect_room_yaml_error("shelves:\n  a:\n    label:\n", "r.yaml:3:11: shelves.a.label: has no value");
    expect_room_yaml_error("shelves:\n  [a]: {}\n", "r.yaml:2:3: shelves: shelf names must be plain names, got a list");
    expect_room_yaml_error("shelves: {}\nshelves: {}\n", "r.yaml:2:1: shelves: repeated key");
    expect_room_yaml_error("doors: []\n", "r.yaml:1:8: doors: expected a single value, got a list");

    expect_room_json_error("{\"shelves\": []}", "room: shelves: expected an object of shelf names to settings");
    expect_room_json_error("{\"shelves\": {\"a/b\": {}}}",
                           "room: shelves: 'a/b' is not a valid shelf name (lowercase letters, digits and '-', "
                           "starting with a letter or digit, at most 63 characters)");
    expect_room_json_error("{\"shelves\": {\"a\": 1}}", "room: shelves.a: expected an object of settings");
    expect_room_json_error("{\"shelves\": {\"a\": {\"slot\": 1}}}", "room: shelves.a.slot: unknown key");
    expect_room_json_error("{\"shelves\": {\"a\": {\"slots\": 101}}}", "room: shelves.a.slots: 101 is out of range (0 to 100)");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_empty_lists),
        cmocka_unit_test(test_string_list_yaml),
        cmocka_unit_test(test_string_list_yaml_errors),
        cmocka_unit_test(test_string_list_json_errors),
        cmocka_unit_test(test_ratio),
        cmocka_unit_test(test_map_yaml),
        cmocka_unit_test(test_map_visit_and_add),
        cmocka_unit_test(test_map_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
