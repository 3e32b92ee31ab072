/* Who may call what (sv_authorize, docs/protocol.md "Who may do what"):
 * root and the socket group everything, anyone the reads, a VM's owner the
 * methods that act on that VM but do not create or remove it, and nobody
 * else.  The VMs are a real registry loaded from spec.json files. */
#include "testlib.h"

#include "cleanup.h"
#include "supervisor/daemon-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GROUP "qvisor"
#define OWNER_UID 1001
#define OTHER_UID 1002

static char *root;
static sv_config *config;
static sv_registry *reg;

/* What an owner may do to its VM. */
static const char *const owner_methods[] = {"vm.start",      "vm.stop",        "vm.restart",   "vm.pause",
                                            "vm.resume",     "vm.console",     "vm.log",       "vm.ssh_key",
                                            "vm.exec",       "vm.exec_status", "vm.file_open", "vm.file_read",
                                            "vm.file_write", "vm.file_close", "vm.copy_in", "vm.copy_out", "vm.snapshot.create", "vm.snapshot.revert",
                                            "vm.snapshot.remove"};
/* What only root and the socket group may do. */
static const char *const privileged_methods[] = {"vm.create",    "vm.remove",    "image.import", "image.remove",
                                                 "config.reload", "node.cleanup", "net.teardown", "vm.edit",
                                                 "vm.resize",
                                                 /* a clone is a new VM: not for the source's owner */
                                                 "vm.clone",     "image.create"};
/* What anyone who may connect may do. */
static const char *const read_methods[] = {"ping",        "config.get",  "image.list",       "vm.list",
                                           "vm.show",     "gpu.list",    "net.list",         "node.status",
                                           "node.metrics", "vm.wait",    "events.subscribe", "vm.snapshot.list"};

static void write_vm(const char *name, const char *spec) {
    char rel[128], text[512];
    snprintf(rel, sizeof rel, "%s/spec.json", name);
    snprintf(text, sizeof text, "{\"name\":\"%s\",\"image\":\"i\"%s}\n", name, spec);
    qv_test_write(config->instances_dir, rel, text);
    snprintf(rel, sizeof rel, "%s/state.json", name);
    qv_test_write(config->instances_dir, rel, "{\"state\":\"stopped\",\"run\":{\"pid\":0}}\n");
}

static int setup(void **st) {
    (void)st;
    root = qv_test_mkdtemp("qv-authorize");
    config = sv_config_new_default();
    assert_non_null(config);
    free(config->instances_dir);
    free(config->run_dir);
    assert_true(asprintf(&config->instances_dir, "%s/instances", root) > 0);
    assert_true(asprintf(&config->run_dir, "%s/run", root) > 0);
    write_vm("job", ",\"owner\":1001,\"slurm_job\":42");
    write_vm("mine", ",\"owner\":1001");
    write_vm("plain", "");
    write_vm("rootvm", ",\"owner\":0,\"slurm_job\":7");
    qv_error err = {0};
    if (sv_registry_load(&config, &reg, NULL, &err) < 0)
        fail_msg("%s", err.msg);
    return 0;
}

static int teardown(void **st) {
    (void)st;
    sv_registry_free(reg);
    sv_config_free(config);
    qv_test_rm_rf(root);
    free(root);
    return 0;
}

static sv_vm *vm(const char *name) {
    if (!name)
        return NULL; /* the request names no VM, or one that does not exist */
    sv_vm *v = sv_registry_find(reg, name);
    assert_non_null(v);
    return v;
}

static void allowed(const sv_ctl_peer *p, const char *method, const char *vm_name) {
    qv_error err = {0};
    int r = sv_authorize(p, method, vm(vm_name), GROUP, &err);
    if (r != 0)
        fail_msg("uid %u, %s on %s: refused (%d, %s)", (unsigned)p->uid, method, vm_name ? vm_name : "no VM", r,
                 err.msg);
}

static void refused(const sv_ctl_peer *p, const char *method, const char *vm_name, const char *msg) {
    qv_error err = {0};
    int r = sv_authorize(p, method, vm(vm_name), GROUP, &err);
    if (r != -EPERM || strcmp(err.msg, msg) != 0)
        fail_msg("uid %u, %s on %s: got %d '%s', want EPERM '%s'", (unsigned)p->uid, method,
                 vm_name ? vm_name : "no VM", r, err.msg, msg);
    assert_int_equal(qv_exit_code_for_errno(r), 77);
}

static void refused_for_group(const sv_ctl_peer *p, const char *method, const char *vm_name) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s needs root or membership in the group '" GROUP "'", method);
    refused(p, method, vm_name, msg);
}

static const char *const all_vms[] = {"job", "mine", "plain", "rootvm", NULL};

