/* rtnetlink through libmnl: one NETLINK_ROUTE socket per call, one request,
 * its replies, the kernel's ack.  Requests that change something carry
 * NLM_F_ACK so that success is confirmed, not assumed; requests that read
 * one object carry it too, so the exchange always ends with the ack. */
#include "netdev/link.h"
#include "util.h"

#include "cleanup.h"
#include "log.h"
#include "netdev/ip.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Replies of a dump come in skbs of up to 32 KiB (the kernel caps its
 * allocation there unless one message is bigger, see netlink_dump()); a
 * receive buffer smaller than a message would truncate it (ENOSPC). */
#define ND_NL_RECV_SIZE (64 * 1024)
/* Every request here is a header, a few attributes and a name. */
#define ND_NL_SEND_SIZE 1024
/* A dump the kernel marks interrupted (NLM_F_DUMP_INTR: links changed
 * while it ran) is started over this many times before giving up. */
#define ND_NL_DUMP_TRIES 5

static void mnl_socket_closep(struct mnl_socket **nl) {
    if (*nl)
        mnl_socket_close(*nl);
}

bool nd_ifname_valid(const char *name) {
    if (!name || !*name || strnlen(name, IFNAMSIZ) >= IFNAMSIZ)
        return false;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return false;
    for (const char *p = name; *p; p++)
        if (*p == '/' || *p == ':' || *p == '%' || isspace((unsigned char)*p))
            return false;
    return true;
}

/* ---- one request, its replies ------------------------------------------ */

typedef struct nl_call {
    /* per data message; returns 0 or a negative errno that ends the call */
    int (*cb)(const struct nlmsghdr *nlh, void *data);
    void *data;
    int cb_error;
    char extack[256]; /* the kernel's extended ack message, "" if none */
} nl_call;

static int extack_attr_cb(const struct nlattr *attr, void *data) {
    nl_call *call = data;
    if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0)
        snprintf(call->extack, sizeof call->extack, "%s", mnl_attr_get_str(attr));
    return MNL_CB_OK;
}

/* NLMSG_ERROR: an ack (error 0) ends the exchange; an error ends it with
 * errno set, after keeping the kernel's own words (NETLINK_EXT_ACK). */
static int error_cb(const struct nlmsghdr *nlh, void *data) {
    nl_call *call = data;
    const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
    if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof *e)) {
        errno = EBADMSG;
        return MNL_CB_ERROR;
    }
    if (e->error == 0)
        return MNL_CB_STOP;
    if (nlh->nlmsg_flags & NLM_F_ACK_TLVS) {
        /* the TLVs follow the echoed request, or only its header when
         * NETLINK_CAP_ACK took effect (NLM_F_CAPPED) */
        size_t off = sizeof *e;
        if (!(nlh->nlmsg_flags & NLM_F_CAPPED) && e->msg.nlmsg_len > sizeof(struct nlmsghdr))
            off += e->msg.nlmsg_len - sizeof(struct nlmsghdr);
        if (mnl_nlmsg_size(off) < nlh->nlmsg_len)
            (void)mnl_attr_parse(nlh, (unsigned)off, extack_attr_cb, call);
    }
    errno = e->error < 0 ? -e->error : e->error;
    return MNL_CB_ERROR;
}

static int data_cb(const struct nlmsghdr *nlh, void *data) {
    nl_call *call = data;
    if (!call->cb)
        return MNL_CB_OK;
    int r = call->cb(nlh, call->data);
    if (r < 0) {
        call->cb_error = r;
        errno = -r;
        return MNL_CB_ERROR;
    }
    return MNL_CB_OK;
}

/* Sends nlh on a fresh socket and runs cb on every data message of the
 * reply until the ack (or NLMSG_DONE of a dump).  Returns 0 or a negative
 * errno; on a kernel error, extack (size ND_NL_EXTACK) gets its message. */
