/* netdev/: IPv4 parsing, the nftables text, and (as root) links, addresses,
 * TAPs, bridge VLANs and the nftables table against the real kernel; and the
 * daemon's start-time NIC setup (sv_net_setup) on top of them, for a bridge
 * NIC in a VLAN and for a nat NIC with its NAT network.
 *
 * The kernel tests run only inside a private network namespace: main()
 * calls unshare(CLONE_NEWNET) before any test, so every link, address and
 * table made here dies with the process and the host's network is never
 * touched.  Where unshare fails (not root) they are skipped.
 *
 * The VLAN parts need a kernel with CONFIG_BRIDGE_VLAN_FILTERING and say
 * "# skipped: ..." without it; test/guest/test_netdev_kernel.py runs this
 * program under the tiny test guest's Debian kernel, which has it (and
 * vhost-net), and fails if they were skipped there. */
#include "testlib.h"

#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "netdev/ip.h"
#include "netdev/link.h"
#include "netdev/nat.h"
#include "netdev/nft.h"
#include "netdev/nic.h"
#include "netdev/tap.h"
#include "spec/config.h"
#include "supervisor/vm/nics.h"
#include "spec/vmspec.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libmnl/libmnl.h>
#include <limits.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/rtnetlink.h>
#include <nftables/libnftables.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static bool in_netns;

/* cmocka 1.1.5 reports skip() as "not ok N # SKIP", which meson's TAP
 * parser counts as a failure (only "ok N # SKIP" is a skip); so a test that
 * cannot run here says why on a TAP comment line and passes. */
#define SKIP_TEST(...)                              \
    do {                                            \
        print_message("# skipped: " __VA_ARGS__);   \
        return;                                     \
    } while (0)

#define REQUIRE_NETNS()                                                 \
    do {                                                                \
        if (!in_netns)                                                  \
            SKIP_TEST("not in a private network namespace (root?)\n"); \
    } while (0)

/* ---- IPv4 parsing -------------------------------------------------------- */

static void test_ipv4_parse(void **state) {
    (void)state;
    uint32_t a;
    assert_int_equal(nd_ipv4_parse("192.168.100.1", &a), 0);
    assert_true(a == 0xc0a86401u);
    assert_int_equal(nd_ipv4_parse("0.0.0.0", &a), 0);
    assert_true(a == 0);
    assert_int_equal(nd_ipv4_parse("255.255.255.255", &a), 0);
    assert_true(a == UINT32_MAX);
    const char *bad[] = {"", "1", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "010.0.0.1", "0x7f.0.0.1",
                         " 1.2.3.4", "1.2.3.4 ", "1.2.3.4/24", "::1", "1..2.3", "a.b.c.d"};
    for (size_t i = 0; i < QV_ARRAY_SIZE(bad); i++) {
        a = 42;
        assert_int_equal(nd_ipv4_parse(bad[i], &a), -EINVAL);
        assert_true(a == 42);
    }
    assert_int_equal(nd_ipv4_parse(NULL, &a), -EINVAL);

    char buf[ND_IPV4_STRLEN];
    nd_ipv4_format(0xc0a86401u, buf);
    assert_string_equal(buf, "192.168.100.1");
    nd_ipv4_format(UINT32_MAX, buf);
    assert_string_equal(buf, "255.255.255.255");
    nd_ipv4_format(0, buf);
    assert_string_equal(buf, "0.0.0.0");
}

static void test_cidr_parse(void **state) {
    (void)state;
    uint32_t a;
    unsigned len;
    assert_int_equal(nd_ipv4_cidr_parse("192.168.100.1/24", &a, &len), 0);
    assert_true(a == 0xc0a86401u);
    assert_int_equal(len, 24);
    assert_false(nd_ipv4_cidr_normalised(a, len));
    assert_int_equal(nd_ipv4_cidr_parse("10.0.0.0/8", &a, &len), 0);
    assert_true(nd_ipv4_cidr_normalised(a, len));
    assert_int_equal(nd_ipv4_cidr_parse("0.0.0.0/0", &a, &len), 0);
    assert_int_equal(len, 0);
    assert_true(nd_ipv4_cidr_normalised(a, len));
    assert_false(nd_ipv4_cidr_normalised(0x01000000u, 0));
    assert_int_equal(nd_ipv4_cidr_parse("1.2.3.4/32", &a, &len), 0);
    assert_int_equal(len, 32);
    assert_true(nd_ipv4_cidr_normalised(a, len));
    assert_int_equal(nd_ipv4_cidr_parse("1.2.3.4/9", &a, &len), 0);
    assert_int_equal(len, 9);

    const char *bad[] = {"",           "/24",        "1.2.3.4",     "1.2.3.4/",   "1.2.3.4/33",  "1.2.3.4/024",
                         "1.2.3.4/00", "1.2.3.4/-1", "1.2.3.4/+8",  "1.2.3.4/8 ", "1.2.3.4/8/8", "1.2.3/24",
                         "::/0",       "::1/128",    "1.2.3.4 /24", "1.2.3.4/24; flush ruleset",
                         "1.2.3.4/100", "999.2.3.4/8", "1.2.3.4.5.6.7.8/8"};
    for (size_t i = 0; i < QV_ARRAY_SIZE(bad); i++) {
        len = 99;
        assert_int_equal(nd_ipv4_cidr_parse(bad[i], &a, &len), -EINVAL);
        assert_int_equal(len, 99);
    }
    assert_int_equal(nd_ipv4_cidr_parse(NULL, &a, &len), -EINVAL);

    char buf[ND_IPV4_CIDR_STRLEN];
    nd_ipv4_cidr_format(UINT32_MAX, 32, buf);
    assert_string_equal(buf, "255.255.255.255/32");
    nd_ipv4_cidr_format(0xc0a86400u, 24, buf);
    assert_string_equal(buf, "192.168.100.0/24");

    assert_true(nd_ipv4_mask(0) == 0);
    assert_true(nd_ipv4_mask(1) == 0x80000000u);
    assert_true(nd_ipv4_mask(24) == 0xffffff00u);
    assert_true(nd_ipv4_mask(31) == 0xfffffffeu);
    assert_true(nd_ipv4_mask(32) == UINT32_MAX);
}

