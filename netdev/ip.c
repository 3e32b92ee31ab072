#include "netdev/ip.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

int nd_ipv4_parse(const char *s, uint32_t *ret) {
    if (!s)
        return -EINVAL;
    /* glibc's inet_pton(AF_INET) is the strict parser: exactly four parts,
     * each 0-255 in decimal, no leading zeros; inet_aton() would take
     * "1", "0x7f.1" and "010.0.0.1" (octal) as well. */
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1)
        return -EINVAL;
    *ret = ntohl(a.s_addr);
    return 0;
}

void nd_ipv4_format(uint32_t addr, char buf[static ND_IPV4_STRLEN]) {
    snprintf(buf, ND_IPV4_STRLEN, "%u.%u.%u.%u", (addr >> 24) & 0xff, (addr >> 16) & 0xff, (addr >> 8) & 0xff,
             addr & 0xff);
}

int nd_ipv4_cidr_parse(const char *s, uint32_t *ret_addr, unsigned *ret_len) {
    if (!s)
        return -EINVAL;
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || (size_t)(slash - s) >= ND_IPV4_STRLEN)
        return -EINVAL;
    char quad[ND_IPV4_STRLEN];
    memcpy(quad, s, (size_t)(slash - s));
    quad[slash - s] = '\0';
    uint32_t addr;
    if (nd_ipv4_parse(quad, &addr) < 0)
        return -EINVAL;

    /* "0".."32": one or two digits, no sign, no leading zero, no suffix */
    const char *p = slash + 1;
    if (p[0] < '0' || p[0] > '9')
        return -EINVAL;
    unsigned len = (unsigned)(p[0] - '0');
    if (p[1] != '\0') {
        if (p[0] == '0' || p[1] < '0' || p[1] > '9' || p[2] != '\0')
            return -EINVAL;
        len = len * 10 + (unsigned)(p[1] - '0');
    }
    if (len > 32)
        return -EINVAL;
    *ret_addr = addr;
    *ret_len = len;
    return 0;
}

void nd_ipv4_cidr_format(uint32_t addr, unsigned len, char buf[static ND_IPV4_CIDR_STRLEN]) {
    char quad[ND_IPV4_STRLEN];
    nd_ipv4_format(addr, quad);
    snprintf(buf, ND_IPV4_CIDR_STRLEN, "%s/%u", quad, len);
}

uint32_t nd_ipv4_mask(unsigned len) {
    /* a shift by 32 is undefined, hence the special case */
    if (len == 0)
        return 0;
    if (len >= 32)
        return UINT32_MAX;
    return UINT32_MAX << (32 - len);
}

bool nd_ipv4_cidr_normalised(uint32_t addr, unsigned len) {
    return len <= 32 && (addr & ~nd_ipv4_mask(len)) == 0;
}
