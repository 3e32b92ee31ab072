/* vm edit and vm resize on a spec (spec/vmedit.h): which keys may change,
 * the merge, NICs that keep their MAC and address, the grow-only size. */
#include "testlib.h"

#include "cleanup.h"
#include "spec/vmedit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static sv_config *node(void) {
    sv_config *c = sv_config_new_default();
    assert_non_null(c);
    return c;
}

/* A spec as create leaves it: completed, NICs with their MACs. */
static sv_vmspec *created(const char *json) {
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    assert_non_null(j);
    sv_vmspec *s = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmspec_from_json(j, &s, &err), 0);
    json_decref(j);
    _cleanup_(sv_config_freep) sv_config *c = node();
    assert_int_equal(sv_vmspec_complete(s, c, &err), 0);
    return s;
}

static int edit(const sv_vmspec *old, const char *changes, sv_vmspec **ret, qv_error *err) {
    json_error_t je;
    json_t *j = json_loads(changes, 0, &je);
    assert_non_null(j);
    _cleanup_(sv_config_freep) sv_config *c = node();
    int r = sv_vmspec_edit(old, j, c, ret, err);
    json_decref(j);
    return r;
}

static const char base[] =
    "{\"name\": \"web\", \"image\": \"deb\", \"cpus\": 2, \"memory\": \"1G\", \"disk\": \"10G\","
    " \"restart\": \"never\", \"hostname\": \"www\", \"owner\": 1000, \"runcmd\": [\"echo hi\"],"
    " \"nets\": [\"user,mac=0a:51:76:00:00:01\", \"nat,ip=10.0.0.5,mac=0a:51:76:00:00:02\"],"
    " \"gpus\": [\"0000:01:00.0\"]}";

static void test_merge_changes_only_what_is_asked(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *old = created(base);
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    qv_error err = {0};
    assert_int_equal(edit(old, "{\"cpus\": \"4\", \"memory\": \"2G\", \"restart\": \"on-failure\"}", &s, &err), 0);
    assert_true(s->cpus == 4);
    assert_true(s->memory == 2ull << 30);
    assert_int_equal(s->restart, SV_RESTART_ON_FAILURE);
    /* the rest is the old spec's */
    assert_true(s->disk == 10ull << 30);
    assert_string_equal(s->hostname, "www");
    assert_string_equal(s->image, "deb");
    assert_true(s->owner == 1000);
    assert_string_equal(s->runcmd[0], "echo hi");
    assert_int_equal(s->n_gpu_opts, 1);
    assert_int_equal(s->n_nics, 2);
    assert_string_equal(s->nics[1].mac, "0a:51:76:00:00:02");
    assert_string_equal(s->nics[1].ip, "10.0.0.5");
    /* the old one is untouched */
    assert_true(old->cpus == 2);
    assert_int_equal(old->restart, SV_RESTART_NEVER);
}

static void test_lists_replace_and_clear(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *old = created(base);
    qv_error err = {0};
    sv_vmspec *s = NULL;
    /* gpus: replaced, then cleared with [] and with null */
    assert_int_equal(edit(old, "{\"gpus\": [\"0000:02:00.0,keep\", \"0000:03:00.0\"]}", &s, &err), 0);
    assert_int_equal(s->n_gpu_opts, 2);
    assert_string_equal(s->gpu_opts[0].bdf, "0000:02:00.0");
    assert_true(s->gpu_opts[0].keep);
    sv_vmspec_free(s);
    assert_int_equal(edit(old, "{\"gpus\": []}", &s, &err), 0);
    assert_int_equal(s->n_gpu_opts, 0);
    assert_true(!s->gpus || !s->gpus[0]);
    sv_vmspec_free(s);
    assert_int_equal(edit(old, "{\"gpus\": null, \"numa\": null, \"pin\": \"0-1\"}", &s, &err), 0);
    assert_int_equal(s->n_gpu_opts, 0);
    assert_int_equal(s->n_pin_cpus, 2);
    sv_vmspec_free(s);
    /* nets: [] is the one user NIC of a spec without nets, with the old user NIC's MAC */
    assert_int_equal(edit(old, "{\"nets\": []}", &s, &err), 0);
    assert_int_equal(s->n_nics, 1);
    assert_int_equal(s->nics[0].mode, ND_MODE_USER);
    assert_string_equal(s->nics[0].mac, "0a:51:76:00:00:01");
    sv_vmspec_free(s);
}

