/* The VM state table (every cell), stop timeouts and restart backoff. */
#include "testlib.h"

#include "fileio.h"
#include "supervisor/vm/lifecycle.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/vm/vm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The table as docs/lifecycle.md prints it, rendered from the code: each
 * cell of the matrix is the next state, "=" (already satisfied), "ALREADY",
 * "BUSY", "DOWN" (no QEMU to ask) or "" (cannot happen); the list below it
 * names the action of every transition. */
static void render_tables(FILE *f) {
    fprintf(f, "| state \\ event |");
    for (int e = 0; e < SV_EV__COUNT; e++)
        fprintf(f, " %s |", sv_vm_event_name((sv_vm_event)e));
    fprintf(f, "\n|---|");
    for (int e = 0; e < SV_EV__COUNT; e++)
        fprintf(f, "---|");
    fprintf(f, "\n");
    for (int s = SV_VM_CREATING; s <= SV_VM_REMOVING; s++) {
        fprintf(f, "| %s |", sv_vm_state_name((sv_vm_state)s));
        for (int e = 0; e < SV_EV__COUNT; e++) {
            sv_vm_state to = (sv_vm_state)99;
            sv_vm_action act = SV_ACT__COUNT;
            int r = sv_vm_transition((sv_vm_state)s, (sv_vm_event)e, &to, &act);
            const char *cell = r == 0                ? sv_vm_state_name(to)
                               : r == 1              ? "="
                               : r == -EALREADY      ? "ALREADY"
                               : r == -EBUSY         ? "BUSY"
                               : r == -EHOSTDOWN     ? "DOWN"
                               : r == -EINVAL        ? NULL
                                                     : "?";
            fprintf(f, cell ? " %s |" : " |", cell);
            if (r == 1) { /* satisfied: the state stays, nothing is done */
                assert_int_equal(to, s);
                assert_int_equal(act, SV_ACT_NONE);
            }
            if (r == 0)
                assert_true(act > SV_ACT_NONE && act < SV_ACT__COUNT); /* every transition does something */
        }
        fprintf(f, "\n");
    }
    fprintf(f, "\n| in state | on | goes to | action |\n|---|---|---|---|\n");
    for (int s = SV_VM_CREATING; s <= SV_VM_REMOVING; s++)
        for (int e = 0; e < SV_EV__COUNT; e++) {
            sv_vm_state to;
            sv_vm_action act;
            if (sv_vm_transition((sv_vm_state)s, (sv_vm_event)e, &to, &act) == 0)
                fprintf(f, "| %s | %s | %s | `%s` |\n", sv_vm_state_name((sv_vm_state)s),
                        sv_vm_event_name((sv_vm_event)e), sv_vm_state_name(to), sv_vm_action_name(act));
        }
}

#define TABLE_BEGIN "<!-- state table: from supervisor/vm/lifecycle.c -->\n"
#define TABLE_END "<!-- end of the state table -->\n"

/* docs/lifecycle.md holds exactly the tables the code has (between the two
 * markers), and describes every action; QVISOR_UPDATE_GOLDEN=1 rewrites
 * the tables from the code. */
