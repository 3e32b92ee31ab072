/* NIC specs, MAC derivation, TAP names, IPv4 allocation (netdev/nic.h). */
#include "testlib.h"

#include "error.h"
#include "netdev/nic.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void roundtrip(const char *in, const char *canon) {
    nd_nic n;
    qv_error e = {0};
    int r = nd_nic_parse(in, &n, &e);
    if (r < 0)
        fail_msg("%s: %s", in, e.msg);
    char buf[256];
    nd_nic_format(&n, buf, sizeof buf);
    assert_string_equal(buf, canon);
    nd_nic again;
    assert_int_equal(nd_nic_parse(buf, &again, NULL), 0);
    assert_memory_equal(&n, &again, sizeof n);
}

static void refused(const char *in, const char *needle) {
    nd_nic n;
    qv_error e = {0};
    assert_int_equal(nd_nic_parse(in, &n, &e), -EINVAL);
    if (!strstr(e.msg, needle))
        fail_msg("%s: message '%s' lacks '%s'", in, e.msg, needle);
}

static void test_parse(void **state) {
    (void)state;
    roundtrip("user", "user");
    roundtrip("nat", "nat");
    roundtrip("nat,mac=0A:51:76:AA:BB:CC,ip=192.168.100.7", "nat,ip=192.168.100.7,mac=0a:51:76:aa:bb:cc");
    roundtrip("bridge,vlan=100,bridge=ovl0", "bridge,bridge=ovl0,vlan=100");
    roundtrip("bridge,ip=10.1.0.5/24,gw=10.1.0.1", "bridge,ip=10.1.0.5/24,gw=10.1.0.1");

    refused("", "starts with its mode");
    refused("tap", "starts with its mode");
    refused("nat,ip", "not key=value");
    refused("nat,ip=", "not key=value");
    refused("nat,color=red", "unknown key 'color'");
    refused("nat,ip=1.2.3.4,ip=1.2.3.5", "ip given twice");
    refused("user,ip=10.0.2.15", "not a setting of a user NIC");
    refused("nat,vlan=5", "not a setting of a nat NIC");
    refused("nat,ip=192.168.100.7/24", "prefix comes from network.nat_subnet");
    refused("bridge,ip=10.1.0.5", "with its prefix");
    refused("bridge,vlan=0", "1 to 4094");
    refused("bridge,vlan=4095", "1 to 4094");
    refused("bridge,bridge=a/b", "not a bridge name");
    refused("bridge,bridge=abcdefghijklmnop", "not a bridge name");
    refused("bridge,gw=10.1.0.1", "gw needs a static ip");
    refused("bridge,ip=10.1.0.5/24,gw=10.2.0.1", "not another address");
    refused("user,mac=01:00:5e:00:00:01", "unicast MAC"); /* multicast */
    refused("user,mac=00:00:00:00:00:00", "unicast MAC");
    refused("user,mac=0a:51:76:aa:bb", "unicast MAC");
    refused("user,mac=0a:51:76:aa:bb:cc:dd", "unicast MAC");
    refused("user,mac=0a-51-76-aa-bb-cc", "unicast MAC");
}

static void test_mac(void **state) {
    (void)state;
    char a[ND_MAC_SIZE], b[ND_MAC_SIZE], c[ND_MAC_SIZE];
    nd_mac_derive("web", 0, 0, a);
    nd_mac_derive("web", 0, 0, b);
    assert_string_equal(a, b); /* stable */
    /* pinned: VMs created before NIC lists existed keep their MAC */
    assert_string_equal(a, "0a:51:76:c3:d8:43");
    nd_mac_derive("web", 1, 0, b);
    nd_mac_derive("web", 0, 1, c);
    assert_string_not_equal(a, b);
    assert_string_not_equal(a, c);
    assert_memory_equal(a, "0a:51:76:", 9);
    char norm[ND_MAC_SIZE];
    assert_int_equal(nd_mac_parse(a, norm), 0); /* locally administered unicast */
    /* well spread: 2000 VMs give (almost) no collisions in 24 bits */
    static char seen[2000][ND_MAC_SIZE];
    int same = 0;
    for (int i = 0; i < 2000; i++) {
        char name[16];
        snprintf(name, sizeof name, "vm-%d", i);
        nd_mac_derive(name, 0, 0, seen[i]);
        for (int j = 0; j < i; j++)
            same += strcmp(seen[i], seen[j]) == 0;
    }
    assert_true(same <= 1);
}