static void test_nics_keep_mac_and_address(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *old = created(base);
    qv_error err = {0};
    sv_vmspec *s = NULL;
    /* the NICs as a user writes them, reordered, plus a new one: the known
     * ones keep their MAC and nat address, the new one has no MAC yet */
    assert_int_equal(edit(old, "{\"nets\": [\"nat\", \"user\", \"nat\"]}", &s, &err), 0);
    assert_int_equal(s->n_nics, 3);
    assert_string_equal(s->nics[0].mac, "0a:51:76:00:00:02");
    assert_string_equal(s->nics[0].ip, "10.0.0.5");
    assert_string_equal(s->nics[1].mac, "0a:51:76:00:00:01");
    assert_string_equal(s->nics[2].mac, "");
    assert_string_equal(s->nics[2].ip, "");
    assert_string_equal(s->nets[0], "nat,ip=10.0.0.5,mac=0a:51:76:00:00:02");
    sv_vmspec_free(s);
    /* another address is another NIC; a MAC named picks its old NIC */
    assert_int_equal(edit(old, "{\"nets\": [\"nat,ip=10.0.0.9\", \"user,mac=0a:51:76:00:00:01\"]}", &s, &err), 0);
    assert_string_equal(s->nics[0].mac, "");
    assert_string_equal(s->nics[0].ip, "10.0.0.9");
    assert_string_equal(s->nics[1].mac, "0a:51:76:00:00:01");
    sv_vmspec_free(s);
    /* a bridge NIC where a nat one was: new */
    assert_int_equal(edit(old, "{\"nets\": [\"user\", \"bridge,bridge=br0\"]}", &s, &err), 0);
    assert_string_equal(s->nics[0].mac, "0a:51:76:00:00:01");
    assert_string_equal(s->nics[1].mac, "");
    sv_vmspec_free(s);
}

static void test_refusals(void **state) {
    (void)state;
    _cleanup_(sv_vmspec_freep) sv_vmspec *old = created(base);
    qv_error err = {0};
    sv_vmspec *s = NULL;
    static const struct {
        const char *changes, *msg;
    } cases[] = {
        {"{\"disk\": \"20G\"}", "vm resize"},
        {"{\"image\": \"other\"}", "spec: image cannot be changed"},
        {"{\"owner\": 0}", "set at create only"},
        {"{\"name\": \"x\"}", "spec: name cannot be changed"},
        {"{\"hostname\": \"h\"}", "fixed at create"},
        {"{\"cpus\": 0}", "spec: cpus: 0 is out of range"},
        {"{\"memory\": \"100\"}", "spec: memory: expected a size with a unit"},
        {"{\"restart\": \"sometimes\"}", "spec: restart"},
        {"{\"nets\": [\"carrier-pigeon\"]}", "spec: nets[0]"},
        {"{\"gpus\": [\"x\"]}", "spec: gpus[0]"},
        {"{\"numa\": \"auto\", \"pin\": \"0\"}", "pin and numa: auto exclude each other"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err = (qv_error){0};
        int r = edit(old, cases[i].changes, &s, &err);
        if (r != -EINVAL || !strstr(err.msg, cases[i].msg))
            fail_msg("%s: got %d '%s', want EINVAL with '%s'", cases[i].changes, r, err.msg, cases[i].msg);
    }
    assert_true(old->cpus == 2);
}

static void test_disk_grows_only(void **state) {
    (void)state;
    const uint64_t G = 1ull << 30;
    uint64_t to = 0;
    qv_error err = {0};
    assert_int_equal(sv_disk_resize_target(10 * G, 20 * G, false, &to, &err), 0);
    assert_true(to == 20 * G);
    assert_int_equal(sv_disk_resize_target(10 * G, 5 * G, true, &to, &err), 0);
    assert_true(to == 15 * G);
    /* the same size: nothing to do */
    assert_int_equal(sv_disk_resize_target(10 * G, 10 * G, false, &to, &err), 1);
    assert_true(to == 10 * G);
    assert_int_equal(sv_disk_resize_target(10 * G, 0, true, &to, &err), 1);
    /* smaller: refused, naming both */
    to = 7;
    assert_int_equal(sv_disk_resize_target(10 * G, 9 * G, false, &to, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "9G"));
    assert_non_null(strstr(err.msg, "10G"));
    assert_non_null(strstr(err.msg, "never shrink"));
    assert_true(to == 7); /* untouched on failure */
    /* past the largest disk, also by overflow */
    assert_int_equal(sv_disk_resize_target(10 * G, SV_DISK_MAX + 1, false, &to, &err), -EINVAL);
    assert_int_equal(sv_disk_resize_target(10 * G, SV_DISK_MAX, true, &to, &err), -EINVAL);
    assert_int_equal(sv_disk_resize_target(10 * G, UINT64_MAX, true, &to, &err), -EINVAL);
    assert_int_equal(sv_disk_resize_target(10 * G, SV_DISK_MAX - 10 * G, true, &to, &err), 0);
    assert_true(to == SV_DISK_MAX);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_changes_only_what_is_asked),
        cmocka_unit_test(test_lists_replace_and_clear),
        cmocka_unit_test(test_nics_keep_mac_and_address),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_disk_grows_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
