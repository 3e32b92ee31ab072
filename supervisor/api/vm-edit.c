/* Control methods vm.edit and vm.resize (docs/protocol.md): the changes
 * checked here, the rest is the engine's (supervisor/vm/edit.c). */
#include "supervisor/daemon-internal.h"

#include "log.h"
#include "spec/vmedit.h"
#include "supervisor/vm/vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct edit_ctx {
    sv_daemon *d;
    sv_ctl_req *req;
    char name[64];
} edit_ctx;

/* The VM as vm.show shows it, once the new spec is in place. */
static void edited(int status, json_t *result, const qv_error *err, void *userdata) {
    (void)result;
    edit_ctx *x = userdata;
    sv_vm *vm = status < 0 ? NULL : sv_registry_find(x->d->registry, x->name);
    if (status < 0) {
        sv_ctl_reply_qv_error(x->req, err);
    } else if (!vm) {
        sv_ctl_reply_error(x->req, ENOENT, "no VM named '%s'", x->name);
    } else {
        sv_vmctl_release_orphans(x->d->vmctl); /* GPUs it kept on vfio-pci and no longer names */
        json_t *j = sv_vm_details(vm);
        json_object_update_new(j, sv_vm_runtime_json(x->d->vmctl, vm));
        sv_ctl_reply(x->req, j);
    }
    free(x);
}

/* {"name", "changes": {KEY: VALUE, …}}: the editable spec keys
 * (spec/vmedit.h) in the spec's JSON form; null (or [] for gpus and nets)
 * returns a key to its default. */
void sv_api_vm_edit(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    json_t *changes = json_object_get(params, "changes");
    if (!json_is_object(changes) || json_object_size(changes) == 0) {
        sv_ctl_reply_error(req, EINVAL, "\"changes\" must be an object with at least one spec key");
        return;
    }
    qv_error err = {0};
    sv_vmspec *spec = NULL;
    edit_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        sv_ctl_reply_error(req, ENOMEM, "out of memory");
        return;
    }
    *x = (edit_ctx){.d = d, .req = req};
    snprintf(x->name, sizeof x->name, "%s", sv_vm_name(vm));
    if (sv_vmspec_edit(sv_vm_spec(vm), changes, d->config, &spec, &err) < 0 ||
        sv_vm_edit(d->vmctl, vm, spec, edited, x, &err) < 0) {
        sv_vmspec_free(spec);
        free(x);
        log_info("vm edit %s refused: %s", sv_vm_name(vm), err.msg);
        sv_ctl_reply_qv_error(req, &err);
    }
}

static void resized(int status, json_t *result, const qv_error *err, void *userdata) {
    sv_ctl_req *req = userdata;
    if (status < 0)
        sv_ctl_reply_qv_error(req, err);
    else
        sv_ctl_reply(req, json_incref(result));
}

/* {"name", "size": BYTES, "relative": bool}: relative adds size. */
void sv_api_vm_resize(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params) {
    json_t *size = json_object_get(params, "size"), *rel = json_object_get(params, "relative");
    if (!json_is_integer(size) || json_integer_value(size) < 0 || (rel && !json_is_boolean(rel))) {
        sv_ctl_reply_error(req, EINVAL, "\"size\" must be a number of bytes and \"relative\" a boolean");
        return;
    }
    qv_error err = {0};
    if (sv_vm_resize(d->vmctl, vm, (uint64_t)json_integer_value(size), json_is_true(rel), resized, req, &err) < 0)
        sv_ctl_reply_qv_error(req, &err);
}