static void test_tap_names(void **state) {
    (void)state;
    char t[IFNAMSIZ], u[IFNAMSIZ];
    nd_tap_name("web", 0, t);
    assert_string_equal(t, "qv-web-0");
    nd_tap_name("abcdefghijk", 7, t); /* 3 + 11 + 2 = 16: too long for the short form */
    assert_int_equal(strlen(t), 15);
    assert_memory_equal(t, "qvabcdef", 8);
    assert_int_equal(t[14], '7');
    nd_tap_name("abcdefghij", 7, t);
    assert_string_equal(t, "qv-abcdefghij-7"); /* exactly 15 */
    /* long names: same prefix, different names, different TAPs */
    nd_tap_name("database-primary-1", 0, t);
    nd_tap_name("database-primary-2", 0, u);
    assert_int_equal(strlen(t), 15);
    assert_string_not_equal(t, u);
    char longest[64];
    memset(longest, 'z', 63);
    longest[63] = '\0';
    nd_tap_name(longest, 3, t);
    assert_true(strlen(t) <= 15);

    assert_true(nd_tap_name_ours("qv-web-0"));
    assert_true(nd_tap_name_ours(t));
    assert_true(nd_tap_name_ours(u));
    assert_false(nd_tap_name_ours("qvbr0"));
    assert_false(nd_tap_name_ours("eth0"));
    assert_false(nd_tap_name_ours("qv-web-8"));  /* no NIC 8 */
    assert_false(nd_tap_name_ours("qv-Web-0"));
    assert_false(nd_tap_name_ours("qv-web0"));
    assert_false(nd_tap_name_ours("qvabcdefXYZ1230"));
}

static uint32_t ip(const char *s) {
    uint32_t a;
    assert_int_equal(nd_ipv4_parse(s, &a), 0);
    return a;
}

static void test_alloc(void **state) {
    (void)state;
    uint32_t net = ip("192.168.100.0"), gw = ip("192.168.100.1"), a;
    char s[ND_IPV4_STRLEN];
    assert_int_equal(nd_ipv4_alloc(net, 24, gw, NULL, 0, &a, NULL), 0);
    nd_ipv4_format(a, s);
    assert_string_equal(s, "192.168.100.2"); /* .0 is the network, .1 the gateway */
    uint32_t used[] = {ip("192.168.100.3"), ip("192.168.100.2"), ip("192.168.100.5")};
    assert_int_equal(nd_ipv4_alloc(net, 24, gw, used, 3, &a, NULL), 0);
    nd_ipv4_format(a, s);
    assert_string_equal(s, "192.168.100.4"); /* the lowest free one, given in any order */

    /* a /29 holds 6 hosts: the gateway and 5 VMs, then a clear refusal */
    uint32_t small = ip("10.9.0.0"), sgw = ip("10.9.0.1"), taken[8];
    size_t n = 0;
    for (;;) {
        qv_error e = {0};
        int r = nd_ipv4_alloc(small, 29, sgw, taken, n, &a, &e);
        if (r < 0) {
            assert_int_equal(r, -QV_ECAPACITY);
            assert_non_null(strstr(e.msg, "no free address in 10.9.0.0/29: all 5 host addresses"));
            break;
        }
        for (size_t i = 0; i < n; i++)
            assert_true(taken[i] != a); /* never twice */
        assert_true(nd_ipv4_host_in(a, small, 29));
        assert_true(a != sgw);
        taken[n++] = a;
        assert_true(n <= 5);
    }
    assert_int_equal(n, 5);
    nd_ipv4_format(taken[4], s);
    assert_string_equal(s, "10.9.0.6"); /* .7 is the broadcast address */

    assert_false(nd_ipv4_host_in(ip("192.168.100.0"), net, 24));
    assert_false(nd_ipv4_host_in(ip("192.168.100.255"), net, 24));
    assert_false(nd_ipv4_host_in(ip("192.168.101.5"), net, 24));
    assert_true(nd_ipv4_host_in(ip("192.168.100.254"), net, 24));

    uint32_t addr;
    unsigned len;
    assert_int_equal(nd_ipv4_cidr_parse("10.1.2.3/8", &addr, &len), 0);
    assert_int_equal(len, 8);
    assert_int_equal(nd_ipv4_cidr_parse("10.1.2.3/33", &addr, &len), -EINVAL);
    assert_int_equal(nd_ipv4_cidr_parse("10.1.2.3", &addr, &len), -EINVAL);
    assert_int_equal(nd_ipv4_cidr_parse("10.1.2/8", &addr, &len), -EINVAL);
    assert_int_equal(nd_ipv4_parse("1.2.3.4 ", &addr), -EINVAL);
    assert_int_equal(nd_ipv4_mask(0), 0);
    assert_int_equal(nd_ipv4_mask(32), 0xffffffffu);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_mac),
        cmocka_unit_test(test_tap_names),
        cmocka_unit_test(test_alloc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