static int nl_call_run(struct nlmsghdr *nlh, int (*cb)(const struct nlmsghdr *, void *), void *data,
                       char *extack, size_t extack_size) {
    nl_call call = {.cb = cb, .data = data};
    if (extack && extack_size)
        extack[0] = '\0';

    _cleanup_(mnl_socket_closep) struct mnl_socket *nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
    if (!nl)
        return -errno;
    int one = 1;
    /* both are optional: without them errors are still errors */
    (void)mnl_socket_setsockopt(nl, NETLINK_EXT_ACK, &one, sizeof one);
    (void)mnl_socket_setsockopt(nl, NETLINK_CAP_ACK, &one, sizeof one);
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
        return -errno;
    unsigned portid = mnl_socket_get_portid(nl);
    unsigned seq = nlh->nlmsg_seq = 1; /* the socket is ours alone */
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
        return -errno;

    _cleanup_free_ char *buf = malloc(ND_NL_RECV_SIZE);
    if (!buf)
        return -ENOMEM;
    /* an ack-less NLMSG_ERROR handler of our own; DONE and OVERRUN keep
     * libmnl's defaults (the array stops before them) */
    mnl_cb_t ctl[NLMSG_ERROR + 1] = {[NLMSG_ERROR] = error_cb};
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(nl, buf, ND_NL_RECV_SIZE);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        errno = 0;
        int r = mnl_cb_run2(buf, (size_t)n, seq, portid, data_cb, &call, ctl, QV_ARRAY_SIZE(ctl));
        if (r == MNL_CB_STOP)
            return 0;
        if (r < 0) {
            if (call.cb_error < 0)
                return call.cb_error;
            int e = errno ? -errno : -EIO;
            if (extack && extack_size)
                snprintf(extack, extack_size, "%s", call.extack);
            return e;
        }
    }
}

/* A dump, started over when the kernel reports it was interrupted; reset
 * clears what cb collected from the aborted run. */
static int nl_dump_run(struct nlmsghdr *nlh, int (*cb)(const struct nlmsghdr *, void *), void (*reset)(void *),
                       void *data, char *extack, size_t extack_size) {
    int r = -EINTR;
    for (int i = 0; i < ND_NL_DUMP_TRIES && r == -EINTR; i++) {
        if (i > 0) {
            log_debug("netlink dump interrupted, starting over");
            reset(data);
        }
        r = nl_call_run(nlh, cb, data, extack, extack_size);
    }
    return r;
}

#define ND_NL_EXTACK 256