static void test_ifname_valid(void **state) {
    (void)state;
    assert_true(nd_ifname_valid("qvbr0"));
    assert_true(nd_ifname_valid("qvt-web-1"));
    assert_true(nd_ifname_valid("a"));
    assert_true(nd_ifname_valid("123456789012345"));
    assert_false(nd_ifname_valid("1234567890123456"));
    assert_false(nd_ifname_valid(""));
    assert_false(nd_ifname_valid(NULL));
    assert_false(nd_ifname_valid("."));
    assert_false(nd_ifname_valid(".."));
    assert_true(nd_ifname_valid("..."));
    assert_false(nd_ifname_valid("a/b"));
    assert_false(nd_ifname_valid("a b"));
    assert_false(nd_ifname_valid("a\tb"));
    assert_false(nd_ifname_valid("a\n"));
    assert_false(nd_ifname_valid("eth0:1"));
    assert_false(nd_ifname_valid("tap%d"));
}

/* Every function checks its arguments before the kernel sees them. */
static void test_argument_checks(void **state) {
    (void)state;
    qv_error err = {0};
    int fd = -1;
    assert_int_equal(nd_tap_open("tap%d", &fd, &err), -EINVAL);
    assert_int_equal(err.code, EINVAL);
    assert_non_null(strstr(err.msg, "tap%d"));
    assert_int_equal(fd, -1);
    assert_int_equal(nd_tap_open("0123456789abcdef", &fd, NULL), -EINVAL);
    assert_int_equal(nd_tap_open("..", &fd, NULL), -EINVAL);
    assert_int_equal(nd_tap_open("a b", &fd, NULL), -EINVAL);
    assert_int_equal(nd_tap_open("", &fd, NULL), -EINVAL);

    err = (qv_error){0};
    assert_int_equal(nd_addr_add("lo", "192.168.100.1", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "192.168.100.1"));
    assert_int_equal(nd_addr_add("lo", "192.168.100.1/33", NULL), -EINVAL);
    assert_int_equal(nd_addr_add("lo", "fe80::1/64", NULL), -EINVAL);
    assert_int_equal(nd_addr_add("lo", NULL, NULL), -EINVAL);
    assert_int_equal(nd_addr_del("lo", "1.2.3.4/24x", NULL), -EINVAL);
    bool has = true;
    assert_int_equal(nd_addr_has("lo", "1.2.3.4", &has, NULL), -EINVAL);
    assert_true(has);
    assert_int_equal(nd_addr_add("a/b", "1.2.3.4/24", NULL), -EINVAL);
    assert_int_equal(nd_bridge_create("br%d", NULL), -EINVAL);
    assert_int_equal(nd_link_delete("", NULL), -EINVAL);
    assert_int_equal(nd_link_set_up("0123456789abcdef", NULL), -EINVAL);
    assert_int_equal(nd_link_set_master("lo", "a b", NULL), -EINVAL);
    assert_int_equal(nd_bridge_port_set_vlan("lo", 0, NULL), -EINVAL);
    assert_int_equal(nd_bridge_port_set_vlan("lo", 4095, NULL), -EINVAL);
    nd_link l;
    assert_int_equal(nd_link_get("x:y", &l, NULL), -EINVAL);
}

/* ---- the nftables text --------------------------------------------------- */

#define RULESET_HEAD                                              \
    "# managed by qvisor: replaced whole on every change\n"       \
    "add table ip qvisor\n"                                       \
    "flush table ip qvisor\n"                                     \
    "table ip qvisor {\n"                                         \
    "\tchain postrouting {\n"                                     \
    "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
#define RULESET_TAIL \
    "\t}\n"          \
    "}\n"