static void test_privileged_peer_may_call_everything(void **st) {
    (void)st;
    /* root, and a member of the socket group with another uid */
    const sv_ctl_peer peers[] = {{.pid = 10, .uid = 0, .gid = 0, .may_write = true},
                                 {.pid = 11, .uid = 5000, .gid = 5000, .may_write = true}};
    for (size_t p = 0; p < QV_ARRAY_SIZE(peers); p++)
        for (size_t v = 0; v < QV_ARRAY_SIZE(all_vms); v++) {
            for (size_t i = 0; i < QV_ARRAY_SIZE(owner_methods); i++)
                allowed(&peers[p], owner_methods[i], all_vms[v]);
            for (size_t i = 0; i < QV_ARRAY_SIZE(privileged_methods); i++)
                allowed(&peers[p], privileged_methods[i], all_vms[v]);
            for (size_t i = 0; i < QV_ARRAY_SIZE(read_methods); i++)
                allowed(&peers[p], read_methods[i], all_vms[v]);
        }
}

static void test_owner_may_act_on_its_vm(void **st) {
    (void)st;
    const sv_ctl_peer owner = {.pid = 20, .uid = OWNER_UID, .gid = 100};
    for (size_t i = 0; i < QV_ARRAY_SIZE(owner_methods); i++) {
        allowed(&owner, owner_methods[i], "job");
        allowed(&owner, owner_methods[i], "mine"); /* a VM of no job */
    }
}

static void test_owner_may_not_create_remove_or_run_the_node(void **st) {
    (void)st;
    const sv_ctl_peer owner = {.pid = 21, .uid = OWNER_UID, .gid = 100};
    /* the VM it owns, named in the request, changes nothing */
    for (size_t i = 0; i < QV_ARRAY_SIZE(privileged_methods); i++) {
        refused_for_group(&owner, privileged_methods[i], "job");
        refused_for_group(&owner, privileged_methods[i], NULL);
    }
}

static void test_anyone_may_read(void **st) {
    (void)st;
    const sv_ctl_peer stranger = {.pid = 30, .uid = 4242, .gid = 4242};
    for (size_t v = 0; v < QV_ARRAY_SIZE(all_vms); v++)
        for (size_t i = 0; i < QV_ARRAY_SIZE(read_methods); i++)
            allowed(&stranger, read_methods[i], all_vms[v]);
}

static void test_not_the_owner(void **st) {
    (void)st;
    const sv_ctl_peer other = {.pid = 40, .uid = OTHER_UID, .gid = 100};
    for (size_t i = 0; i < QV_ARRAY_SIZE(owner_methods); i++) {
        refused(&other, owner_methods[i], "job", "VM 'job' belongs to uid 1001 (job 42); you are uid 1002");
        refused(&other, owner_methods[i], "mine", "VM 'mine' belongs to uid 1001; you are uid 1002");
        refused(&other, owner_methods[i], "rootvm", "VM 'rootvm' belongs to uid 0 (job 7); you are uid 1002");
    }
    /* the owner's uid as the peer's group is no ownership: uids only */
    const sv_ctl_peer gid_only = {.pid = 41, .uid = OTHER_UID, .gid = OWNER_UID};
    refused(&gid_only, "vm.start", "job", "VM 'job' belongs to uid 1001 (job 42); you are uid 1002");
    /* nor is another VM's ownership */
    const sv_ctl_peer owner = {.pid = 42, .uid = OWNER_UID, .gid = 100};
    refused(&owner, "vm.stop", "rootvm", "VM 'rootvm' belongs to uid 0 (job 7); you are uid 1001");
}

static void test_vm_without_owner(void **st) {
    (void)st;
    const sv_ctl_peer owner = {.pid = 50, .uid = OWNER_UID, .gid = 100};
    for (size_t i = 0; i < QV_ARRAY_SIZE(owner_methods); i++)
        refused_for_group(&owner, owner_methods[i], "plain");
}

static void test_unknown_vm(void **st) {
    (void)st;
    /* no VM to own: the dispatch passes NULL for a name that is no VM */
    const sv_ctl_peer owner = {.pid = 60, .uid = OWNER_UID, .gid = 100};
    for (size_t i = 0; i < QV_ARRAY_SIZE(owner_methods); i++)
        refused_for_group(&owner, owner_methods[i], NULL);
    assert_null(sv_registry_find(reg, "nosuch"));
}

static void test_unknown_method(void **st) {
    (void)st;
    const sv_ctl_peer rootp = {.pid = 70, .uid = 0, .gid = 0, .may_write = true};
    qv_error err = {0};
    assert_int_equal(sv_authorize(&rootp, "vm.frobnicate", NULL, GROUP, &err), -ENOSYS);
}

static void test_no_group_configured(void **st) {
    (void)st;
    const sv_ctl_peer other = {.pid = 80, .uid = OTHER_UID, .gid = 100};
    qv_error err = {0};
    assert_int_equal(sv_authorize(&other, "vm.start", vm("plain"), "", &err), -EPERM);
    assert_string_equal(err.msg, "vm.start needs root or membership in the group '(none configured)'");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_privileged_peer_may_call_everything),
        cmocka_unit_test(test_owner_may_act_on_its_vm),
        cmocka_unit_test(test_owner_may_not_create_remove_or_run_the_node),
        cmocka_unit_test(test_anyone_may_read),
        cmocka_unit_test(test_not_the_owner),
        cmocka_unit_test(test_vm_without_owner),
        cmocka_unit_test(test_unknown_vm),
        cmocka_unit_test(test_unknown_method),
        cmocka_unit_test(test_no_group_configured),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