/* "what: strerror (kernel: extack)" into err; returns r. */
static int nl_fail(qv_error *err, int r, const char *extack, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int nl_fail(qv_error *err, int r, const char *extack, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (extack && *extack)
        return qv_error_set(err, r, "%s: %s (kernel: %s)", what, strerror(-r), extack);
    return qv_error_set(err, r, "%s: %s", what, strerror(-r));
}

static struct nlmsghdr *nl_put_header(char *buf, uint16_t type, uint16_t flags) {
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = type;
    nlh->nlmsg_flags = NLM_F_REQUEST | flags;
    return nlh;
}

/* ---- links ------------------------------------------------------------- */

/* Copies a string attribute (NUL-terminated or not) into dst. */
static void copy_attr_str(char *dst, size_t size, const struct nlattr *attr) {
    size_t len = strnlen(mnl_attr_get_payload(attr), mnl_attr_get_payload_len(attr));
    if (len >= size)
        len = size - 1;
    memcpy(dst, mnl_attr_get_payload(attr), len);
    dst[len] = '\0';
}

typedef struct attr_table {
    const struct nlattr **tb;
    unsigned max;
} attr_table;

static int attr_table_cb(const struct nlattr *attr, void *data) {
    attr_table *t = data;
    unsigned type = mnl_attr_get_type(attr);
    if (type <= t->max)
        t->tb[type] = attr;
    return MNL_CB_OK;
}

static int parse_attrs(const struct nlmsghdr *nlh, size_t hdrlen, const struct nlattr **tb, unsigned max) {
    attr_table t = {tb, max};
    memset(tb, 0, (max + 1) * sizeof *tb);
    if (nlh->nlmsg_len < mnl_nlmsg_size(hdrlen))
        return -EBADMSG;
    return mnl_attr_parse(nlh, (unsigned)hdrlen, attr_table_cb, &t) < 0 ? -EBADMSG : 0;
}

static int parse_nested(const struct nlattr *nest, const struct nlattr **tb, unsigned max) {
    attr_table t = {tb, max};
    memset(tb, 0, (max + 1) * sizeof *tb);
    return mnl_attr_parse_nested(nest, attr_table_cb, &t) < 0 ? -EBADMSG : 0;
}

static int parse_link(const struct nlmsghdr *nlh, nd_link *ret) {
    const struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    const struct nlattr *tb[IFLA_MAX + 1];
    int r = parse_attrs(nlh, sizeof *ifm, tb, IFLA_MAX);
    if (r < 0)
        return r;

    nd_link l = {.index = ifm->ifi_index, .up = (ifm->ifi_flags & IFF_UP) != 0};
    if (tb[IFLA_IFNAME])
        copy_attr_str(l.name, sizeof l.name, tb[IFLA_IFNAME]);
    if (tb[IFLA_MASTER] && mnl_attr_validate(tb[IFLA_MASTER], MNL_TYPE_U32) == 0)
        l.master = (int)mnl_attr_get_u32(tb[IFLA_MASTER]);
    if (tb[IFLA_ADDRESS] && mnl_attr_get_payload_len(tb[IFLA_ADDRESS]) == 6) {
        const uint8_t *a = mnl_attr_get_payload(tb[IFLA_ADDRESS]);
        snprintf(l.mac, sizeof l.mac, "%02x:%02x:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3], a[4], a[5]);
    }
    if (tb[IFLA_LINKINFO]) {
        const struct nlattr *info[IFLA_INFO_MAX + 1];
        if (parse_nested(tb[IFLA_LINKINFO], info, IFLA_INFO_MAX) == 0 && info[IFLA_INFO_KIND])
            copy_attr_str(l.kind, sizeof l.kind, info[IFLA_INFO_KIND]);
    }
    *ret = l;
    return 0;
}

/* RTM_GETLINK of one link by name; cb sees the RTM_NEWLINK reply. */
static int link_request(const char *name, int (*cb)(const struct nlmsghdr *, void *), void *data, char *extack,
                        size_t extack_size) {
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_GETLINK, NLM_F_ACK);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
    return nl_call_run(nlh, cb, data, extack, extack_size);
}

typedef struct link_get_ctx {
    nd_link link;
    bool found;
} link_get_ctx;

static int link_get_cb(const struct nlmsghdr *nlh, void *data) {
    link_get_ctx *c = data;
    if (nlh->nlmsg_type != RTM_NEWLINK)
        return 0;
    int r = parse_link(nlh, &c->link);
    if (r < 0)
        return r;
    c->found = true;
    return 0;
}

/* nd_link_get() without the message: for functions that say it their way. */
static int link_get(const char *name, nd_link *ret, char *extack, size_t extack_size) {
    if (!nd_ifname_valid(name))
        return -EINVAL;
    link_get_ctx c = {0};
    int r = link_request(name, link_get_cb, &c, extack, extack_size);
    if (r < 0)
        return r;
    if (!c.found)
        return -ENODEV;
    *ret = c.link;
    return 0;
}

static int invalid_name(qv_error *err, const char *name) {
    return qv_error_set(err, EINVAL, "invalid interface name '%s' (1-15 characters, no '/', ':', '%%' or spaces)",
                        name ? name : "(null)");
}

int nd_link_get(const char *name, nd_link *ret, qv_error *err) {
    if (!nd_ifname_valid(name))
        return invalid_name(err, name);
    char extack[ND_NL_EXTACK];
    int r = link_get(name, ret, extack, sizeof extack);
    if (r == -ENODEV)
        return qv_error_set(err, ENODEV, "no link named %s", name);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot read link %s", name);
    return 0;
}

typedef struct link_list_ctx {
    nd_link *links;
    size_t n, cap;
} link_list_ctx;

static void link_list_reset(void *data) {
    link_list_ctx *c = data;
    c->n = 0;
}

static int link_list_cb(const struct nlmsghdr *nlh, void *data) {
    link_list_ctx *c = data;
    if (nlh->nlmsg_type != RTM_NEWLINK)
        return 0;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        nd_link *p = realloc(c->links, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        c->links = p;
        c->cap = cap;
    }
    int r = parse_link(nlh, &c->links[c->n]);
    if (r < 0)
        return r;
    c->n++;
    return 0;
}

static int link_cmp(const void *a, const void *b) {
    int x = ((const nd_link *)a)->index, y = ((const nd_link *)b)->index;
    return (x > y) - (x < y);
}

int nd_link_list(nd_link **ret, size_t *ret_n, qv_error *err) {
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_GETLINK, NLM_F_DUMP);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);

    link_list_ctx c = {0};
    char extack[ND_NL_EXTACK];
    int r = nl_dump_run(nlh, link_list_cb, link_list_reset, &c, extack, sizeof extack);
    if (r < 0) {
        free(c.links);
        return nl_fail(err, r, extack, "cannot list links");
    }
    /* the kernel dumps in hash order */
    if (c.n > 0)
        qv_qsort(c.links, c.n, sizeof *c.links, link_cmp);
    *ret = c.links;
    *ret_n = c.n;
    return 0;
}