static void test_nft_render(void **state) {
    (void)state;
    char *text = NULL;
    assert_int_equal(nd_nft_render_nat(NULL, 0, &text, NULL), 0);
    assert_string_equal(text, RULESET_HEAD RULESET_TAIL);
    free(text);

    const char *one[] = {"192.168.100.0/24"};
    text = NULL;
    assert_int_equal(nd_nft_render_nat(one, 1, &text, NULL), 0);
    assert_string_equal(text, RULESET_HEAD "\t\tip saddr 192.168.100.0/24 ip daddr != 192.168.100.0/24 masquerade\n"
                                          RULESET_TAIL);
    free(text);

    const char *two[] = {"192.168.100.0/24", "10.7.0.0/16"};
    text = NULL;
    assert_int_equal(nd_nft_render_nat(two, 2, &text, NULL), 0);
    assert_string_equal(text, RULESET_HEAD "\t\tip saddr 192.168.100.0/24 ip daddr != 192.168.100.0/24 masquerade\n"
                                          "\t\tip saddr 10.7.0.0/16 ip daddr != 10.7.0.0/16 masquerade\n" RULESET_TAIL);
    free(text);
}

static void test_nft_render_rejects(void **state) {
    (void)state;
    const char *bad[] = {"192.168.100.1/24", "1.2.3.4/33", "1.2.3.4/24; flush ruleset", "", "::/0",
                         "192.168.100.0",    "0.0.0.1/0",  "192.168.100.0/24\n", "10.0.0.0/8 masquerade"};
    for (size_t i = 0; i < QV_ARRAY_SIZE(bad); i++) {
        const char *subnets[] = {"10.0.0.0/8", bad[i]};
        char *text = (char *)"untouched";
        qv_error err = {0};
        assert_int_equal(nd_nft_render_nat(subnets, 2, &text, &err), -EINVAL);
        assert_int_equal(err.code, EINVAL);
        assert_string_equal(text, "untouched");
    }
    qv_error err = {0};
    char *text = NULL;
    const char *host[] = {"192.168.100.1/24"};
    assert_int_equal(nd_nft_render_nat(host, 1, &text, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "192.168.100.0/24")); /* the hint */
    const char *null[] = {NULL};
    assert_int_equal(nd_nft_render_nat(null, 1, &text, NULL), -EINVAL);
    assert_int_equal(nd_nft_render_nat(NULL, 1, &text, NULL), -EINVAL);
    assert_null(text);
}

/* ---- the kernel, in a private network namespace -------------------------- */

static bool link_exists(const char *name) {
    nd_link l;
    int r = nd_link_get(name, &l, NULL);
    assert_true(r == 0 || r == -ENODEV);
    return r == 0;
}

