/* vm edit and vm resize on a spec (see vmedit.h). */
#include "spec/vmedit.h"

#include "cleanup.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const sv_vmspec_editable_keys[] = {
    "cpus", "memory", "gpus", "nets", "restart", "restart_limit", "stop_timeout", "agent", "pool", "hugepages",
    "numa", "pin", NULL,
};

static bool editable(const char *key) {
    for (const char *const *k = sv_vmspec_editable_keys; *k; k++)
        if (strcmp(*k, key) == 0)
            return true;
    return false;
}

/* Why a key is fixed, for the refusal. */
static const char *fixed_why(const char *key) {
    if (strcmp(key, "disk") == 0)
        return "disks grow with `qvisor vm resize NAME --disk SIZE`";
    if (strcmp(key, "name") == 0 || strcmp(key, "image") == 0 || strcmp(key, "storage_pool") == 0)
        return "the disk was made from it at create";
    if (strcmp(key, "owner") == 0 || strcmp(key, "slurm_job") == 0)
        return "set at create only";
    return "fixed at create; vm edit changes cpus, memory, gpus, nets, restart, restart_limit, stop_timeout, "
           "agent, pool, hugepages, numa and pin";
}

int sv_vmspec_edit(const sv_vmspec *old, json_t *changes, const sv_config *node, sv_vmspec **ret,
                   qv_error *err) {
    if (!json_is_object(changes))
        return qv_error_set(err, EINVAL, "vm edit: the changes are not an object");
    _cleanup_(json_decrefp) json_t *j = sv_vmspec_to_json(old);
    if (!j)
        return qv_error_set(err, ENOMEM, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(changes, key, v) {
        if (!editable(key))
            return qv_error_set(err, EINVAL, "spec: %s cannot be changed by vm edit: %s", key, fixed_why(key));
        bool list = strcmp(key, "gpus") == 0 || strcmp(key, "nets") == 0;
        if (json_is_null(v) || (list && json_is_array(v) && json_array_size(v) == 0))
            json_object_del(j, key); /* back to the default */
        else if (json_object_set(j, key, v) < 0)
            return qv_error_set(err, ENOMEM, "out of memory");
    }
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = NULL;
    int r = sv_vmspec_from_json(j, &s, err);
    if (r < 0 || (r = sv_vmspec_complete(s, node, err)) < 0 || (r = sv_vmspec_keep_nics(old, s, err)) < 0)
        return r;
    *ret = TAKE_PTR(s);
    return 0;
}

/* Whether new NIC x (no mac= given) is old NIC o as the user wrote it. */
static bool same_nic(const nd_nic *x, const nd_nic *o) {
    if (x->mode != o->mode || x->vlan != o->vlan)
        return false;
    if (x->bridge[0] && strcmp(x->bridge, o->bridge) != 0)
        return false;
    if (x->mode == ND_MODE_NAT) /* no ip=: the address it has */
        return !x->ip[0] || strcmp(x->ip, o->ip) == 0;
    /* bridge: ip= is the guest's static configuration, part of the NIC */
    return strcmp(x->ip, o->ip) == 0 && strcmp(x->gw, o->gw) == 0;
}

int sv_vmspec_keep_nics(const sv_vmspec *old, sv_vmspec *new, qv_error *err) {
    nd_nic nics[ND_NICS_MAX];
    size_t n = new->n_nics < ND_NICS_MAX ? new->n_nics : ND_NICS_MAX;
    for (size_t i = 0; i < n; i++)
        nics[i] = new->nics[i];
    if (n == 0) /* no nets: the one user NIC a spec without them has */
        nics[n++] = (nd_nic){.mode = ND_MODE_USER};
    bool used[ND_NICS_MAX] = {false};
    size_t n_old = old->n_nics < ND_NICS_MAX ? old->n_nics : ND_NICS_MAX;
    /* NICs that name their MAC first, so that a NIC without one does not
     * take the old NIC another names */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < n; i++) {
            nd_nic *x = &nics[i];
            if ((pass == 0) != (x->mac[0] != '\0'))
                continue;
            for (size_t k = 0; k < n_old; k++) {
                const nd_nic *o = &old->nics[k];
                if (used[k] || !o->mac[0] || (pass == 0 ? strcmp(x->mac, o->mac) != 0 : !same_nic(x, o)))
                    continue;
                used[k] = true;
                if (pass == 1)
                    snprintf(x->mac, sizeof x->mac, "%s", o->mac);
                if (x->mode == o->mode && !x->bridge[0])
                    snprintf(x->bridge, sizeof x->bridge, "%s", o->bridge);
                if (x->mode == o->mode && x->mode == ND_MODE_NAT && !x->ip[0])
                    snprintf(x->ip, sizeof x->ip, "%s", o->ip);
                break;
            }
        }
    char **nets = calloc(n + 1, sizeof *nets);
    if (!nets)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char text[256];
        nd_nic_format(&nics[i], text, sizeof text);
        if (!(nets[i] = strdup(text))) {
            qv_strv_free(nets);
            return qv_error_set(err, ENOMEM, "out of memory");
        }
    }
    qv_strv_free(new->nets);
    new->nets = nets;
    return sv_vmspec_parse_lists(new, err);
}

int sv_disk_resize_target(uint64_t current, uint64_t size, bool relative, uint64_t *ret, qv_error *err) {
    char have[32], want[32];
    qv_format_size(current, have, sizeof have);
    if (relative && size > SV_DISK_MAX - (current < SV_DISK_MAX ? current : SV_DISK_MAX))
        return qv_error_set(err, EINVAL, "disk: %s + that is more than %s, the largest disk a VM takes", have, "64T");
    uint64_t target = relative ? current + size : size;
    qv_format_size(target, want, sizeof want);
    if (target < current)
        return qv_error_set(err, EINVAL, "disk: %s is smaller than the disk's %s; disks never shrink", want, have);
    if (target > SV_DISK_MAX)
        return qv_error_set(err, EINVAL, "disk: %s is more than %s, the largest disk a VM takes", want, "64T");
    *ret = target;
    return target == current ? 1 : 0;
}