int nd_bridge_create(const char *name, qv_error *err) {
    if (!nd_ifname_valid(name))
        return invalid_name(err, name);
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    struct nlattr *linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
    mnl_attr_nest_end(nlh, linkinfo);

    char extack[ND_NL_EXTACK];
    int r = nl_call_run(nlh, NULL, NULL, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot create bridge %s", name);
    log_debug("created bridge %s", name);
    return 0;
}

int nd_link_set_up(const char *name, qv_error *err) {
    if (!nd_ifname_valid(name))
        return invalid_name(err, name);
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_SETLINK, NLM_F_ACK);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    ifm->ifi_change = IFF_UP;
    ifm->ifi_flags = IFF_UP;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);

    char extack[ND_NL_EXTACK];
    int r = nl_call_run(nlh, NULL, NULL, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot set link %s up", name);
    return 0;
}

int nd_link_set_master(const char *name, const char *master, qv_error *err) {
    if (!nd_ifname_valid(name))
        return invalid_name(err, name);
    if (!nd_ifname_valid(master))
        return invalid_name(err, master);
    char extack[ND_NL_EXTACK];
    nd_link m;
    int r = link_get(master, &m, extack, sizeof extack);
    if (r == -ENODEV)
        return qv_error_set(err, ENODEV, "cannot add %s to bridge %s: no link named %s", name, master, master);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot add %s to bridge %s", name, master);

    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_SETLINK, NLM_F_ACK);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    mnl_attr_put_u32(nlh, IFLA_MASTER, (uint32_t)m.index);

    r = nl_call_run(nlh, NULL, NULL, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot add %s to bridge %s", name, master);
    log_debug("%s is now a port of %s", name, master);
    return 0;
}

int nd_link_delete(const char *name, qv_error *err) {
    if (!nd_ifname_valid(name))
        return invalid_name(err, name);
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_DELLINK, NLM_F_ACK);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);

    char extack[ND_NL_EXTACK];
    int r = nl_call_run(nlh, NULL, NULL, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot delete link %s", name);
    log_debug("deleted link %s", name);
    return 0;
}

/* ---- IPv4 addresses ---------------------------------------------------- */

/* Parses cidr and finds ifname's index for the address functions; "what"
 * is the message's start ("cannot add address"). */
static int addr_prepare(const char *ifname, const char *cidr, const char *what, int *ret_index, uint32_t *ret_addr,
                        unsigned *ret_len, qv_error *err) {
    if (!nd_ifname_valid(ifname))
        return invalid_name(err, ifname);
    if (nd_ipv4_cidr_parse(cidr, ret_addr, ret_len) < 0)
        return qv_error_set(err, EINVAL, "invalid IPv4 address '%s' (want a.b.c.d/len)", cidr ? cidr : "(null)");
    char extack[ND_NL_EXTACK];
    nd_link l;
    int r = link_get(ifname, &l, extack, sizeof extack);
    if (r == -ENODEV)
        return qv_error_set(err, ENODEV, "%s %s on %s: no link named %s", what, cidr, ifname, ifname);
    if (r < 0)
        return nl_fail(err, r, extack, "%s %s on %s", what, cidr, ifname);
    *ret_index = l.index;
    return 0;
}

static struct nlmsghdr *addr_message(char *buf, uint16_t type, uint16_t flags, int index, uint32_t addr,
                                     unsigned len) {
    struct nlmsghdr *nlh = nl_put_header(buf, type, flags);
    struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof *ifa);
    ifa->ifa_family = AF_INET;
    ifa->ifa_prefixlen = (uint8_t)len;
    ifa->ifa_scope = RT_SCOPE_UNIVERSE;
    ifa->ifa_index = (uint32_t)index;
    mnl_attr_put_u32(nlh, IFA_LOCAL, htonl(addr));
    mnl_attr_put_u32(nlh, IFA_ADDRESS, htonl(addr));
    return nlh;
}