static void test_bridge_and_addresses(void **state) {
    (void)state;
    REQUIRE_NETNS();
    qv_error err = {0};
    nd_link l;

    assert_int_equal(nd_link_get("qvbr0", &l, &err), -ENODEV);
    assert_string_equal(err.msg, "no link named qvbr0");
    assert_int_equal(nd_bridge_create("qvbr0", &err), 0);
    err = (qv_error){0};
    assert_int_equal(nd_bridge_create("qvbr0", &err), -EEXIST);
    assert_int_equal(err.code, EEXIST);
    assert_non_null(strstr(err.msg, "cannot create bridge qvbr0: File exists"));

    assert_int_equal(nd_link_get("qvbr0", &l, NULL), 0);
    assert_string_equal(l.name, "qvbr0");
    assert_string_equal(l.kind, "bridge");
    assert_false(l.up);
    assert_int_equal(l.master, 0);
    assert_int_equal(strlen(l.mac), 17);
    assert_true(l.index > 1);
    assert_int_equal(nd_link_set_up("qvbr0", NULL), 0);
    assert_int_equal(nd_link_get("qvbr0", &l, NULL), 0);
    assert_true(l.up);
    bool filtering = true;
    assert_int_equal(nd_bridge_vlan_filtering("qvbr0", &filtering, NULL), 0);
    assert_false(filtering);
    assert_int_equal(nd_bridge_vlan_filtering("lo", &filtering, NULL), -EINVAL);

    nd_link lo;
    assert_int_equal(nd_link_get("lo", &lo, NULL), 0);
    assert_string_equal(lo.kind, "");
    assert_string_equal(lo.mac, "00:00:00:00:00:00");

    nd_link *links = NULL;
    size_t n = 0;
    assert_int_equal(nd_link_list(&links, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_string_equal(links[0].name, "lo");
    assert_int_equal(links[0].index, 1);
    assert_string_equal(links[1].name, "qvbr0");
    assert_string_equal(links[1].kind, "bridge");
    free(links);

    bool has = true;
    assert_int_equal(nd_addr_has("qvbr0", "192.168.100.1/24", &has, NULL), 0);
    assert_false(has);
    assert_int_equal(nd_addr_add("qvbr0", "192.168.100.1/24", NULL), 0);
    assert_int_equal(nd_addr_has("qvbr0", "192.168.100.1/24", &has, NULL), 0);
    assert_true(has);
    /* the same address with another prefix, or another address: no */
    assert_int_equal(nd_addr_has("qvbr0", "192.168.100.1/25", &has, NULL), 0);
    assert_false(has);
    assert_int_equal(nd_addr_has("qvbr0", "192.168.100.2/24", &has, NULL), 0);
    assert_false(has);
    assert_int_equal(nd_addr_has("lo", "192.168.100.1/24", &has, NULL), 0);
    assert_false(has);
    err = (qv_error){0};
    assert_int_equal(nd_addr_add("qvbr0", "192.168.100.1/24", &err), -EEXIST);
    assert_non_null(strstr(err.msg, "192.168.100.1/24"));
    assert_int_equal(nd_addr_add("qvbr0", "10.9.0.1/31", NULL), 0);
    assert_int_equal(nd_addr_add("qvbr0", "10.9.1.1/32", NULL), 0);
    assert_int_equal(nd_addr_has("qvbr0", "10.9.1.1/32", &has, NULL), 0);
    assert_true(has);

    assert_int_equal(nd_addr_del("qvbr0", "192.168.100.1/24", NULL), 0);
    assert_int_equal(nd_addr_has("qvbr0", "192.168.100.1/24", &has, NULL), 0);
    assert_false(has);
    err = (qv_error){0};
    assert_int_equal(nd_addr_del("qvbr0", "192.168.100.1/24", &err), -EADDRNOTAVAIL);
    assert_int_equal(err.code, EADDRNOTAVAIL);
    assert_int_equal(nd_addr_add("nosuchlink", "192.168.100.1/24", &err), -ENODEV);

    assert_int_equal(nd_link_delete("qvbr0", NULL), 0);
    err = (qv_error){0};
    assert_int_equal(nd_link_delete("qvbr0", &err), -ENODEV);
    assert_non_null(strstr(err.msg, "cannot delete link qvbr0"));
    assert_false(link_exists("qvbr0"));
}

/* A persistent TAP as `ip tuntap add` leaves it: owned by nobody's fd. */
static void make_persistent_tap(const char *name) {
    _cleanup_close_ int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    assert_int_equal(ioctl(fd, TUNSETIFF, &ifr), 0);
    assert_int_equal(ioctl(fd, TUNSETPERSIST, 1), 0);
}

static void test_tap(void **state) {
    (void)state;
    REQUIRE_NETNS();
    qv_error err = {0};
    int fd = -1;
    assert_int_equal(nd_tap_open("qvt-a", &fd, &err), 0);
    assert_true(fd >= 0);
    int flags = fcntl(fd, F_GETFD);
    assert_true(flags >= 0 && (flags & FD_CLOEXEC));

    nd_link l;
    assert_int_equal(nd_link_get("qvt-a", &l, NULL), 0);
    assert_string_equal(l.kind, "tun");
    assert_int_equal(strlen(l.mac), 17);
    assert_false(l.up);
    struct ifreq ifr = {0};
    assert_int_equal(ioctl(fd, TUNGETIFF, &ifr), 0);
    assert_true(ifr.ifr_flags & IFF_TAP);
    assert_true(ifr.ifr_flags & IFF_NO_PI);
    assert_true(ifr.ifr_flags & IFF_VNET_HDR);
    assert_false(ifr.ifr_flags & IFF_PERSIST);

    /* in use: EBUSY, whoever holds it */
    int fd2 = -1;
    err = (qv_error){0};
    assert_int_equal(nd_tap_open("qvt-a", &fd2, &err), -EBUSY);
    assert_int_equal(err.code, EBUSY);
    assert_non_null(strstr(err.msg, "qvt-a"));
    assert_int_equal(fd2, -1);

    assert_int_equal(nd_bridge_create("qvbr1", NULL), 0);
    assert_int_equal(nd_link_set_up("qvbr1", NULL), 0);
    nd_link br;
    assert_int_equal(nd_link_get("qvbr1", &br, NULL), 0);
    assert_int_equal(nd_link_set_master("qvt-a", "qvbr1", NULL), 0);
    assert_int_equal(nd_link_set_up("qvt-a", NULL), 0);
    assert_int_equal(nd_link_get("qvt-a", &l, NULL), 0);
    assert_int_equal(l.master, br.index);
    assert_true(l.up);
    err = (qv_error){0};
    assert_int_equal(nd_link_set_master("qvt-a", "nosuchbr", &err), -ENODEV);
    assert_non_null(strstr(err.msg, "nosuchbr"));

    /* a link of another kind by that name: EBUSY as well (IFF_TUN_EXCL) */
    assert_int_equal(nd_tap_open("qvbr1", &fd2, NULL), -EBUSY);

    /* not persistent: the last close takes the TAP away */
    close(fd);
    assert_false(link_exists("qvt-a"));
    assert_int_equal(nd_tap_open("qvt-a", &fd, NULL), 0);
    close(fd);
    assert_false(link_exists("qvt-a"));

    /* a persistent leftover is not adopted (it would outlive its VM) */
    make_persistent_tap("qvt-left");
    assert_true(link_exists("qvt-left"));
    assert_int_equal(nd_tap_open("qvt-left", &fd, NULL), -EBUSY);
    assert_int_equal(nd_link_delete("qvt-left", NULL), 0);
    assert_int_equal(nd_tap_open("qvt-left", &fd, NULL), 0);
    close(fd);
    assert_false(link_exists("qvt-left"));

    assert_int_equal(nd_link_delete("qvbr1", NULL), 0);
    assert_int_equal(nd_link_delete("qvbr1", NULL), -ENODEV);
}

static void test_vhost(void **state) {
    (void)state;
    int fd = -1;
    qv_error err = {0};
    int r = nd_vhost_open(&fd, &err);
    if (r == -ENOENT) {
        assert_non_null(strstr(err.msg, "/dev/vhost-net"));
        SKIP_TEST("no /dev/vhost-net here\n");
    }
    if (r == -EACCES || r == -EPERM)
        SKIP_TEST("%s\n", err.msg);
    assert_int_equal(r, 0);
    int flags = fcntl(fd, F_GETFD);
    assert_true(flags >= 0 && (flags & FD_CLOEXEC));
    close(fd);
}

/* IFLA_BR_VLAN_FILTERING through RTM_NEWLINK, as `ip link set BR type
 * bridge vlan_filtering 1` does.  Returns 0 or a negative errno. */
static int set_vlan_filtering(const char *bridge, bool on) {
    char buf[1024] __attribute__((aligned(4)));
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWLINK;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    nlh->nlmsg_seq = 1;
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, bridge);
    struct nlattr *li = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
    struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
    mnl_attr_put_u8(nlh, IFLA_BR_VLAN_FILTERING, on);
    mnl_attr_nest_end(nlh, data);
    mnl_attr_nest_end(nlh, li);

    struct mnl_socket *nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
    assert_non_null(nl);
    assert_int_equal(mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID), 0);
    assert_true(mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) >= 0);
    char rbuf[8192];
    ssize_t n = mnl_socket_recvfrom(nl, rbuf, sizeof rbuf);
    assert_true(n > 0);
    int r = mnl_cb_run(rbuf, (size_t)n, 1, mnl_socket_get_portid(nl), NULL, NULL);
    int e = errno;
    mnl_socket_close(nl);
    return r < 0 ? -e : 0;
}

