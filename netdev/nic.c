/* NIC specs, MACs, TAP names and IPv4 allocation (see nic.h). */
#include "nic.h"

#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const mode_names[] = {"user", "nat", "bridge", NULL};

const char *nd_mode_name(nd_mode m) {
    return m <= ND_MODE_BRIDGE ? mode_names[m] : "?";
}

static bool ifname_ok(const char *s) {
    size_t n = strlen(s);
    return n > 0 && n < IFNAMSIZ && !strpbrk(s, "/ \t\n:,=") && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

int nd_nic_parse(const char *text, nd_nic *ret, qv_error *err) {
    nd_nic n = {0};
    char buf[256];
    if (strlen(text) >= sizeof buf)
        return qv_error_set(err, EINVAL, "'%.40s…' is too long for a NIC", text);
    snprintf(buf, sizeof buf, "%s", text);
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    int m = tok ? qv_string_index(mode_names, tok) : -EINVAL;
    if (m < 0)
        return qv_error_set(err, EINVAL, "'%s': a NIC starts with its mode: user, nat or bridge", text);
    n.mode = (nd_mode)m;
    unsigned seen = 0;
    while ((tok = strtok_r(NULL, ",", &save))) {
        char *v = strchr(tok, '=');
        if (!v || !v[1])
            return qv_error_set(err, EINVAL, "'%s': '%s' is not key=value", text, tok);
        *v++ = '\0';
        static const char *const keys[] = {"mac", "bridge", "vlan", "ip", "gw", NULL};
        int k = qv_string_index(keys, tok);
        if (k < 0)
            return qv_error_set(err, EINVAL, "'%s': unknown key '%s' (mac, bridge, vlan, ip, gw)", text, tok);
        if (seen & (1u << k))
            return qv_error_set(err, EINVAL, "'%s': %s given twice", text, tok);
        seen |= 1u << k;
        bool bridge_only = k == 1 || k == 2 || k == 4;
        if ((bridge_only && n.mode != ND_MODE_BRIDGE) || (k == 3 && n.mode == ND_MODE_USER))
            return qv_error_set(err, EINVAL, "'%s': %s is not a setting of a %s NIC", text, tok,
                                mode_names[n.mode]);
        uint32_t a;
        unsigned len;
        uint64_t u;
        switch (k) {
        case 0:
            if (nd_mac_parse(v, n.mac) < 0)
                return qv_error_set(err, EINVAL, "'%s': '%s' is not a unicast MAC address like 0a:51:76:12:34:56",
                                    text, v);
            break;
        case 1:
            if (!ifname_ok(v))
                return qv_error_set(err, EINVAL, "'%s': '%s' is not a bridge name (at most %d characters)", text, v,
                                    IFNAMSIZ - 1);
            snprintf(n.bridge, sizeof n.bridge, "%s", v);
            break;
        case 2:
            if (qv_parse_uint(v, 1, 4094, &u) < 0)
                return qv_error_set(err, EINVAL, "'%s': vlan must be a VLAN id from 1 to 4094, got '%s'", text, v);
            n.vlan = (unsigned)u;
            break;
        case 3:
            if (n.mode == ND_MODE_NAT) {
                if (nd_ipv4_parse(v, &a) < 0)
                    return qv_error_set(err, EINVAL,
                                        "'%s': ip of a nat NIC is an address like 192.168.100.10 (the prefix comes "
                                        "from network.nat_subnet), got '%s'",
                                        text, v);
                nd_ipv4_format(a, n.ip);
            } else {
                if (nd_ipv4_cidr_parse(v, &a, &len) < 0 || len == 0)
                    return qv_error_set(err, EINVAL, "'%s': ip of a bridge NIC is an address with its prefix like "
                                                     "10.1.0.5/24, got '%s'",
                                        text, v);
                char s[ND_IPV4_STRLEN];
                nd_ipv4_format(a, s);
                snprintf(n.ip, sizeof n.ip, "%s/%u", s, len);
            }
            break;
        case 4:
            if (nd_ipv4_parse(v, &a) < 0)
                return qv_error_set(err, EINVAL, "'%s': gw must be an IPv4 address, got '%s'", text, v);
            nd_ipv4_format(a, n.gw);
            break;
        }
    }
    if (n.gw[0]) {
        uint32_t a, g;
        unsigned len;
        if (!n.ip[0])
            return qv_error_set(err, EINVAL, "'%s': gw needs a static ip (without one the NIC uses DHCP)", text);
        nd_ipv4_cidr_parse(n.ip, &a, &len);
        nd_ipv4_parse(n.gw, &g);
        if ((a & nd_ipv4_mask(len)) != (g & nd_ipv4_mask(len)) || a == g)
            return qv_error_set(err, EINVAL, "'%s': gateway %s is not another address of %s's subnet", text, n.gw,
                                n.ip);
    }
    *ret = n;
    return 0;
}

void nd_nic_format(const nd_nic *n, char *buf, size_t size) {
    size_t off = (size_t)snprintf(buf, size, "%s", nd_mode_name(n->mode));
#define APPEND(...)                                                                                                  \
    do {                                                                                                             \
        if (off < size)                                                                                              \
            off += (size_t)snprintf(buf + off, size - off, __VA_ARGS__);                                             \
    } while (0)
    if (n->bridge[0])
        APPEND(",bridge=%s", n->bridge);
    if (n->vlan)
        APPEND(",vlan=%u", n->vlan);
    if (n->ip[0])
        APPEND(",ip=%s", n->ip);
    if (n->gw[0])
        APPEND(",gw=%s", n->gw);
    if (n->mac[0])
        APPEND(",mac=%s", n->mac);
#undef APPEND
}

int nd_mac_parse(const char *s, char ret[ND_MAC_SIZE]) {
    unsigned b[6];
    char tail;
    if (strlen(s) != 17 ||
        sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
        return -EINVAL;
    for (int i = 0; i < 17; i++)
        if (i % 3 == 2 ? s[i] != ':' : !strchr("0123456789abcdefABCDEF", s[i]))
            return -EINVAL;
    if ((b[0] & 1) || (b[0] | b[1] | b[2] | b[3] | b[4] | b[5]) == 0)
        return -EINVAL; /* multicast or zero */
    snprintf(ret, ND_MAC_SIZE, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
    return 0;
}

static uint32_t fnv1a(const char *s, uint32_t h) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

void nd_mac_derive(const char *vm_name, unsigned nic, unsigned salt, char ret[ND_MAC_SIZE]) {
    /* salt 0 gives what VMs created before `nets` existed have */
    uint32_t h = fnv1a(vm_name, 2166136261u);
    h ^= nic;
    h *= 16777619u;
    if (salt) {
        h ^= salt;
        h *= 16777619u;
    }
    snprintf(ret, ND_MAC_SIZE, "0a:51:76:%02x:%02x:%02x", (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff);
}

void nd_tap_name(const char *vm_name, unsigned nic, char ret[IFNAMSIZ]) {
    nic %= ND_NICS_MAX;
    if (strlen(vm_name) <= IFNAMSIZ - 1 - 5) {
        snprintf(ret, IFNAMSIZ, "qv-%s-%u", vm_name, nic);
        return;
    }
    uint32_t h = fnv1a(vm_name, 2166136261u);
    snprintf(ret, IFNAMSIZ, "qv%.6s%06x%u", vm_name, h & 0xffffff, nic);
}

bool nd_tap_name_ours(const char *ifname) {
    size_t n = strlen(ifname);
    if (n < 5 || n >= IFNAMSIZ || strncmp(ifname, "qv", 2) != 0)
        return false;
    if (ifname[n - 1] < '0' || ifname[n - 1] >= '0' + ND_NICS_MAX)
        return false;
    if (ifname[2] == '-') { /* qv-NAME-I */
        char name[IFNAMSIZ];
        if (n < 6 || ifname[n - 2] != '-')
            return false;
        snprintf(name, sizeof name, "%.*s", (int)(n - 5), ifname + 3);
        return qv_name_valid(name);
    }
    /* qv + 6 name characters + 6 hex digits + I */
    if (n != 15)
        return false;
    for (size_t i = 2; i < 8; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789-", ifname[i]))
            return false;
    for (size_t i = 8; i < 14; i++)
        if (!strchr("0123456789abcdef", ifname[i]))
            return false;
    return true;
}

bool nd_ipv4_host_in(uint32_t a, uint32_t net, unsigned len) {
    uint32_t mask = nd_ipv4_mask(len);
    if ((a & mask) != (net & mask))
        return false;
    if (len >= 31)
        return true;
    return a != (net & mask) && a != ((net & mask) | ~mask);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int nd_ipv4_alloc(uint32_t net, unsigned len, uint32_t gateway, const uint32_t *used, size_t n_used,
                  uint32_t *ret, qv_error *err) {
    uint32_t mask = nd_ipv4_mask(len);
    net &= mask;
    uint32_t first = len >= 31 ? net : net + 1, last = len >= 31 ? (net | ~mask) : (net | ~mask) - 1;
    uint32_t *sorted = malloc((n_used ? n_used : 1) * sizeof *sorted);
    if (!sorted)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (n_used)
        memcpy(sorted, used, n_used * sizeof *sorted);
    qv_qsort(sorted, n_used, sizeof *sorted, cmp_u32);
    size_t i = 0;
    for (uint64_t a = first; a <= last; a++) {
        while (i < n_used && sorted[i] < a)
            i++;
        if (a == gateway || (i < n_used && sorted[i] == a))
            continue;
        free(sorted);
        *ret = (uint32_t)a;
        return 0;
    }
    free(sorted);
    char s[ND_IPV4_STRLEN];
    nd_ipv4_format(net, s);
    uint64_t hosts = (uint64_t)last - first + 1 - (gateway >= first && gateway <= last);
    return qv_error_set(err, QV_ECAPACITY,
                        "no free address in %s/%u: all %llu host addresses are allocated to VMs (see `qvisor net "
                        "list`; remove a VM or widen network.nat_subnet)",
                        s, len, (unsigned long long)hosts);
}
