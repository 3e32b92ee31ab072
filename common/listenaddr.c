#include "listenaddr.h"

#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#define FORMS "IPV4:PORT, [IPV6]:PORT (numeric) or an absolute path for a unix socket"

static int bad(char *why, size_t size, const char *s, const char *what) {
    snprintf(why, size, "expected " FORMS ", got '%s' (%s)", s, what);
    return -EINVAL;
}

static int parse_unix(const char *s, qv_listen_addr *ret, char *why, size_t size) {
    struct sockaddr_un *sun = (struct sockaddr_un *)&ret->sa;
    size_t len = strlen(s);
    if (len >= sizeof sun->sun_path) {
        snprintf(why, size, "%s is %zu bytes, longer than a unix socket path can be (%zu)", s, len,
                 sizeof sun->sun_path - 1);
        return -EINVAL;
    }
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, s, len + 1);
    ret->family = AF_UNIX;
    ret->len = (socklen_t)sizeof *sun;
    return 0;
}

/* "HOST:PORT" split at the last colon; the host of an IPv6 address comes in
 * brackets, which are dropped. */
static int split(const char *s, char *host, size_t host_size, uint64_t *port, char *why, size_t size) {
    const char *colon = strrchr(s, ':');
    if (!colon)
        return bad(why, size, s, "no port");
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 2 || s[hl - 1] != ']')
            return bad(why, size, s, "unbalanced brackets");
        h++;
        hl -= 2;
    } else if (memchr(s, ':', hl)) {
        return bad(why, size, s, "an IPv6 address needs brackets");
    }
    if (hl == 0 || hl >= host_size)
        return bad(why, size, s, "no address");
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (qv_parse_uint(colon + 1, 1, 65535, port) < 0)
        return bad(why, size, s, "the port must be 1-65535");
    return 0;
}

int qv_listen_addr_parse(const char *s, qv_listen_addr *ret, char *why, size_t size) {
    qv_listen_addr a;
    memset(&a, 0, sizeof a);
    if (s[0] == '/') {
        int r = parse_unix(s, &a, why, size);
        if (r == 0)
            *ret = a;
        return r;
    }
    char host[INET6_ADDRSTRLEN + 1];
    uint64_t port;
    int r = split(s, host, sizeof host, &port, why, size);
    if (r < 0)
        return r;
    if (s[0] == '[') {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a.sa;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return bad(why, size, s, "not a numeric IPv6 address");
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        a.family = AF_INET6;
        a.len = (socklen_t)sizeof *in6;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&a.sa;
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return bad(why, size, s, "not a numeric IPv4 address: host names are not looked up");
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        a.family = AF_INET;
        a.len = (socklen_t)sizeof *in;
    }
    *ret = a;
    return 0;
}
