/* Control methods net.list and net.teardown. */
#include "supervisor/daemon-internal.h"

#include "log.h"
#include "supervisor/vm/nics.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void sv_api_net_list(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    (void)params;
    sv_ctl_reply(req, sv_net_list_json(d->registry, d->config));
}

/* Takes down what qvisor set up for the NAT network (never anything it
 * found there), refused while a VM with a nat NIC has a QEMU. */
void sv_api_net_teardown(sv_daemon *d, sv_ctl_req *req, json_t *params) {
    json_t *dry = json_object_get(params, "dry_run");
    if (dry && !json_is_boolean(dry)) {
        sv_ctl_reply_error(req, EINVAL, "\"dry_run\" must be a boolean");
        return;
    }
    char users[512] = "";
    size_t off = 0;
    for (sv_vm *vm = sv_registry_first(d->registry); vm; vm = sv_registry_next(vm)) {
        if (!sv_vm_state_has_qemu(sv_vm_state_of(vm)))
            continue;
        nd_nic nics[ND_NICS_MAX];
        size_t n;
        if (sv_net_nics(sv_vm_spec(vm), nics, &n, NULL) < 0)
            continue;
        for (size_t i = 0; i < n; i++)
            if (nics[i].mode == ND_MODE_NAT && off < sizeof users) {
                off += (size_t)snprintf(users + off, sizeof users - off, "%s%s", off ? ", " : "", sv_vm_name(vm));
                break;
            }
    }
    if (users[0]) {
        sv_ctl_reply_error(req, EBUSY, "VMs on the NAT network are running (%s); stop them first", users);
        return;
    }
    nd_nat nat;
    char record[PATH_MAX];
    sv_net_nat(d->config, &nat, record);
    json_t *actions = NULL;
    qv_error err = {0};
    if (nd_nat_teardown(&nat, json_is_true(dry), &actions, &err) < 0) {
        sv_ctl_reply_qv_error(req, &err);
        return;
    }
    if (!json_is_true(dry) && json_array_size(actions))
        log_info("NAT network %s torn down (%zu actions)", d->config->nat_bridge, json_array_size(actions));
    sv_ctl_reply(req, json_pack("{s:o}", "actions", actions));
}
