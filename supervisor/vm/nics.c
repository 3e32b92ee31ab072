/* VM NICs in the daemon (see network.h). */
#include "supervisor/vm/nics.h"
#include "supervisor/vm/vm-record.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"
#include "netdev/link.h"
#include "netdev/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int sv_net_nics(const sv_vmspec *spec, nd_nic ret[ND_NICS_MAX], size_t *ret_n, qv_error *err) {
    size_t n = spec->n_nics;
    if (n > ND_NICS_MAX)
        return qv_error_set(err, EINVAL, "VM '%s' has %zu NICs; at most %d", spec->name, n, ND_NICS_MAX);
    for (size_t i = 0; i < n; i++) {
        ret[i] = spec->nics[i];
        if (!ret[i].mac[0])
            nd_mac_derive(spec->name, (unsigned)i, 0, ret[i].mac);
    }
    if (n == 0) {
        ret[0] = (nd_nic){.mode = ND_MODE_USER};
        nd_mac_derive(spec->name, 0, 0, ret[0].mac);
        n = 1;
    }
    *ret_n = n;
    return 0;
}

/* ---- create: MACs and addresses ------------------------------------------ */

typedef struct taken {
    char mac[ND_MAC_SIZE];
    uint32_t ip; /* nat address, 0 for none */
    const char *vm;
} taken;

static const char *mac_owner(const taken *t, size_t n, const char *mac) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].mac, mac) == 0)
            return t[i].vm;
    return NULL;
}

static taken *take(taken *t, size_t *n, const char *mac, const char *vm) {
    taken *x = &t[(*n)++];
    snprintf(x->mac, sizeof x->mac, "%s", mac);
    x->vm = vm;
    return x;
}

static const char *ip_owner(const taken *t, size_t n, uint32_t ip) {
    for (size_t i = 0; i < n; i++)
        if (t[i].ip == ip)
            return t[i].vm;
    return NULL;
}

/* Whether mac is one of `avoid` (n of them). */
static bool avoided(const nd_nic *avoid, size_t n, const char *mac) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(avoid[i].mac, mac) == 0)
            return true;
    return false;
}

int sv_net_prepare_spec(sv_registry *r, const sv_config *c, sv_vmspec *spec, qv_error *err) {
    return sv_net_prepare_spec_avoiding(r, c, spec, NULL, 0, err);
}