int nd_addr_add(const char *ifname, const char *cidr, qv_error *err) {
    int index;
    uint32_t addr;
    unsigned len;
    int r = addr_prepare(ifname, cidr, "cannot add address", &index, &addr, &len, err);
    if (r < 0)
        return r;
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = addr_message(buf, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, index, addr, len);
    /* /31 and /32 have no broadcast address (RFC 3021) */
    if (len < 31)
        mnl_attr_put_u32(nlh, IFA_BROADCAST, htonl(addr | ~nd_ipv4_mask(len)));

    char extack[ND_NL_EXTACK];
    r = nl_call_run(nlh, NULL, NULL, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot add address %s on %s", cidr, ifname);
    log_debug("added %s on %s", cidr, ifname);
    return 0;
}

typedef struct addr_find_ctx {
    int index;
    uint32_t addr; /* network byte order */
    unsigned len;
    bool found;
} addr_find_ctx;

static void addr_find_reset(void *data) {
    ((addr_find_ctx *)data)->found = false;
}

static int addr_find_cb(const struct nlmsghdr *nlh, void *data) {
    addr_find_ctx *c = data;
    if (nlh->nlmsg_type != RTM_NEWADDR)
        return 0;
    const struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);
    const struct nlattr *tb[IFA_MAX + 1];
    int r = parse_attrs(nlh, sizeof *ifa, tb, IFA_MAX);
    if (r < 0)
        return r;
    if (ifa->ifa_family != AF_INET || (int)ifa->ifa_index != c->index || ifa->ifa_prefixlen != c->len)
        return 0;
    /* IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on
     * point-to-point links, and the same otherwise */
    const struct nlattr *a = tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS];
    if (a && mnl_attr_validate(a, MNL_TYPE_U32) == 0 && mnl_attr_get_u32(a) == c->addr)
        c->found = true;
    return 0;
}

int nd_addr_has(const char *ifname, const char *cidr, bool *ret, qv_error *err) {
    int index;
    uint32_t addr;
    unsigned len;
    int r = addr_prepare(ifname, cidr, "cannot look for address", &index, &addr, &len, err);
    if (r < 0)
        return r;
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_GETADDR, NLM_F_DUMP);
    struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof *ifa);
    ifa->ifa_family = AF_INET;

    addr_find_ctx c = {.index = index, .addr = htonl(addr), .len = len};
    char extack[ND_NL_EXTACK];
    r = nl_dump_run(nlh, addr_find_cb, addr_find_reset, &c, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot list the addresses of %s", ifname);
    *ret = c.found;
    return 0;
}

