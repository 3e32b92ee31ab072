/* Control methods for a VM's disk snapshots (docs/snapshots.md):
 * vm.snapshot.create, vm.snapshot.list, vm.snapshot.revert,
 * vm.snapshot.remove. */
#include "supervisor/daemon-internal.h"

#include "supervisor/vm/snapshot.h"

#include <errno.h>

static void snap_done(int status, json_t *result, const qv_error *err, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0)
        sv_ctl_reply_qv_error(req, err);
    else
        sv_ctl_reply(req, json_incref(result));
}

/* params.snapshot: a string (its form is checked by the engine), or a
 * reply and NULL. */
static const char *snapshot_param(sv_ctl_req *req, json_t *params) {
    json_t *s = json_object_get(params, "snapshot");
    if (!json_is_string(s)) {
        sv_ctl_reply_error(req, EINVAL, "\"snapshot\" must be a string (the snapshot's name)");
        return NULL;
    }
    return json_string_value(s);
}

static void snapshot_op(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params, sv_snapshot_op op) {
    const char *snap = snapshot_param(req, params);
    if (!snap)
        return;
    qv_error err = {0};
    if (sv_vm_snapshot(d->vmctl, vm, op, snap, snap_done, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
}

void sv_api_vm_snapshot_create(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    snapshot_op(d, req, vm, params, SV_SNAPSHOT_CREATE);
}

void sv_api_vm_snapshot_remove(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    snapshot_op(d, req, vm, params, SV_SNAPSHOT_REMOVE);
}

void sv_api_vm_snapshot_revert(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    snapshot_op(d, req, vm, params, SV_SNAPSHOT_REVERT);
}

void sv_api_vm_snapshot_list(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    (void)params;
    qv_error err = {0};
    if (sv_vm_snapshot_list(d->vmctl, vm, snap_done, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
}