static void test_docs_match_the_table(void **state) {
    (void)state;
    char *want = NULL;
    size_t want_len = 0;
    FILE *f = open_memstream(&want, &want_len);
    assert_non_null(f);
    render_tables(f);
    fclose(f);
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/lifecycle.md", getenv("QVISOR_SOURCE_ROOT"));
    char *doc = NULL;
    size_t len = 0;
    assert_int_equal(qv_read_file(path, 1 << 20, &doc, &len), 0);
    char *b = strstr(doc, TABLE_BEGIN), *e = b ? strstr(b, TABLE_END) : NULL;
    if (!b || !e)
        fail_msg("%s: no \"%s\" ... \"%s\" section", path, TABLE_BEGIN, TABLE_END);
    b += strlen(TABLE_BEGIN);
    if (getenv("QVISOR_UPDATE_GOLDEN")) {
        FILE *out = fopen(path, "w");
        assert_non_null(out);
        fprintf(out, "%.*s%s%s", (int)(b - doc), doc, want, e);
        fclose(out);
    } else if ((size_t)(e - b) != want_len || memcmp(b, want, want_len) != 0) {
        fail_msg("docs/lifecycle.md's state table differs from the code's; the code's is:\n%s\n(run with "
                 "QVISOR_UPDATE_GOLDEN=1 to rewrite it, then check the prose around it)",
                 want);
    }
    /* every action the table names is explained */
    for (int a = SV_ACT_NONE + 1; a < SV_ACT__COUNT; a++) {
        char bullet[64];
        snprintf(bullet, sizeof bullet, "\n- `%s`:", sv_vm_action_name((sv_vm_action)a));
        if (!strstr(doc, bullet))
            fail_msg("docs/lifecycle.md does not explain the action `%s` (a line starting \"- `%s`:\")",
                     sv_vm_action_name((sv_vm_action)a), sv_vm_action_name((sv_vm_action)a));
    }
    free(doc);
    free(want);
}

/* A few cells by hand, the ones scripts rely on (exit codes of requests). */
static void test_request_cells(void **state) {
    (void)state;
    sv_vm_state to;
    sv_vm_action act;
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_START, &to, &act), 0);
    assert_int_equal(to, SV_VM_STARTING);
    assert_int_equal(act, SV_ACT_PREPARE);
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_START, &to, &act), -EALREADY);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPING, SV_EV_START, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_STOP, &to, &act), 1);
    assert_int_equal(sv_vm_transition(SV_VM_CRASHED, SV_EV_PAUSE, &to, &act), -EHOSTDOWN);
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_REMOVE, &to, &act), -EBUSY);
    /* vm edit: stopped or crashed only, the VM stays; 75 otherwise */
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_EDIT, &to, &act), 0);
    assert_int_equal(to, SV_VM_STOPPED);
    assert_int_equal(act, SV_ACT_EDIT);
    assert_int_equal(sv_vm_transition(SV_VM_CRASHED, SV_EV_EDIT, &to, &act), 0);
    assert_int_equal(to, SV_VM_CRASHED);
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_EDIT, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_PAUSED, SV_EV_EDIT, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_STARTING, SV_EV_EDIT, &to, &act), -EBUSY);
    /* vm resize: also while QEMU runs it, not while it starts or stops */
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_RESIZE, &to, &act), 0);
    assert_int_equal(to, SV_VM_RUNNING);
    assert_int_equal(act, SV_ACT_GROW);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_RESIZE, &to, &act), 0);
    assert_int_equal(to, SV_VM_STOPPED);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPING, SV_EV_RESIZE, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_CREATING, SV_EV_RESIZE, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_CRASHED, SV_EV_REMOVE, &to, &act), 0);
    assert_int_equal(to, SV_VM_REMOVING);
    assert_int_equal(act, SV_ACT_REMOVE);
    assert_int_equal(sv_vm_transition(SV_VM_STARTING, SV_EV_STOP, &to, &act), 0);
    assert_int_equal(act, SV_ACT_ABORT);
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_STARTED, &to, &act), -EINVAL);
    /* vm exec / vm cp: only a running guest's agent is asked; the VM stays */
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_GUEST, &to, &act), 0);
    assert_int_equal(to, SV_VM_RUNNING);
    assert_int_equal(act, SV_ACT_AGENT);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_GUEST, &to, &act), -EHOSTDOWN);
    assert_int_equal(sv_vm_transition(SV_VM_CRASHED, SV_EV_GUEST, &to, &act), -EHOSTDOWN);
    assert_int_equal(sv_vm_transition(SV_VM_PAUSED, SV_EV_GUEST, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPING, SV_EV_GUEST, &to, &act), -EBUSY);
    /* snapshots: through qemu-img without QEMU, through QMP with it; a
     * revert only without (73 otherwise), busy in the middle of anything */
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_SNAPSHOT, &to, &act), 0);
    assert_int_equal(to, SV_VM_STOPPED);
    assert_int_equal(act, SV_ACT_SNAPSHOT);
    assert_int_equal(sv_vm_transition(SV_VM_CRASHED, SV_EV_REVERT, &to, &act), 0);
    assert_int_equal(to, SV_VM_CRASHED);
    assert_int_equal(act, SV_ACT_REVERT);
    assert_int_equal(sv_vm_transition(SV_VM_PAUSED, SV_EV_SNAPSHOT, &to, &act), 0);
    assert_int_equal(to, SV_VM_PAUSED);
    assert_int_equal(act, SV_ACT_LIVE_SNAPSHOT);
    assert_int_equal(sv_vm_transition(SV_VM_RUNNING, SV_EV_REVERT, &to, &act), -EALREADY);
    assert_int_equal(sv_vm_transition(SV_VM_PAUSED, SV_EV_REVERT, &to, &act), -EALREADY);
    assert_int_equal(sv_vm_transition(SV_VM_STOPPING, SV_EV_SNAPSHOT, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_STARTING, SV_EV_REVERT, &to, &act), -EBUSY);
    assert_int_equal(sv_vm_transition(SV_VM_CREATING, SV_EV_SNAPSHOT, &to, &act), -EBUSY);
    /* vm clone, image create --from-vm: a stopped or crashed VM is held
     * where it is; one with a QEMU is busy (75) */
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV_COPY, &to, &act), 0);
    assert_int_equal(to, SV_VM_STOPPED);
    assert_int_equal(act, SV_ACT_HOLD);
    assert_int_equal(sv_vm_transition(SV_VM_CRASHED, SV_EV_COPY, &to, &act), 0);
    assert_int_equal(to, SV_VM_CRASHED);
    assert_int_equal(act, SV_ACT_HOLD);
    static const sv_vm_state busy[] = {SV_VM_CREATING, SV_VM_STARTING, SV_VM_RUNNING,
                                       SV_VM_PAUSED,   SV_VM_STOPPING, SV_VM_REMOVING};
    for (size_t i = 0; i < sizeof busy / sizeof *busy; i++)
        assert_int_equal(sv_vm_transition(busy[i], SV_EV_COPY, &to, &act), -EBUSY);
    assert_string_equal(sv_vm_event_name(SV_EV_COPY), "copy");
    assert_string_equal(sv_vm_action_name(SV_ACT_HOLD), "hold");
}