static void assert_port_vlans(const char *port, uint16_t want_vid, uint16_t want_pvid) {
    uint16_t vids[8];
    size_t n = 99;
    uint16_t pvid = 99;
    qv_error err = {0};
    assert_int_equal(nd_bridge_port_vlans(port, vids, QV_ARRAY_SIZE(vids), &n, &pvid, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(vids[0], want_vid);
    assert_int_equal(pvid, want_pvid);
}

static void test_bridge_vlans(void **state) {
    (void)state;
    REQUIRE_NETNS();
    qv_error err = {0};
    assert_int_equal(nd_bridge_create("qvbr2", NULL), 0);
    int fd_a = -1, fd_b = -1;
    assert_int_equal(nd_tap_open("qvt-v1", &fd_a, NULL), 0);
    assert_int_equal(nd_tap_open("qvt-v2", &fd_b, NULL), 0);

    /* not a port yet */
    err = (qv_error){0};
    assert_int_equal(nd_bridge_port_set_vlan("qvt-v1", 100, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a bridge port"));
    uint16_t vids[4], pvid;
    size_t n;
    assert_int_equal(nd_bridge_port_vlans("qvt-v1", vids, 4, &n, &pvid, NULL), -EINVAL);

    assert_int_equal(nd_link_set_master("qvt-v1", "qvbr2", NULL), 0);
    assert_int_equal(nd_link_set_master("qvt-v2", "qvbr2", NULL), 0);

    err = (qv_error){0};
    int r = nd_bridge_port_set_vlan("qvt-v1", 100, &err);
    if (r == -EOPNOTSUPP) {
        /* a kernel without CONFIG_BRIDGE_VLAN_FILTERING: ports have no
         * VLANs at all, and the error says why */
        assert_non_null(strstr(err.msg, "CONFIG_BRIDGE_VLAN_FILTERING"));
        assert_int_equal(nd_bridge_port_vlans("qvt-v1", vids, 4, &n, &pvid, NULL), 0);
        assert_int_equal(n, 0);
        assert_int_equal(pvid, 0);
        close(fd_a);
        close(fd_b);
        assert_int_equal(nd_link_delete("qvbr2", NULL), 0);
        SKIP_TEST("the kernel has no bridge VLAN filtering: VLAN checks not run\n");
    }
    assert_int_equal(r, 0);

    /* a new port is in the default VLAN 1, PVID, untagged */
    assert_port_vlans("qvt-v2", 1, 1);
    /* filtering off: the kernel keeps the VLANs all the same */
    assert_port_vlans("qvt-v1", 100, 100);
    /* idempotent, and VLAN 1 (already gone) is no error */
    assert_int_equal(nd_bridge_port_set_vlan("qvt-v1", 100, NULL), 0);
    assert_port_vlans("qvt-v1", 100, 100);

    assert_int_equal(set_vlan_filtering("qvbr2", true), 0);
    bool filtering = false;
    assert_int_equal(nd_bridge_vlan_filtering("qvbr2", &filtering, NULL), 0);
    assert_true(filtering);
    assert_int_equal(nd_bridge_port_set_vlan("qvt-v2", 200, NULL), 0);
    assert_port_vlans("qvt-v2", 200, 200);
    assert_port_vlans("qvt-v1", 100, 100);
    /* moving a port to another VLAN: the new one is PVID; the old one stays
     * a member (only VLAN 1 is taken away) */
    assert_int_equal(nd_bridge_port_set_vlan("qvt-v2", 1, NULL), 0);
    n = 0;
    assert_int_equal(nd_bridge_port_vlans("qvt-v2", vids, 4, &n, &pvid, NULL), 0);
    assert_int_equal(n, 2);
    assert_int_equal(pvid, 1);
    /* more VLANs than room */
    assert_int_equal(nd_bridge_port_vlans("qvt-v2", vids, 1, &n, &pvid, NULL), -ENOBUFS);

    close(fd_a);
    close(fd_b);
    assert_int_equal(nd_link_delete("qvbr2", NULL), 0);
}

/* ---- nftables, in the namespace ------------------------------------------ */

/* How many times `what` occurs in `list table ip qvisor`. */
static int count_in_table(const char *what) {
    struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    assert_non_null(ctx);
    assert_int_equal(nft_ctx_buffer_output(ctx), 0);
    assert_int_equal(nft_ctx_buffer_error(ctx), 0);
    assert_int_equal(nft_run_cmd_from_buffer(ctx, "list table ip qvisor"), 0);
    int count = 0;
    for (const char *p = nft_ctx_get_output_buffer(ctx); (p = strstr(p, what)); p += strlen(what))
        count++;
    nft_ctx_free(ctx);
    return count;
}

static void test_nft_table(void **state) {
    (void)state;
    REQUIRE_NETNS();
    qv_error err = {0};
    bool exists = true;
    assert_int_equal(nd_nft_table_exists(&exists, &err), 0);
    assert_false(exists);
    assert_int_equal(nd_nft_table_delete(&err), 0);

    const char *one[] = {"192.168.100.0/24"};
    char *text = NULL;
    assert_int_equal(nd_nft_render_nat(one, 1, &text, NULL), 0);
    assert_int_equal(nd_nft_apply(text, &err), 0);
    assert_int_equal(nd_nft_table_exists(&exists, NULL), 0);
    assert_true(exists);
    assert_int_equal(count_in_table("masquerade"), 1);
    assert_int_equal(count_in_table("ip saddr 192.168.100.0/24 ip daddr != 192.168.100.0/24 masquerade"), 1);
    /* again: the batch replaces, it does not add */
    assert_int_equal(nd_nft_apply(text, &err), 0);
    assert_int_equal(count_in_table("masquerade"), 1);
    free(text);

    const char *two[] = {"192.168.100.0/24", "10.7.0.0/16"};
    assert_int_equal(nd_nft_render_nat(two, 2, &text, NULL), 0);
    assert_int_equal(nd_nft_apply(text, NULL), 0);
    assert_int_equal(count_in_table("masquerade"), 2);
    assert_int_equal(count_in_table("10.7.0.0/16"), 2);
    free(text);

    assert_int_equal(nd_nft_render_nat(NULL, 0, &text, NULL), 0);
    assert_int_equal(nd_nft_apply(text, NULL), 0);
    assert_int_equal(count_in_table("masquerade"), 0);
    assert_int_equal(count_in_table("chain postrouting"), 1);
    free(text);

    /* a failing batch changes nothing and says why */
    err = (qv_error){0};
    int r = nd_nft_apply("add table ip qvisor\nadd rule ip qvisor postrouting ip saddr 1.2.3.0/24 frobnicate\n", &err);
    assert_true(r < 0);
    assert_int_equal(err.code, -r);
    assert_non_null(strstr(err.msg, "cannot apply the nftables ruleset: Error:"));
    assert_null(strchr(err.msg, '\n'));
    print_message("# %s\n", err.msg);
    err = (qv_error){0};
    r = nd_nft_apply("add rule ip qvisor nosuchchain masquerade\n", &err);
    assert_int_equal(r, -ENOENT);
    print_message("# %s\n", err.msg);
    assert_int_equal(count_in_table("chain postrouting"), 1);

    assert_int_equal(nd_nft_table_delete(&err), 0);
    assert_int_equal(nd_nft_table_exists(&exists, NULL), 0);
    assert_false(exists);
    assert_int_equal(nd_nft_table_delete(&err), 0);
}

/* ---- sv_net_setup: what a VM start does with its NICs --------------------- */

static sv_vmspec *net_spec(const char *name, const char *nic) {
    char json[256];
    snprintf(json, sizeof json, "{\"name\":\"%s\",\"image\":\"i\",\"nets\":[\"%s\"]}", name, nic);
    return qv_test_spec(json);
}

static void replace_string(char **field, const char *value) {
    free(*field);
    *field = strdup(value);
    assert_non_null(*field);
}

static void assert_fds_none(const sv_net_fds *f, size_t from) {
    for (size_t i = from; i < ND_NICS_MAX; i++) {
        assert_int_equal(f->tap[i], -1);
        assert_int_equal(f->vhost[i], -1);
    }
}

static void test_net_setup_bridge_vlan(void **state) {
    (void)state;
    REQUIRE_NETNS();
    _cleanup_(sv_config_freep) sv_config *c = sv_config_new_default();
    assert_non_null(c);
    _cleanup_(sv_vmspec_freep) sv_vmspec *spec = net_spec("vt", "bridge,bridge=ovl0,vlan=100,mac=0a:51:76:00:00:09");
    char tap[IFNAMSIZ];
    nd_tap_name("vt", 0, tap);
    assert_string_equal(tap, "qv-vt-0");
    assert_int_equal(nd_bridge_create("ovl0", NULL), 0);
    assert_int_equal(nd_link_set_up("ovl0", NULL), 0);

    /* filtering off: refused before a TAP exists (the VM would see every VLAN) */
    sv_net_fds fds;
    sv_net_fds_init(&fds);
    qv_error err = {0};
    assert_int_equal(sv_net_setup(c, spec, &fds, &err), -EOPNOTSUPP);
    assert_int_equal(err.code, EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "needs VLAN filtering"));
    assert_non_null(strstr(err.msg, "ovl0"));
    assert_false(link_exists(tap));
    assert_fds_none(&fds, 0);

    int r = set_vlan_filtering("ovl0", true);
    if (r == -EOPNOTSUPP) {
        assert_int_equal(nd_link_delete("ovl0", NULL), 0);
        SKIP_TEST("the kernel has no bridge VLAN filtering: sv_net_setup with vlan= not run\n");
    }
    assert_int_equal(r, 0);
    bool filtering = false;
    assert_int_equal(nd_bridge_vlan_filtering("ovl0", &filtering, NULL), 0);
    assert_true(filtering);

    err = (qv_error){0};
    r = sv_net_setup(c, spec, &fds, &err);
    if (r < 0)
        fail_msg("sv_net_setup: %d %s", r, err.msg);
    assert_true(fds.tap[0] >= 0);
    bool vhost = access("/dev/vhost-net", R_OK | W_OK) == 0;
    assert_true(vhost ? fds.vhost[0] >= 0 : fds.vhost[0] == -1);
    assert_fds_none(&fds, 1);

    nd_link l, br;
    assert_int_equal(nd_link_get("ovl0", &br, NULL), 0);
    assert_int_equal(nd_link_get(tap, &l, NULL), 0);
    assert_string_equal(l.kind, "tun");
    assert_int_equal(l.master, br.index);
    assert_true(l.up);
    /* VLAN 100 only (out of the default VLAN 1), as PVID */
    assert_port_vlans(tap, 100, 100);

    /* the TAP is not persistent: closing the fds removes it */
    sv_net_fds_close(&fds);
    assert_fds_none(&fds, 0);
    assert_false(link_exists(tap));

    /* filtering turned off again: refused again, nothing left behind */
    assert_int_equal(set_vlan_filtering("ovl0", false), 0);
    err = (qv_error){0};
    assert_int_equal(sv_net_setup(c, spec, &fds, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "needs VLAN filtering"));
    assert_false(link_exists(tap));
    assert_fds_none(&fds, 0);

    assert_int_equal(nd_link_delete("ovl0", NULL), 0);
}

#define FORWARD_PATH "/proc/sys/net/ipv4/ip_forward"

/* The namespace's own ip_forward (/proc/sys/net is per network namespace). */
static bool forwarding(void) {
    _cleanup_free_ char *v = NULL;
    assert_int_equal(qv_read_file(FORWARD_PATH, 16, &v, NULL), 0);
    assert_true(v[0] == '0' || v[0] == '1');
    return v[0] == '1';
}

static void set_forwarding(bool on) {
    assert_true(in_netns); /* never the host's */
    _cleanup_close_ int fd = open(FORWARD_PATH, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, on ? "1\n" : "0\n", 2), 2);
}

static json_t *load_record(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        fail_msg("%s: %s", path, je.text);
    return j;
}

static bool created(json_t *rec, const char *what) {
    json_t *v = json_object_get(json_object_get(rec, "created"), what);
    assert_true(json_is_boolean(v));
    return json_is_true(v);
}

/* One start and stop of a VM with a nat NIC, then the teardown; the NAT
 * network is made from nothing, with forwarding `fwd_before`. */
static void nat_round(const sv_config *c, const sv_vmspec *spec, bool fwd_before) {
    char tap[IFNAMSIZ];
    nd_tap_name(spec->name, 0, tap);
    nd_nat nat;
    char record[PATH_MAX];
    sv_net_nat(c, &nat, record);
    set_forwarding(fwd_before);
    assert_false(link_exists(c->nat_bridge));

    sv_net_fds fds;
    sv_net_fds_init(&fds);
    qv_error err = {0};
    int r = sv_net_setup(c, spec, &fds, &err);
    if (r < 0)
        fail_msg("sv_net_setup: %d %s", r, err.msg);
    assert_true(fds.tap[0] >= 0);
    assert_fds_none(&fds, 1);

    /* the bridge, up, with the gateway address; the TAP on it */
    nd_link br, l;
    assert_int_equal(nd_link_get(c->nat_bridge, &br, NULL), 0);
    assert_string_equal(br.kind, "bridge");
    assert_true(br.up);
    char gw[ND_IPV4_CIDR_STRLEN + 4];
    snprintf(gw, sizeof gw, "%s/%s", c->nat_gateway, strchr(c->nat_subnet, '/') + 1);
    bool has = false;
    assert_int_equal(nd_addr_has(c->nat_bridge, gw, &has, NULL), 0);
    assert_true(has);
    assert_int_equal(nd_link_get(tap, &l, NULL), 0);
    assert_int_equal(l.master, br.index);
    assert_true(l.up);
    /* forwarding, and the masquerade rule for the subnet */
    assert_true(forwarding());
    bool table = false;
    assert_int_equal(nd_nft_table_exists(&table, NULL), 0);
    assert_true(table);
    char rule[128];
    snprintf(rule, sizeof rule, "ip saddr %s ip daddr != %s masquerade", c->nat_subnet, c->nat_subnet);
    assert_int_equal(count_in_table(rule), 1);

    /* the record: what qvisor made, so teardown undoes only that */
    json_t *rec = load_record(record);
    assert_string_equal(json_string_value(json_object_get(rec, "bridge")), c->nat_bridge);
    assert_string_equal(json_string_value(json_object_get(rec, "subnet")), c->nat_subnet);
    assert_string_equal(json_string_value(json_object_get(rec, "gateway")), c->nat_gateway);
    assert_true(created(rec, "bridge"));
    assert_true(created(rec, "address"));
    assert_true(created(rec, "table"));
    assert_int_equal(created(rec, "forwarding"), !fwd_before);
    json_decref(rec);

    /* a VM's TAP still on the bridge: teardown refuses and changes nothing */
    err = (qv_error){0};
    assert_int_equal(nd_nat_teardown(&nat, false, NULL, &err), -EBUSY);
    assert_non_null(strstr(err.msg, tap));
    assert_true(link_exists(c->nat_bridge));
    assert_int_equal(access(record, F_OK), 0);

    sv_net_fds_close(&fds);
    assert_false(link_exists(tap));
    /* the network stays for the next start */
    assert_true(link_exists(c->nat_bridge));

    json_t *actions = NULL;
    err = (qv_error){0};
    r = nd_nat_teardown(&nat, false, &actions, &err);
    if (r < 0)
        fail_msg("nd_nat_teardown: %d %s", r, err.msg);
    assert_true(json_is_array(actions));
    assert_int_equal(json_array_size(actions), fwd_before ? 2 : 3);
    json_decref(actions);
    assert_false(link_exists(c->nat_bridge));
    assert_int_equal(nd_nft_table_exists(&table, NULL), 0);
    assert_false(table);
    assert_int_equal(forwarding(), fwd_before);
    assert_int_equal(access(record, F_OK), -1);
    assert_int_equal(errno, ENOENT);
}

static void test_net_setup_nat(void **state) {
    (void)state;
    REQUIRE_NETNS();
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-netdev-");
    _cleanup_(sv_config_freep) sv_config *c = sv_config_new_default();
    assert_non_null(c);
    replace_string(&c->state_dir, dir);
    replace_string(&c->nat_bridge, "qvt-nat0");
    _cleanup_(sv_vmspec_freep) sv_vmspec *spec = net_spec("vn", "nat,ip=192.168.100.7,mac=0a:51:76:00:00:0a");
    bool fwd = forwarding(); /* inherited from the host's namespace */

    /* forwarding off before: qvisor turns it on, and off again at teardown */
    nat_round(c, spec, false);
    /* on before: qvisor leaves it alone */
    nat_round(c, spec, true);

    set_forwarding(fwd);
    qv_test_rm_rf(dir);
}

int main(void) {
    /* Everything below that touches the kernel runs in a network namespace
     * of its own, or not at all. */
    if (unshare(CLONE_NEWNET) == 0) {
        nd_link *links = NULL;
        size_t n = 0;
        /* a fresh namespace holds lo and nothing else */
        if (nd_link_list(&links, &n, NULL) == 0 && n == 1 && strcmp(links[0].name, "lo") == 0)
            in_netns = true;
        else
            fprintf(stderr, "# unshare(CLONE_NEWNET) left more than lo visible: kernel tests skipped\n");
        free(links);
    } else {
        fprintf(stderr, "# unshare(CLONE_NEWNET): %s: kernel tests skipped\n", strerror(errno));
    }

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_parse),
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_ifname_valid),
        cmocka_unit_test(test_argument_checks),
        cmocka_unit_test(test_nft_render),
        cmocka_unit_test(test_nft_render_rejects),
        cmocka_unit_test(test_bridge_and_addresses),
        cmocka_unit_test(test_tap),
        cmocka_unit_test(test_vhost),
        cmocka_unit_test(test_bridge_vlans),
        cmocka_unit_test(test_nft_table),
        cmocka_unit_test(test_net_setup_bridge_vlan),
        cmocka_unit_test(test_net_setup_nat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
