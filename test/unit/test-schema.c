/* The schema's list kinds and per-key checks, on a private table (the node
 * config and the VM spec have their own tests): strings lists from YAML and
 * JSON, item checks with positions, copies, rendering. */
#include "testlib.h"

#include "cleanup.h"
#include "supervisor/schema.h"

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
    {NULL, "tags", SV_K_STRLIST, F(tags), NULL, 0, 0, NULL, false, false, check_word},
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_empty_lists),
        cmocka_unit_test(test_string_list_yaml),
        cmocka_unit_test(test_string_list_yaml_errors),
        cmocka_unit_test(test_string_list_json_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
