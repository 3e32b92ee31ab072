/* The VM state table (every cell), stop timeouts and restart backoff. */
#include "testlib.h"

#include "supervisor/vm/lifecycle.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/vm/vm.h"

#include <errno.h>
#include <string.h>

/* The table as docs/lifecycle.md prints it: each cell is a target state
 * name, "=" (already satisfied), "ALREADY", "BUSY", "DOWN" (no QEMU to ask)
 * or "" (cannot happen). */
static const char *const expected[][SV_EV__COUNT] = {
    /*               start       started    start-failed stop        paused      resumed     exited      crashed     remove      pause      resume */
    [SV_VM_CREATING] = {"BUSY",     "",        "",        "BUSY",     "",         "",         "",         "",         "BUSY",     "BUSY",    "BUSY"},
    [SV_VM_STOPPED] = {"starting", "",        "",        "=",        "",         "",         "",         "",         "removing", "DOWN",    "DOWN"},
    [SV_VM_STARTING] = {"BUSY",    "running", "stopped", "stopping", "starting", "starting", "stopped",  "stopped",  "BUSY",     "BUSY",    "BUSY"},
    [SV_VM_RUNNING] = {"ALREADY",  "",        "",        "stopping", "paused",   "running",  "stopped",  "crashed",  "BUSY",     "paused",  "="},
    [SV_VM_PAUSED] = {"ALREADY",   "",        "",        "stopping", "paused",   "running",  "stopped",  "crashed",  "BUSY",     "=",       "running"},
    [SV_VM_STOPPING] = {"BUSY",    "",        "",        "stopping", "stopping", "stopping", "stopped",  "stopped",  "BUSY",     "BUSY",    "BUSY"},
    [SV_VM_CRASHED] = {"starting", "",        "",        "=",        "",         "",         "",         "",         "removing", "DOWN",    "DOWN"},
    [SV_VM_REMOVING] = {"BUSY",    "",        "",        "BUSY",     "",         "",         "",         "",         "BUSY",     "BUSY",    "BUSY"},
};

static void test_every_cell(void **state) {
    (void)state;
    for (int s = SV_VM_CREATING; s <= SV_VM_REMOVING; s++)
        for (int e = 0; e < SV_EV__COUNT; e++) {
            sv_vm_state to = (sv_vm_state)99;
            int r = sv_vm_next_state((sv_vm_state)s, (sv_vm_event)e, &to);
            const char *want = expected[s][e];
            char got[32];
            if (r == 0)
                snprintf(got, sizeof got, "%s", sv_vm_state_name(to));
            else if (r == 1)
                snprintf(got, sizeof got, "=");
            else if (r == -EALREADY)
                snprintf(got, sizeof got, "ALREADY");
            else if (r == -EBUSY)
                snprintf(got, sizeof got, "BUSY");
            else if (r == -EHOSTDOWN)
                snprintf(got, sizeof got, "DOWN");
            else
                snprintf(got, sizeof got, "%s", r == -EINVAL ? "" : "?");
            if (strcmp(got, want) != 0)
                fail_msg("state %s event %s: got '%s', want '%s'", sv_vm_state_name((sv_vm_state)s),
                         sv_vm_event_name((sv_vm_event)e), got, want);
            if (r == 1)
                assert_int_equal(to, s);
        }
}

static void test_out_of_range(void **state) {
    (void)state;
    sv_vm_state to;
    assert_int_equal(sv_vm_next_state((sv_vm_state)42, SV_EV_START, &to), -EINVAL);
    assert_int_equal(sv_vm_next_state(SV_VM_STOPPED, SV_EV__COUNT, &to), -EINVAL);
    assert_string_equal(sv_vm_event_name(SV_EV__COUNT), "unknown");
    assert_string_equal(sv_vm_event_name(SV_EV_PAUSE), "pause");
    assert_string_equal(sv_vm_event_name(SV_EV_RESUME), "resume");
}

static void test_stop_timeouts(void **state) {
    (void)state;
    sv_config c = {.stop_timeout_ms = 60000, .kill_timeout_ms = 10000};
    sv_vmspec s = {.memory = 2ull << 30};
    uint64_t g, k;
    sv_stop_timeouts(&s, &c, 0, &g, &k);
    assert_int_equal(g, 60000); /* small guest: the node's timeout */
    assert_int_equal(k, 10000);
    s.stop_timeout_ms = 30000; /* the VM's own */
    sv_stop_timeouts(&s, &c, 0, &g, &k);
    assert_int_equal(g, 30000);
    s.memory = 64ull << 30; /* 4 x 16 GiB: +20 s graceful, +4 s kill */
    sv_stop_timeouts(&s, &c, 0, &g, &k);
    assert_int_equal(g, 50000);
    assert_int_equal(k, 14000);
    sv_stop_timeouts(&s, &c, 3000, &g, &k); /* --timeout is taken exactly */
    assert_int_equal(g, 3000);
    assert_int_equal(k, 14000);
    char *gpus[] = {(char[]){"0000:01:00.0"}, (char[]){"0000:41:00.0"}, NULL};
    s.gpus = gpus; /* guest GPU drivers: +10 s each */
    sv_stop_timeouts(&s, &c, 0, &g, &k);
    assert_int_equal(g, 70000);
    assert_int_equal(k, 14000);
    assert_int_equal(sv_pt_start_timeout_ms(&s, 60000), 240000); /* Proxmox's x4 */
    s.gpus = NULL;
    assert_int_equal(sv_pt_start_timeout_ms(&s, 60000), 60000);
}

static void test_restart_backoff(void **state) {
    (void)state;
    assert_int_equal(sv_restart_backoff_ms(0), 1000);
    assert_int_equal(sv_restart_backoff_ms(1), 2000);
    assert_int_equal(sv_restart_backoff_ms(5), 32000);
    assert_int_equal(sv_restart_backoff_ms(6), 60000);
    assert_int_equal(sv_restart_backoff_ms(1000), 60000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_cell),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_stop_timeouts),
        cmocka_unit_test(test_restart_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