int sv_net_prepare_spec_avoiding(sv_registry *r, const sv_config *c, sv_vmspec *spec, const nd_nic *avoid,
                                 size_t n_avoid, qv_error *err) {
    /* what the node's other VMs hold */
    size_t cap = ND_NICS_MAX, n_taken = 0;
    for (sv_vm *vm = sv_registry_first(r); vm; vm = vm->next)
        cap += ND_NICS_MAX;
    _cleanup_free_ taken *t = calloc(cap, sizeof *t);
    if (!t)
        return qv_error_set(err, ENOMEM, "out of memory");
    uint32_t subnet, gateway;
    unsigned plen;
    nd_ipv4_cidr_parse(c->nat_subnet, &subnet, &plen);
    nd_ipv4_parse(c->nat_gateway, &gateway);
    for (sv_vm *vm = sv_registry_first(r); vm; vm = vm->next) {
        if (strcmp(vm->name, spec->name) == 0)
            continue;
        nd_nic nics[ND_NICS_MAX];
        size_t n;
        if (sv_net_nics(vm->spec, nics, &n, NULL) < 0)
            continue; /* validated when it was loaded */
        for (size_t i = 0; i < n; i++) {
            taken *x = take(t, &n_taken, nics[i].mac, vm->name);
            if (nics[i].mode == ND_MODE_NAT && nics[i].ip[0])
                nd_ipv4_parse(nics[i].ip, &x->ip);
        }
    }

    size_t n = spec->n_nics;
    if (n > ND_NICS_MAX)
        return qv_error_set(err, EINVAL, "spec: nets: at most %d NICs per VM", ND_NICS_MAX);
    nd_nic nics[ND_NICS_MAX];
    for (size_t i = 0; i < n; i++)
        nics[i] = spec->nics[i];
    if (n == 0)
        nics[n++] = (nd_nic){.mode = ND_MODE_USER};

    /* given MACs first, so a derived one never takes a MAC named later */
    taken *mine[ND_NICS_MAX];
    for (size_t i = 0; i < n; i++) {
        if (!nics[i].mac[0])
            continue;
        const char *who = mac_owner(t, n_taken, nics[i].mac);
        if (who && strcmp(who, spec->name) == 0)
            return qv_error_set(err, EINVAL, "NIC %zu: MAC %s is given to two NICs of this VM", i, nics[i].mac);
        if (who)
            return qv_error_set(err, EBUSY, "NIC %zu: MAC %s is used by VM '%s'", i, nics[i].mac, who);
        mine[i] = take(t, &n_taken, nics[i].mac, spec->name);
    }
    for (size_t i = 0; i < n; i++) {
        nd_nic *nic = &nics[i];
        if (!nic->mac[0]) {
            unsigned salt = 0;
            do
                nd_mac_derive(spec->name, (unsigned)i, salt++, nic->mac);
            while ((mac_owner(t, n_taken, nic->mac) || avoided(avoid, n_avoid, nic->mac)) && salt < 1000);
            if (mac_owner(t, n_taken, nic->mac) || avoided(avoid, n_avoid, nic->mac))
                return qv_error_set(err, EBUSY, "NIC %zu: no free MAC derived from the name; give one with mac=", i);
            mine[i] = take(t, &n_taken, nic->mac, spec->name);
        }
        if (nic->mode == ND_MODE_BRIDGE) {
            if (!nic->bridge[0]) {
                if (!c->overlay_bridge[0])
                    return qv_error_set(err, EINVAL,
                                        "NIC %zu: a bridge NIC needs bridge=NAME (or network.overlay_bridge in the "
                                        "node config)",
                                        i);
                snprintf(nic->bridge, sizeof nic->bridge, "%s", c->overlay_bridge);
            }
            if (strcmp(nic->bridge, c->nat_bridge) == 0)
                return qv_error_set(err, EINVAL,
                                    "NIC %zu: %s is the NAT bridge; use a nat NIC for it (its addresses are managed)",
                                    i, nic->bridge);
        }
        if (nic->mode != ND_MODE_NAT)
            continue;
        uint32_t a;
        if (nic->ip[0]) {
            nd_ipv4_parse(nic->ip, &a);
            if (!nd_ipv4_host_in(a, subnet, plen) || a == gateway)
                return qv_error_set(err, EINVAL,
                                    "NIC %zu: %s is not a free host address of network.nat_subnet %s (the gateway "
                                    "is %s)",
                                    i, nic->ip, c->nat_subnet, c->nat_gateway);
            const char *who = ip_owner(t, n_taken, a);
            if (who)
                return qv_error_set(err, EBUSY, "NIC %zu: %s is allocated to VM '%s'", i, nic->ip, who);
        } else {
            _cleanup_free_ uint32_t *used = calloc(n_taken ? n_taken : 1, sizeof *used);
            if (!used)
                return qv_error_set(err, ENOMEM, "out of memory");
            size_t nu = 0;
            for (size_t k = 0; k < n_taken; k++)
                if (t[k].ip)
                    used[nu++] = t[k].ip;
            int rc = nd_ipv4_alloc(subnet, plen, gateway, used, nu, &a, err);
            if (rc < 0)
                return rc;
            nd_ipv4_format(a, nic->ip);
        }
        mine[i]->ip = a;
    }

    /* the completed list replaces the spec's */
    char **nets = calloc(n + 1, sizeof *nets);
    if (!nets)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char buf[256];
        nd_nic_format(&nics[i], buf, sizeof buf);
        if (!(nets[i] = strdup(buf))) {
            for (size_t k = 0; k < i; k++)
                free(nets[k]);
            free(nets);
            return qv_error_set(err, ENOMEM, "out of memory");
        }
    }
    for (char **p = spec->nets; p && *p; p++)
        free(*p);
    free(spec->nets);
    spec->nets = nets;
    return sv_vmspec_parse_lists(spec, err);
}

/* ---- start: TAPs --------------------------------------------------------- */

void sv_net_fds_init(sv_net_fds *f) {
    for (size_t i = 0; i < ND_NICS_MAX; i++)
        f->tap[i] = f->vhost[i] = -1;
}

void sv_net_fds_drop_vhost(sv_net_fds *f) {
    for (size_t i = 0; i < ND_NICS_MAX; i++)
        if (f->vhost[i] >= 0) {
            close(f->vhost[i]);
            f->vhost[i] = -1;
        }
}

void sv_net_fds_close(sv_net_fds *f) {
    sv_net_fds_drop_vhost(f);
    for (size_t i = 0; i < ND_NICS_MAX; i++)
        if (f->tap[i] >= 0) {
            close(f->tap[i]);
            f->tap[i] = -1;
        }
}

void sv_net_nat(const sv_config *c, nd_nat *ret, char record[PATH_MAX]) {
    snprintf(record, PATH_MAX, "%s/net/nat.json", c->state_dir);
    *ret = (nd_nat){.bridge = c->nat_bridge, .subnet = c->nat_subnet, .gateway = c->nat_gateway, .record = record};
}

