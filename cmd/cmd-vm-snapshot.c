/* qvisor vm snapshot NAME create|list|revert|rm [SNAP]: disk snapshots
 * (docs/snapshots.md). */
#include "output.h"
#include "cli.h"

#include "cleanup.h"
#include "util.h"

#include <string.h>
#include <time.h>

/* The daemon answers once the snapshot is made; a live one may wait for
 * the guest's agent to freeze its filesystems and for QEMU. */
#define SNAPSHOT_WAIT_MS (15ull * 60 * 1000)

static const char snapshot_help[] =
    "Usage: qvisor vm snapshot NAME create SNAP [--json]\n"
    "       qvisor vm snapshot NAME list [--json]\n"
    "       qvisor vm snapshot NAME revert SNAP [--json]\n"
    "       qvisor vm snapshot NAME rm SNAP [--json]\n"
    "\n"
    "Snapshots of the VM's own disk (internal qcow2 snapshots of disk.qcow2; the\n"
    "seed is made anew at every start anyway): docs/snapshots.md.\n"
    "\n"
    "  create SNAP   running or paused VM: through QEMU, with the guest's\n"
    "                filesystems frozen through its agent when it answers, and\n"
    "                thawed again whatever happens; without an answering agent the\n"
    "                snapshot is crash-consistent, and the output says so.\n"
    "                Stopped or crashed VM: through qemu-img (the VM is busy\n"
    "                meanwhile: a start is refused with 75)\n"
    "  list          name, when it was taken, the disk's size then, the VM state\n"
    "                size (0: disk only), whether the guest was frozen (yes, no,\n"
    "                unknown: a snapshot qvisor has no record of), the VM's state\n"
    "  revert SNAP   the disk goes back to SNAP; only while the VM is stopped or\n"
    "                crashed (the snapshots stay)\n"
    "  rm SNAP       deletes SNAP, running (through QEMU) or stopped (qemu-img)\n"
    "\n"
    "SNAP: 1 to 63 letters, digits, '.', '_' and '-', starting with a letter or a\n"
    "digit, not only digits.  Root, the socket group or the VM's owner (list:\n"
    "anyone).\n"
    "\n"
    "Exit: 0, 1 qemu-img or QEMU failed, 65 invalid SNAP, 66 no such VM or\n"
    "snapshot, 69 daemon not running, 73 create: SNAP exists already; revert: the\n"
    "VM is running or paused (stop it first), 75 busy (starting, stopping,\n"
    "another snapshot operation), 77 not root, the socket group or the VM's\n"
    "owner.\n";

static void print_list(json_t *res) {
    static const char *const headers[] = {"SNAPSHOT", "TAKEN", "DISK", "VM STATE", "FROZEN", "WHILE", NULL};
    qv_table *t = qv_table_new(headers);
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(res, "snapshots"), i, s) {
        char when[32] = "-", disk[32] = "-", vmstate[32];
        time_t secs = (time_t)json_integer_value(json_object_get(s, "time"));
        struct tm tm;
        if (localtime_r(&secs, &tm))
            strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
        json_t *d = json_object_get(s, "disk_size");
        if (json_is_integer(d))
            qv_format_size((uint64_t)json_integer_value(d), disk, sizeof disk);
        qv_format_size((uint64_t)json_integer_value(json_object_get(s, "vm_state_size")), vmstate, sizeof vmstate);
        json_t *fz = json_object_get(s, "frozen");
        const char *cells[] = {json_string_value(json_object_get(s, "name")),
                               when,
                               disk,
                               vmstate,
                               json_is_true(fz) ? "yes" : json_is_false(fz) ? "no" : "unknown",
                               json_string_value(json_object_get(s, "state")),
                               NULL};
        qv_table_add(t, cells);
    }
    qv_table_print(t, stdout);
    qv_table_free(t);
}

int cmd_vm_snapshot(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, snapshot_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm snapshot ", "bad option");
    int n = argc - optind;
    if (n < 2)
        return qv_cli_usage_error("vm snapshot ", "needs NAME and one of create, list, revert, rm");
    const char *name = argv[optind], *what = argv[optind + 1], *snap = n > 2 ? argv[optind + 2] : NULL;
    static const struct {
        const char *verb, *method;
        bool snap;
    } ops[] = {
        {"create", "vm.snapshot.create", true},
        {"list", "vm.snapshot.list", false},
        {"revert", "vm.snapshot.revert", true},
        {"rm", "vm.snapshot.remove", true},
    };
    size_t k = 0;
    while (k < QV_ARRAY_SIZE(ops) && strcmp(ops[k].verb, what) != 0)
        k++;
    if (k == QV_ARRAY_SIZE(ops))
        return qv_cli_usage_error("vm snapshot ", "unknown operation '%s' (create, list, revert, rm)", what);
    if (ops[k].snap ? n != 3 : n != 2)
        return qv_cli_usage_error("vm snapshot ", ops[k].snap ? "%s needs exactly one SNAP" : "%s takes no SNAP",
                                  what);
    json_t *params = json_pack("{s:s}", "name", name);
    if (snap)
        json_object_set_new(params, "snapshot", json_string(snap));
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call_long(cli, ops[k].method, params, SNAPSHOT_WAIT_MS, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(res, stdout);
        return QV_EXIT_OK;
    }
    if (k == 1) {
        print_list(res);
    } else if (cli->verbosity >= 0) {
        if (k == 0) {
            qv_printf("snapshot %s of VM %s taken (%s): %s\n", snap, name,
                      json_is_true(json_object_get(res, "frozen")) ? "frozen" : "not frozen",
                      qv_json_str(res, "agent") ?: "-");
        } else if (k == 2) {
            qv_printf("VM %s reverted to snapshot %s\n", name, snap);
        } else {
            qv_printf("snapshot %s of VM %s removed\n", snap, name);
        }
    }
    json_decref(res);
    return QV_EXIT_OK;
}
