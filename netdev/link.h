/* Link, address and bridge operations over rtnetlink (libmnl), in the
 * calling thread's network namespace.  No `ip` program is ever run.
 *
 * Every function opens its own NETLINK_ROUTE socket, so they are safe to
 * call from any thread.  Errors are negative errno values; `err` (may be
 * NULL) then names the operation and the object, e.g.
 * "cannot create bridge qvbr0: Operation not permitted". */
#pragma once

#include <net/if.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct nd_link {
    int index;
    char name[IFNAMSIZ];
    char kind[16];   /* IFLA_INFO_KIND: "bridge", "tun", "veth", …; "" when none */
    int master;      /* ifindex of the bridge it is a port of, 0 for none */
    bool up;         /* IFF_UP */
    char mac[18];    /* "aa:bb:cc:dd:ee:ff", "" when the link has none */
} nd_link;

/* Whether `name` is a name the kernel would take for a new link as is
 * (dev_valid_name()): 1-15 bytes, not "." or "..", no '/', ':' or
 * whitespace; and no '%', which the kernel would read as a template
 * ("tap%d" becomes "tap0") instead of refusing it. */
bool nd_ifname_valid(const char *name);

/* One link by name; -ENODEV when there is none (err then says so too). */
int nd_link_get(const char *name, nd_link *ret, qv_error *err);
/* Every link, sorted by index; *ret freed by the caller. */
int nd_link_list(nd_link **ret, size_t *ret_n, qv_error *err);

/* A new bridge (kind "bridge"), down; -EEXIST when the name is taken. */
int nd_bridge_create(const char *name, qv_error *err);
int nd_link_set_up(const char *name, qv_error *err);
/* Makes `name` a port of bridge `master`. */
int nd_link_set_master(const char *name, const char *master, qv_error *err);
/* -ENODEV when it is already gone. */
int nd_link_delete(const char *name, qv_error *err);

/* IPv4 address "a.b.c.d/len" on a link: add (-EEXIST when present), test, delete
 * (-EADDRNOTAVAIL when absent).  The address and the prefix length both
 * count: 10.0.0.1/24 is not 10.0.0.1/16.  Add sets the broadcast address
 * for prefixes below /31.  -EINVAL for anything but "a.b.c.d/len"
 * (nd_ipv4_cidr_parse()), -ENODEV when the link is missing. */
int nd_addr_add(const char *ifname, const char *cidr, qv_error *err);
int nd_addr_has(const char *ifname, const char *cidr, bool *ret, qv_error *err);
int nd_addr_del(const char *ifname, const char *cidr, qv_error *err);

/* Whether a bridge filters by VLAN (IFLA_BR_VLAN_FILTERING). */
int nd_bridge_vlan_filtering(const char *bridge, bool *ret, qv_error *err);
/* Puts bridge port `port` in VLAN `vid` (1-4094) as PVID, egress untagged,
 * and takes it out of the bridge's default VLAN 1 when vid != 1, so a new
 * port carries that VLAN only (other VLANs it was given before stay).
 * The port must already be on the bridge (-EINVAL otherwise).  The kernel
 * keeps port VLANs whether or not the bridge filters; -EOPNOTSUPP from a
 * kernel built without CONFIG_BRIDGE_VLAN_FILTERING. */
int nd_bridge_port_set_vlan(const char *port, uint16_t vid, qv_error *err);
/* The VLANs of a bridge port (RTM_GETLINK AF_BRIDGE with
 * RTEXT_FILTER_BRVLAN): the ids into vids in the kernel's order (ascending),
 * their number into *ret_n, *ret_pvid the PVID (0: none).  -ENOBUFS when
 * the port has more than `max`; -EINVAL when it is not a bridge port. */
int nd_bridge_port_vlans(const char *port, uint16_t *vids, size_t max, size_t *ret_n, uint16_t *ret_pvid,
                         qv_error *err);
