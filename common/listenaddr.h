/* A listening address as a config writes it: "IPV4:PORT", "[IPV6]:PORT"
 * (numeric addresses only: nothing is looked up, so parsing never blocks
 * and a config means the same on every node) or an absolute path for a unix
 * socket.  metrics.listen uses it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct qv_listen_addr {
    int family;                 /* AF_INET, AF_INET6 or AF_UNIX */
    struct sockaddr_storage sa; /* ready for bind() */
    socklen_t len;
} qv_listen_addr;

/* Parses s into *ret (set only on success).  -EINVAL with the reason in
 * why ("expected 127.0.0.1:PORT, [::1]:PORT or an absolute path, got
 * 'x'"): a host name, a missing or out-of-range port (1-65535), an IPv6
 * address without brackets or with a zone, a relative path, a path longer
 * than a unix socket holds (107 bytes). */
int qv_listen_addr_parse(const char *s, qv_listen_addr *ret, char *why, size_t why_size);