int nd_addr_del(const char *ifname, const char *cidr, qv_error *err) {
    int index;
    uint32_t addr;
    unsigned len;
    int r = addr_prepare(ifname, cidr, "cannot delete address", &index, &addr, &len, err);
    if (r < 0)
        return r;
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = addr_message(buf, RTM_DELADDR, NLM_F_ACK, index, addr, len);

    char extack[ND_NL_EXTACK];
    r = nl_call_run(nlh, NULL, NULL, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot delete address %s from %s", cidr, ifname);
    log_debug("deleted %s from %s", cidr, ifname);
    return 0;
}

/* ---- bridge VLANs ------------------------------------------------------ */

typedef struct vlan_filtering_ctx {
    bool found, bridge, filtering;
} vlan_filtering_ctx;

static int vlan_filtering_cb(const struct nlmsghdr *nlh, void *data) {
    vlan_filtering_ctx *c = data;
    if (nlh->nlmsg_type != RTM_NEWLINK)
        return 0;
    const struct nlattr *tb[IFLA_MAX + 1];
    int r = parse_attrs(nlh, sizeof(struct ifinfomsg), tb, IFLA_MAX);
    if (r < 0)
        return r;
    c->found = true;
    if (!tb[IFLA_LINKINFO])
        return 0;
    const struct nlattr *info[IFLA_INFO_MAX + 1];
    if (parse_nested(tb[IFLA_LINKINFO], info, IFLA_INFO_MAX) < 0 || !info[IFLA_INFO_KIND])
        return 0;
    char kind[16];
    copy_attr_str(kind, sizeof kind, info[IFLA_INFO_KIND]);
    if (strcmp(kind, "bridge") != 0)
        return 0;
    c->bridge = true;
    if (!info[IFLA_INFO_DATA])
        return 0;
    const struct nlattr *br[IFLA_BR_MAX + 1];
    if (parse_nested(info[IFLA_INFO_DATA], br, IFLA_BR_MAX) < 0)
        return -EBADMSG;
    if (br[IFLA_BR_VLAN_FILTERING] && mnl_attr_validate(br[IFLA_BR_VLAN_FILTERING], MNL_TYPE_U8) == 0)
        c->filtering = mnl_attr_get_u8(br[IFLA_BR_VLAN_FILTERING]) != 0;
    return 0;
}

int nd_bridge_vlan_filtering(const char *bridge, bool *ret, qv_error *err) {
    if (!nd_ifname_valid(bridge))
        return invalid_name(err, bridge);
    vlan_filtering_ctx c = {0};
    char extack[ND_NL_EXTACK];
    int r = link_request(bridge, vlan_filtering_cb, &c, extack, sizeof extack);
    if (r == -ENODEV || (r == 0 && !c.found))
        return qv_error_set(err, ENODEV, "no link named %s", bridge);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot read bridge %s", bridge);
    if (!c.bridge)
        return qv_error_set(err, EINVAL, "%s is not a bridge", bridge);
    *ret = c.filtering;
    return 0;
}

/* RTM_SETLINK (add) or RTM_DELLINK (remove) of one VLAN on a bridge port:
 * the AF_BRIDGE family addresses the port's master, the bridge. */
static int port_vlan_change(int index, uint16_t type, uint16_t vid, uint16_t flags, char *extack,
                            size_t extack_size) {
    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, type, NLM_F_ACK);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_BRIDGE;
    ifm->ifi_index = index;
    struct nlattr *spec = mnl_attr_nest_start(nlh, IFLA_AF_SPEC);
    struct bridge_vlan_info vinfo = {.flags = flags, .vid = vid};
    mnl_attr_put(nlh, IFLA_BRIDGE_VLAN_INFO, sizeof vinfo, &vinfo);
    mnl_attr_nest_end(nlh, spec);
    return nl_call_run(nlh, NULL, NULL, extack, extack_size);
}

/* EOPNOTSUPP from the bridge's VLAN code most likely means the kernel was
 * built without it; say so, since strerror alone puzzles. */
static const char *vlan_hint(int r) {
    return r == -EOPNOTSUPP ? " (is the kernel built with CONFIG_BRIDGE_VLAN_FILTERING?)" : "";
}

int nd_bridge_port_set_vlan(const char *port, uint16_t vid, qv_error *err) {
    if (!nd_ifname_valid(port))
        return invalid_name(err, port);
    if (vid < 1 || vid > 4094)
        return qv_error_set(err, EINVAL, "invalid VLAN id %u for %s (1-4094)", (unsigned)vid, port);
    char extack[ND_NL_EXTACK];
    nd_link l;
    int r = link_get(port, &l, extack, sizeof extack);
    if (r == -ENODEV)
        return qv_error_set(err, ENODEV, "cannot put %s in VLAN %u: no link named %s", port, (unsigned)vid, port);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot put %s in VLAN %u", port, (unsigned)vid);
    /* the kernel would say EOPNOTSUPP, which points the wrong way */
    if (l.master == 0)
        return qv_error_set(err, EINVAL, "cannot put %s in VLAN %u: %s is not a bridge port", port, (unsigned)vid,
                            port);

    r = port_vlan_change(l.index, RTM_SETLINK, vid, BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, extack,
                         sizeof extack);
    if (r < 0)
        return qv_error_set(err, r, "cannot put %s in VLAN %u: %s%s%s%s%s", port, (unsigned)vid, strerror(-r),
                            *extack ? " (kernel: " : "", extack, *extack ? ")" : "", vlan_hint(r));
    /* A new port starts in the bridge's default VLAN (default_pvid, 1) as
     * PVID, untagged; the PVID flag moved to vid above, the membership
     * stays until removed. */
    if (vid != 1) {
        r = port_vlan_change(l.index, RTM_DELLINK, 1, 0, extack, sizeof extack);
        if (r < 0 && r != -ENOENT)
            return nl_fail(err, r, extack, "cannot take %s out of VLAN 1", port);
    }
    log_debug("%s is in VLAN %u", port, (unsigned)vid);
    return 0;
}