static void test_out_of_range(void **state) {
    (void)state;
    sv_vm_state to;
    assert_int_equal(sv_vm_next_state((sv_vm_state)42, SV_EV_START, &to), -EINVAL);
    assert_int_equal(sv_vm_next_state(SV_VM_STOPPED, SV_EV__COUNT, &to), -EINVAL);
    assert_string_equal(sv_vm_event_name(SV_EV__COUNT), "unknown");
    assert_string_equal(sv_vm_event_name(SV_EV_PAUSE), "pause");
    assert_string_equal(sv_vm_event_name(SV_EV_RESUME), "resume");
    assert_string_equal(sv_vm_action_name(SV_ACT__COUNT), "unknown");
    assert_int_equal(sv_vm_transition(SV_VM_STOPPED, SV_EV__COUNT, &to, NULL), -EINVAL);
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
    vfio_gpu_opt gpus[2] = {{.bdf = "0000:01:00.0"}, {.bdf = "0000:41:00.0"}};
    s.gpu_opts = gpus; /* guest GPU drivers: +10 s each */
    s.n_gpu_opts = 2;
    sv_stop_timeouts(&s, &c, 0, &g, &k);
    assert_int_equal(g, 70000);
    assert_int_equal(k, 14000);
    assert_int_equal(sv_pt_start_timeout_ms(&s, 60000), 240000); /* Proxmox's x4 */
    s.gpu_opts = NULL;
    s.n_gpu_opts = 0;
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
        cmocka_unit_test(test_docs_match_the_table),
        cmocka_unit_test(test_request_cells),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_stop_timeouts),
        cmocka_unit_test(test_restart_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
