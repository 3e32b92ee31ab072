/* A VM's network interfaces as the spec writes them, and the pure rules
 * around them: parsing and canonical form, MAC derivation, TAP names,
 * IPv4 parsing and the address allocator.  No system calls here. */
#pragma once

#include <net/if.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "netdev/ip.h"

#define ND_NICS_MAX 8
#define ND_MAC_SIZE 18        /* "0a:51:76:12:34:56" + NUL */

typedef enum nd_mode {
    ND_MODE_USER,   /* QEMU user networking, SSH forwarded from 127.0.0.1 */
    ND_MODE_NAT,    /* a TAP on the node's NAT bridge, static address from its subnet */
    ND_MODE_BRIDGE, /* a TAP on an existing bridge (the overlay), optional VLAN */
} nd_mode;

/* One NIC.  Text form (`--net`, the spec's `nets` list):
 *   user[,mac=M]
 *   nat[,ip=A.B.C.D][,mac=M]
 *   bridge[,bridge=NAME][,vlan=ID][,ip=A.B.C.D/LEN[,gw=A.B.C.D]][,mac=M]
 * Keys in any order, each at most once. */
typedef struct nd_nic {
    nd_mode mode;
    char mac[ND_MAC_SIZE];     /* lower case; "" until assigned at create */
    char bridge[IFNAMSIZ];     /* bridge mode; "" means network.overlay_bridge */
    unsigned vlan;             /* bridge mode: 1-4094, 0 for none */
    char ip[ND_IPV4_CIDR_STRLEN];    /* nat: "a.b.c.d" ("" allocates); bridge: "a.b.c.d/len" ("" means DHCP) */
    char gw[ND_IPV4_STRLEN];     /* bridge with ip: default gateway, optional */
} nd_nic;

const char *nd_mode_name(nd_mode m);
/* -EINVAL with a message naming the bad part. */
int nd_nic_parse(const char *text, nd_nic *ret, qv_error *err);
/* Canonical text: the mode, then bridge, vlan, ip, gw, mac when set. */
void nd_nic_format(const nd_nic *n, char *buf, size_t size);

/* "aa:bb:cc:dd:ee:ff" (either case) that is unicast and not all zero, into
 * lower case.  -EINVAL otherwise. */
int nd_mac_parse(const char *s, char ret[ND_MAC_SIZE]);
/* A MAC derived from the VM name and NIC index: 0a:51:76 ("qv", locally
 * administered unicast) and 24 bits of FNV-1a over name and index.  `salt`
 * picks another candidate when the first collides on the node (0 first). */
void nd_mac_derive(const char *vm_name, unsigned nic, unsigned salt, char ret[ND_MAC_SIZE]);

/* The TAP name of NIC `nic` (< ND_NICS_MAX) of a VM, at most 15 characters:
 * "qv-NAME-I" when that fits, else "qv" + 6 characters of the name + 6 hex
 * digits of a hash of the whole name + I.  The two forms cannot collide
 * (the short form has '-' third); long forms collide only for names with
 * the same first 6 characters and the same 24-bit hash, and then the
 * second VM's start fails with EBUSY rather than share a TAP. */
void nd_tap_name(const char *vm_name, unsigned nic, char ret[IFNAMSIZ]);
/* Whether an interface name has the shape of one of our TAP names. */
bool nd_tap_name_ours(const char *ifname);

/* Whether `a` is a usable host address of net/len (not the network or
 * broadcast address; /31 and /32 have no such reserved addresses). */
bool nd_ipv4_host_in(uint32_t a, uint32_t net, unsigned len);
/* The lowest host address of net/len that is not the gateway and not in
 * `used`.  -QV_ECAPACITY (exit 75) with a message naming the subnet and
 * the count when every address is taken. */
int nd_ipv4_alloc(uint32_t net, unsigned len, uint32_t gateway, const uint32_t *used, size_t n_used,
                  uint32_t *ret, qv_error *err);