typedef struct port_vlans_ctx {
    int index;
    uint16_t *vids;
    size_t max, n;
    bool found, overflow;
    uint16_t pvid, range_begin;
} port_vlans_ctx;

static void port_vlans_reset(void *data) {
    port_vlans_ctx *c = data;
    c->n = 0;
    c->found = c->overflow = false;
    c->pvid = c->range_begin = 0;
}

static void port_vlans_add(port_vlans_ctx *c, uint16_t vid) {
    if (c->n < c->max)
        c->vids[c->n++] = vid;
    else
        c->overflow = true;
}

static int port_vlans_entry_cb(const struct nlattr *attr, void *data) {
    port_vlans_ctx *c = data;
    if (mnl_attr_get_type(attr) != IFLA_BRIDGE_VLAN_INFO)
        return MNL_CB_OK;
    if (mnl_attr_get_payload_len(attr) < sizeof(struct bridge_vlan_info))
        return MNL_CB_OK;
    struct bridge_vlan_info v;
    memcpy(&v, mnl_attr_get_payload(attr), sizeof v);
    if (v.flags & BRIDGE_VLAN_INFO_PVID)
        c->pvid = v.vid;
    /* RTEXT_FILTER_BRVLAN lists VLANs one by one; the compressed form
     * (and maybe some future default) sends ranges as a begin and an end
     * entry, which this takes as well */
    if (v.flags & BRIDGE_VLAN_INFO_RANGE_BEGIN) {
        c->range_begin = v.vid;
        return MNL_CB_OK;
    }
    if ((v.flags & BRIDGE_VLAN_INFO_RANGE_END) && c->range_begin && c->range_begin < v.vid) {
        for (unsigned id = c->range_begin; id <= v.vid; id++)
            port_vlans_add(c, (uint16_t)id);
        c->range_begin = 0;
        return MNL_CB_OK;
    }
    c->range_begin = 0;
    port_vlans_add(c, v.vid);
    return MNL_CB_OK;
}

static int port_vlans_cb(const struct nlmsghdr *nlh, void *data) {
    port_vlans_ctx *c = data;
    if (nlh->nlmsg_type != RTM_NEWLINK)
        return 0;
    const struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof *ifm))
        return -EBADMSG;
    if (ifm->ifi_index != c->index)
        return 0;
    const struct nlattr *tb[IFLA_MAX + 1];
    int r = parse_attrs(nlh, sizeof *ifm, tb, IFLA_MAX);
    if (r < 0)
        return r;
    c->found = true;
    /* no IFLA_AF_SPEC: no VLANs at all (or no VLAN support in the kernel) */
    if (tb[IFLA_AF_SPEC] && mnl_attr_parse_nested(tb[IFLA_AF_SPEC], port_vlans_entry_cb, c) < 0)
        return -EBADMSG;
    return 0;
}

int nd_bridge_port_vlans(const char *port, uint16_t *vids, size_t max, size_t *ret_n, uint16_t *ret_pvid,
                         qv_error *err) {
    if (!nd_ifname_valid(port))
        return invalid_name(err, port);
    char extack[ND_NL_EXTACK];
    nd_link l;
    int r = link_get(port, &l, extack, sizeof extack);
    if (r == -ENODEV)
        return qv_error_set(err, ENODEV, "no link named %s", port);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot read the VLANs of %s", port);

    _Alignas(struct nlmsghdr) char buf[ND_NL_SEND_SIZE];
    struct nlmsghdr *nlh = nl_put_header(buf, RTM_GETLINK, NLM_F_DUMP);
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_BRIDGE;
    mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_BRVLAN);

    port_vlans_ctx c = {.index = l.index, .vids = vids, .max = max};
    r = nl_dump_run(nlh, port_vlans_cb, port_vlans_reset, &c, extack, sizeof extack);
    if (r < 0)
        return nl_fail(err, r, extack, "cannot read the VLANs of %s", port);
    if (!c.found)
        return qv_error_set(err, EINVAL, "cannot read the VLANs of %s: it is not a bridge port", port);
    if (c.overflow)
        return qv_error_set(err, ENOBUFS, "%s has more than %zu VLANs", port, max);
    *ret_n = c.n;
    *ret_pvid = c.pvid;
    return 0;
}
