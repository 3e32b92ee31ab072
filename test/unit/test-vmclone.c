/* vm clone's spec (spec/vmclone.h): what a clone keeps of its source, what
 * it must not share (MACs, nat addresses, host name, owner, GPUs), and its
 * options. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "netdev/nic.h"
#include "spec/vmclone.h"
#include "spec/vmspec.h"
#include "supervisor/vm/nics.h"

static json_t *source(void) {
    return json_pack("{s:s, s:s, s:i, s:s, s:i, s:i, s:[s], s:[s, s, s], s:[s], s:b}", "name", "src", "image", "base",
                     "cpus", 2, "hostname", "src", "owner", 1001, "slurm_job", 77, "gpus", "0000:01:00.0", "nets",
                     "nat,ip=10.77.0.5,mac=0a:51:76:00:00:01", "user,mac=0a:51:76:00:00:02",
                     "bridge,bridge=br0,vlan=5,mac=0a:51:76:00:00:03", "ssh_keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep alice@test",
                     "ssh_generate", 1);
}

static void test_identity_dropped(void **state) {
    (void)state;
    json_t *src = source(), *out = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmclone_spec(src, "copy", NULL, &out, &err), 0);
    assert_string_equal(json_string_value(json_object_get(out, "name")), "copy");
    assert_string_equal(json_string_value(json_object_get(out, "image")), "base");
    assert_int_equal(json_integer_value(json_object_get(out, "cpus")), 2);
    assert_true(json_is_true(json_object_get(out, "ssh_generate")));
    assert_null(json_object_get(out, "hostname"));
    assert_null(json_object_get(out, "owner"));
    assert_null(json_object_get(out, "slurm_job"));
    assert_null(json_object_get(out, "gpus"));
    json_t *nets = json_object_get(out, "nets");
    assert_int_equal(json_array_size(nets), 3);
    assert_string_equal(json_string_value(json_array_get(nets, 0)), "nat");
    assert_string_equal(json_string_value(json_array_get(nets, 1)), "user");
    assert_string_equal(json_string_value(json_array_get(nets, 2)), "bridge,bridge=br0,vlan=5");
    /* the source is untouched */
    assert_string_equal(json_string_value(json_array_get(json_object_get(src, "nets"), 0)),
                        "nat,ip=10.77.0.5,mac=0a:51:76:00:00:01");
    /* the clone's NICs get MACs derived from its own name: none of the source's */
    sv_vmspec *spec = NULL;
    if (sv_vmspec_from_json(out, &spec, &err) < 0)
        fail_msg("%s", err.msg);
    nd_nic nics[ND_NICS_MAX];
    size_t n = 0;
    assert_int_equal(sv_net_nics(spec, nics, &n, &err), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        char want[ND_MAC_SIZE];
        nd_mac_derive("copy", (unsigned)i, 0, want);
        assert_string_equal(nics[i].mac, want);
        assert_true(strncmp(nics[i].mac, "0a:51:76:00:00:0", 16) != 0);
    }
    sv_vmspec_free(spec);
    json_decref(out);
    json_decref(src);
}

static void test_options(void **state) {
    (void)state;
    json_t *src = source(), *out = NULL;
    qv_error err = {0};
    json_t *opts = json_pack("{s:i, s:s, s:[s], s:[s], s:i}", "cpus", 4, "hostname", "web-2", "ssh_keys",
                             "ssh-ed25519 BBBB c@d", "nets", "user", "owner", 1002);
    assert_int_equal(sv_vmclone_spec(src, "copy", opts, &out, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(out, "cpus")), 4);
    assert_string_equal(json_string_value(json_object_get(out, "hostname")), "web-2");
    assert_int_equal(json_integer_value(json_object_get(out, "owner")), 1002);
    assert_int_equal(json_array_size(json_object_get(out, "ssh_keys")), 2); /* added to the source's */
    json_t *nets = json_object_get(out, "nets");
    assert_int_equal(json_array_size(nets), 1); /* replaced */
    assert_string_equal(json_string_value(json_array_get(nets, 0)), "user");
    json_decref(out);
    json_decref(opts);
    /* what a clone keeps of its source cannot be an option */
    static const char *const fixed[] = {"image", "disk", "name", "kernel", "user_data", "firmware"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        opts = json_pack("{s:s}", fixed[i], "x");
        out = NULL;
        assert_int_equal(sv_vmclone_spec(src, "copy", opts, &out, &err), -EINVAL);
        assert_null(out);
        assert_non_null(strstr(err.msg, fixed[i]));
        json_decref(opts);
    }
    opts = json_pack("[]");
    assert_int_equal(sv_vmclone_spec(src, "copy", opts, &out, &err), -EINVAL);
    json_decref(opts);
    json_decref(src);
}

static void test_static_bridge_address_refused(void **state) {
    (void)state;
    json_t *src = json_pack("{s:s, s:s, s:[s]}", "name", "src", "image", "base", "nets",
                            "bridge,bridge=br0,ip=192.168.1.20/24,gw=192.168.1.1");
    json_t *out = NULL;
    qv_error err = {0};
    assert_int_equal(sv_vmclone_spec(src, "copy", NULL, &out, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "192.168.1.20/24"));
    assert_null(out);
    /* with NICs of its own the clone is fine */
    json_t *opts = json_pack("{s:[s]}", "nets", "bridge,bridge=br0,ip=192.168.1.21/24");
    assert_int_equal(sv_vmclone_spec(src, "copy", opts, &out, &err), 0);
    json_decref(out);
    json_decref(opts);
    /* a malformed NIC in the source is an error, not dropped */
    json_decref(src);
    src = json_pack("{s:s, s:s, s:[s]}", "name", "src", "image", "base", "nets", "tunnel,mac=x");
    assert_int_equal(sv_vmclone_spec(src, "copy", NULL, &out, &err), -EINVAL);
    json_decref(src);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_dropped),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_static_bridge_address_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