/* The bridge a TAP goes on exists and can do what the NIC asks. */
static int check_bridge(const nd_nic *nic, size_t i, qv_error *err) {
    nd_link l;
    int r = nd_link_get(nic->bridge, &l, NULL);
    if (r == -ENODEV)
        return qv_error_set(err, ENODEV,
                            "NIC %zu: bridge %s does not exist (a bridge NIC joins an existing bridge: create it, or "
                            "name another with bridge=)",
                            i, nic->bridge);
    if (r < 0)
        return qv_error_set(err, -r, "NIC %zu: cannot look at bridge %s: %s", i, nic->bridge, strerror(-r));
    if (strcmp(l.kind, "bridge") != 0)
        return qv_error_set(err, EINVAL, "NIC %zu: %s is not a bridge (it is a %s link)", i, nic->bridge,
                            l.kind[0] ? l.kind : "plain");
    if (nic->vlan) {
        bool filtering = false;
        if ((r = nd_bridge_vlan_filtering(nic->bridge, &filtering, err)) < 0)
            return r;
        if (!filtering)
            return qv_error_set(err, EOPNOTSUPP,
                                "NIC %zu: vlan=%u needs VLAN filtering on bridge %s, which is off (turn it on: ip "
                                "link set %s type bridge vlan_filtering 1); without it the VM would see every VLAN",
                                i, nic->vlan, nic->bridge, nic->bridge);
    }
    return 0;
}

