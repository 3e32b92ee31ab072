/* vm clone's spec (see vmclone.h). */
#include "spec/vmclone.h"

#include "cleanup.h"
#include "netdev/nic.h"

#include <errno.h>
#include <string.h>

const char *const sv_vmclone_keys[] = {
    "cpus",   "memory",       "gpus",     "nets",  "restart", "restart_limit", "stop_timeout", "agent",
    "pool",   "storage_pool", "hostname", "user",  "ssh_keys", "ssh_generate", "owner",        "slurm_job",
    NULL,
};

static bool clone_key(const char *key) {
    for (size_t i = 0; sv_vmclone_keys[i]; i++)
        if (strcmp(sv_vmclone_keys[i], key) == 0)
            return true;
    return false;
}

/* The source's NICs without what is the source's own: MACs, nat addresses. */
static int clone_nets(json_t *nets, qv_error *err) {
    size_t i;
    json_t *v;
    json_array_foreach(nets, i, v) {
        const char *text = json_string_value(v);
        if (!text)
            return qv_error_set(err, EINVAL, "spec: nets: NIC %zu is not a string", i);
        nd_nic nic;
        if (nd_nic_parse(text, &nic, err) < 0) {
            qv_error_prefix(err, "spec: nets: NIC %zu", i);
            return -EINVAL;
        }
        if (nic.mode == ND_MODE_BRIDGE && nic.ip[0])
            return qv_error_set(err, EINVAL,
                                "NIC %zu of the source has the static address %s: a clone would have it too; "
                                "give the clone its NICs (--net)",
                                i, nic.ip);
        nic.mac[0] = '\0';
        if (nic.mode == ND_MODE_NAT)
            nic.ip[0] = '\0';
        char buf[256];
        nd_nic_format(&nic, buf, sizeof buf);
        if (json_array_set_new(nets, i, json_string(buf)) < 0)
            return qv_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

int sv_vmclone_spec(json_t *src, const char *name, json_t *options, json_t **ret, qv_error *err) {
    if (!json_is_object(src))
        return qv_error_set(err, EINVAL, "the source's spec is not an object");
    if (options && !json_is_object(options))
        return qv_error_set(err, EINVAL, "clone options must be an object");
    const char *key;
    json_t *v;
    json_object_foreach(options, key, v) {
        if (!clone_key(key))
            return qv_error_set(err, EINVAL, "'%s' is not something a clone may change (it keeps the source's)", key);
    }
    _cleanup_(json_decrefp) json_t *out = json_deep_copy(src);
    if (!out || json_object_set_new(out, "name", json_string(name)) < 0)
        return qv_error_set(err, ENOMEM, "out of memory");
    static const char *const dropped[] = {"hostname", "owner", "slurm_job", "gpus"};
    for (size_t i = 0; i < QV_ARRAY_SIZE(dropped); i++)
        json_object_del(out, dropped[i]);
    json_t *nets = json_object_get(out, "nets");
    int r;
    if (!json_object_get(options, "nets") && json_is_array(nets) && (r = clone_nets(nets, err)) < 0)
        return r;
    json_object_foreach(options, key, v) {
        json_t *have = json_object_get(out, key);
        if (strcmp(key, "ssh_keys") == 0 && json_is_array(have) && json_is_array(v)) {
            if (json_array_extend(have, v) < 0)
                return qv_error_set(err, ENOMEM, "out of memory");
        } else if (json_object_set(out, key, v) < 0) {
            return qv_error_set(err, ENOMEM, "out of memory");
        }
    }
    *ret = TAKE_PTR(out);
    return 0;
}