static int tap_up(const char *vm, const nd_nic *nic, size_t i, int *ret_fd, qv_error *err) {
    char tap[IFNAMSIZ];
    nd_tap_name(vm, (unsigned)i, tap);
    _cleanup_close_ int fd = -1;
    int r = nd_tap_open(tap, &fd, err);
    if (r == -EBUSY) {
        /* a TAP of that name survived a crash (or a persistent one was left
         * by hand): it is this VM's, and this VM is not running */
        log_warning("VM %s: removing leftover TAP %s", vm, tap);
        if (nd_link_delete(tap, NULL) == 0)
            r = nd_tap_open(tap, &fd, err);
    }
    if (r < 0) {
        qv_error_prefix(err, "NIC %zu: ", i);
        return r;
    }
    const char *bridge = nic->bridge;
    if ((r = nd_link_set_master(tap, bridge, err)) < 0 || (nic->vlan && (r = nd_bridge_port_set_vlan(tap, (uint16_t)nic->vlan, err)) < 0) ||
        (r = nd_link_set_up(tap, err)) < 0) {
        qv_error_prefix(err, "NIC %zu: ", i);
        return r; /* closing fd removes the TAP */
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

int sv_net_setup(const sv_config *c, const sv_vmspec *spec, sv_net_fds *ret, qv_error *err) {
    nd_nic nics[ND_NICS_MAX];
    size_t n;
    int r = sv_net_nics(spec, nics, &n, err);
    if (r < 0)
        return r;
    sv_net_fds f;
    sv_net_fds_init(&f);
    bool vhost = access("/dev/vhost-net", R_OK | W_OK) == 0;
    for (size_t i = 0; i < n; i++) {
        nd_nic nic = nics[i];
        if (nic.mode == ND_MODE_USER)
            continue;
        if (nic.mode == ND_MODE_NAT) {
            nd_nat nat;
            char record[PATH_MAX];
            sv_net_nat(c, &nat, record);
            if ((r = nd_nat_ensure(&nat, err)) < 0) {
                qv_error_prefix(err, "NAT network %s: ", c->nat_bridge);
                goto fail;
            }
            snprintf(nic.bridge, sizeof nic.bridge, "%s", c->nat_bridge);
        } else if ((r = check_bridge(&nic, i, err)) < 0) {
            goto fail;
        }
        if ((r = tap_up(spec->name, &nic, i, &f.tap[i], err)) < 0)
            goto fail;
        if (vhost && nd_vhost_open(&f.vhost[i], NULL) < 0)
            f.vhost[i] = -1;
    }
    *ret = f;
    return 0;
fail:
    sv_net_fds_close(&f);
    return r;
}

int sv_net_remove_taps(const sv_vmspec *spec) {
    nd_nic nics[ND_NICS_MAX];
    size_t n;
    if (sv_net_nics(spec, nics, &n, NULL) < 0)
        return 0;
    int removed = 0;
    for (size_t i = 0; i < n; i++) {
        if (nics[i].mode == ND_MODE_USER)
            continue;
        char tap[IFNAMSIZ];
        nd_tap_name(spec->name, (unsigned)i, tap);
        qv_error e = {0};
        int r = nd_link_delete(tap, &e);
        if (r == 0) {
            removed++;
            log_info("VM %s: removed TAP %s", spec->name, tap);
        } else if (r != -ENODEV) {
            log_warning("VM %s: %s", spec->name, e.msg);
        }
    }
    return removed;
}

/* ---- net list ------------------------------------------------------------ */

static json_t *nic_row(const sv_vm *vm, const nd_nic *nic, size_t i) {
    char tap[IFNAMSIZ] = "";
    if (nic->mode != ND_MODE_USER)
        nd_tap_name(vm->name, (unsigned)i, tap);
    bool up = sv_vm_state_has_qemu(vm->state);
    return json_pack("{s:s, s:I, s:s, s:s, s:s?, s:s?, s:b}", "vm", vm->name, "nic", (json_int_t)i, "mac", nic->mac,
                     "mode", nd_mode_name(nic->mode), "ip", nic->ip[0] ? nic->ip : NULL, "tap", tap[0] ? tap : NULL,
                     "running", up);
}

json_t *sv_net_list_json(sv_registry *r, const sv_config *c) {
    nd_nat nat;
    char record[PATH_MAX];
    sv_net_nat(c, &nat, record);
    json_t *natj = nd_nat_status(&nat);
    json_object_set_new(natj, "name", json_string("nat"));
    json_object_set_new(natj, "mode", json_string("nat"));
    json_object_set_new(natj, "subnet", json_string(c->nat_subnet));
    json_object_set_new(natj, "gateway", json_string(c->nat_gateway));
    json_t *nat_nics = json_array(), *user_nics = json_array(), *bridges = json_object();
    uint32_t subnet, gateway;
    unsigned plen;
    nd_ipv4_cidr_parse(c->nat_subnet, &subnet, &plen);
    nd_ipv4_parse(c->nat_gateway, &gateway);
    size_t allocated = 0;
    if (c->overlay_bridge[0])
        json_object_set_new(bridges, c->overlay_bridge, json_array());
    for (sv_vm *vm = sv_registry_first(r); vm; vm = vm->next) {
        nd_nic nics[ND_NICS_MAX];
        size_t n;
        if (sv_net_nics(vm->spec, nics, &n, NULL) < 0)
            continue;
        for (size_t i = 0; i < n; i++) {
            json_t *row = nic_row(vm, &nics[i], i);
            if (nics[i].mode == ND_MODE_NAT) {
                uint32_t a;
                if (nd_ipv4_parse(nics[i].ip, &a) == 0 && nd_ipv4_host_in(a, subnet, plen))
                    allocated++;
                json_array_append_new(nat_nics, row);
            } else if (nics[i].mode == ND_MODE_USER) {
                json_array_append_new(user_nics, row);
            } else {
                if (nics[i].vlan)
                    json_object_set_new(row, "vlan", json_integer(nics[i].vlan));
                json_t *list = json_object_get(bridges, nics[i].bridge);
                if (!list)
                    json_object_set_new(bridges, nics[i].bridge, list = json_array());
                json_array_append_new(list, row);
            }
        }
    }
    uint64_t hosts = plen >= 31 ? (1ull << (32 - plen)) : (1ull << (32 - plen)) - 2;
    if (nd_ipv4_host_in(gateway, subnet, plen))
        hosts--;
    json_object_set_new(natj, "nics", nat_nics);
    json_object_set_new(natj, "addresses", json_integer((json_int_t)hosts));
    json_object_set_new(natj, "allocated", json_integer((json_int_t)allocated));
    json_object_set_new(natj, "free", json_integer((json_int_t)(hosts > allocated ? hosts - allocated : 0)));

    json_t *nets = json_array();
    json_array_append_new(nets, json_pack("{s:s, s:s, s:o}", "name", "user", "mode", "user", "nics", user_nics));
    json_array_append_new(nets, natj);
    const char *name;
    json_t *list;
    json_object_foreach(bridges, name, list) {
        nd_link l;
        bool present = nd_link_get(name, &l, NULL) == 0 && strcmp(l.kind, "bridge") == 0;
        bool filtering = false;
        if (present)
            (void)nd_bridge_vlan_filtering(name, &filtering, NULL);
        json_array_append_new(nets, json_pack("{s:s, s:s, s:s, s:b, s:b, s:b, s:O}", "name", name, "mode", "bridge",
                                              "bridge", name, "present", present, "up", present && l.up,
                                              "vlan_filtering", filtering, "nics", list));
    }
    json_decref(bridges);
    return json_pack("{s:o}", "networks", nets);
}
