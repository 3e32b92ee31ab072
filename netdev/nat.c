/* The NAT network (see nat.h). */
#include "nat.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "netdev/link.h"
#include "netdev/nft.h"
#include "netdev/nic.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FORWARD_PATH "/proc/sys/net/ipv4/ip_forward"

/* Two starts may set the network up at once (prep runs on the thread pool). */
static pthread_mutex_t nat_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct record {
    char bridge[IFNAMSIZ];
    char subnet[ND_IPV4_CIDR_STRLEN];
    char gateway[ND_IPV4_STRLEN];
    bool bridge_created, address_added, forwarding_enabled, table;
} record;

static int record_load(const char *path, record *ret, bool *ret_found) {
    *ret = (record){0};
    *ret_found = false;
    _cleanup_free_ char *text = NULL;
    size_t len;
    int r = qv_read_file(path, 64 * 1024, &text, &len);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j)
        return -EBADMSG;
    const char *b = json_string_value(json_object_get(j, "bridge"));
    const char *s = json_string_value(json_object_get(j, "subnet"));
    const char *g = json_string_value(json_object_get(j, "gateway"));
    json_t *c = json_object_get(j, "created");
    snprintf(ret->bridge, sizeof ret->bridge, "%s", b ? b : "");
    snprintf(ret->subnet, sizeof ret->subnet, "%s", s ? s : "");
    snprintf(ret->gateway, sizeof ret->gateway, "%s", g ? g : "");
    ret->bridge_created = json_is_true(json_object_get(c, "bridge"));
    ret->address_added = json_is_true(json_object_get(c, "address"));
    ret->forwarding_enabled = json_is_true(json_object_get(c, "forwarding"));
    ret->table = json_is_true(json_object_get(c, "table"));
    json_decref(j);
    *ret_found = true;
    return 0;
}

static json_t *created_json(const record *rec) {
    return json_pack("{s:b, s:b, s:b, s:b}", "bridge", rec->bridge_created, "address", rec->address_added,
                     "forwarding", rec->forwarding_enabled, "table", rec->table);
}

static int record_save(const char *path, const record *rec, qv_error *err) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int r = qv_mkdir_p(dir, 0750);
        if (r < 0)
            return qv_error_set(err, -r, "cannot create %s: %s", dir, strerror(-r));
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:o}", "bridge", rec->bridge, "subnet", rec->subnet, "gateway",
                          rec->gateway, "created", created_json(rec));
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!text)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t len = strlen(text);
    int r = qv_write_file_atomic(path, text, len, 0640);
    free(text);
    if (r < 0)
        return qv_error_set(err, -r, "cannot write %s: %s", path, strerror(-r));
    return 0;
}

static int forwarding_get(bool *ret) {
    _cleanup_free_ char *v = NULL;
    int r = qv_read_file(FORWARD_PATH, 16, &v, NULL);
    if (r < 0)
        return r;
    *ret = v[0] == '1';
    return 0;
}

static int forwarding_set(bool on) {
    _cleanup_close_ int fd = open(FORWARD_PATH, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, on ? "1\n" : "0\n", 2) != 2)
        return -errno;
    return 0;
}

static int ensure_locked(const nd_nat *n, qv_error *err) {
    record rec;
    bool found;
    int r = record_load(n->record, &rec, &found);
    if (r < 0)
        return qv_error_set(err, -r, "cannot read %s: %s", n->record, strerror(-r));
    if (found && (strcmp(rec.bridge, n->bridge) != 0 || strcmp(rec.subnet, n->subnet) != 0 ||
                  strcmp(rec.gateway, n->gateway) != 0))
        return qv_error_set(err, EBUSY,
                            "the NAT network qvisor set up is %s (%s, gateway %s) but the config now says %s (%s, "
                            "gateway %s): run `qvisor net teardown` with no VM on it, then start again",
                            rec.bridge, rec.subnet, rec.gateway, n->bridge, n->subnet, n->gateway);
    snprintf(rec.bridge, sizeof rec.bridge, "%s", n->bridge);
    snprintf(rec.subnet, sizeof rec.subnet, "%s", n->subnet);
    snprintf(rec.gateway, sizeof rec.gateway, "%s", n->gateway);

    /* the bridge */
    nd_link l;
    r = nd_link_get(n->bridge, &l, NULL);
    if (r == -ENODEV) {
        rec.bridge_created = true;
        if ((r = record_save(n->record, &rec, err)) < 0)
            return r;
        if ((r = nd_bridge_create(n->bridge, err)) < 0 && r != -EEXIST)
            return r;
        log_debug("created bridge %s", n->bridge);
        r = nd_link_get(n->bridge, &l, err);
    }
    if (r < 0)
        return qv_error_set(err, -r, "network.nat_bridge %s: %s", n->bridge, strerror(-r));
    if (strcmp(l.kind, "bridge") != 0)
        return qv_error_set(err, EEXIST, "network.nat_bridge %s exists and is not a bridge (it is a %s link)",
                            n->bridge, l.kind[0] ? l.kind : "plain");

    /* the gateway address */
    unsigned len = 0;
    uint32_t net;
    nd_ipv4_cidr_parse(n->subnet, &net, &len);
    char addr[ND_IPV4_CIDR_STRLEN];
    snprintf(addr, sizeof addr, "%s/%u", n->gateway, len);
    bool has = false;
    if ((r = nd_addr_has(n->bridge, addr, &has, err)) < 0)
        return r;
    if (!has) {
        rec.address_added = true;
        if ((r = record_save(n->record, &rec, err)) < 0)
            return r;
        if ((r = nd_addr_add(n->bridge, addr, err)) < 0 && r != -EEXIST)
            return r;
    }
    if ((r = nd_link_set_up(n->bridge, err)) < 0)
        return r;

    /* forwarding */
    bool fwd = false;
    if ((r = forwarding_get(&fwd)) < 0)
        return qv_error_set(err, -r, "cannot read %s: %s", FORWARD_PATH, strerror(-r));
    if (!fwd) {
        rec.forwarding_enabled = true;
        if ((r = record_save(n->record, &rec, err)) < 0)
            return r;
        if ((r = forwarding_set(true)) < 0)
            return qv_error_set(err, -r, "cannot enable IP forwarding (%s): %s", FORWARD_PATH, strerror(-r));
    }

    /* the masquerade rule, replaced as a whole */
    if (!rec.table) {
        rec.table = true;
        if ((r = record_save(n->record, &rec, err)) < 0)
            return r;
    }
    const char *subnets[] = {n->subnet};
    _cleanup_free_ char *rules = NULL;
    if ((r = nd_nft_render_nat(subnets, 1, &rules, err)) < 0)
        return r;
    if ((r = nd_nft_apply(rules, err)) < 0) {
        qv_error_prefix(err, "nftables: ");
        return r;
    }
    return record_save(n->record, &rec, err);
}

int nd_nat_ensure(const nd_nat *n, qv_error *err) {
    pthread_mutex_lock(&nat_lock);
    int r = ensure_locked(n, err);
    pthread_mutex_unlock(&nat_lock);
    return r;
}

json_t *nd_nat_status(const nd_nat *n) {
    record rec;
    bool found = false;
    (void)record_load(n->record, &rec, &found);
    nd_link l;
    bool present = nd_link_get(n->bridge, &l, NULL) == 0;
    unsigned len = 0;
    uint32_t net;
    nd_ipv4_cidr_parse(n->subnet, &net, &len);
    char addr[ND_IPV4_CIDR_STRLEN];
    snprintf(addr, sizeof addr, "%s/%u", n->gateway, len);
    bool has = false, fwd = false, table = false;
    if (present)
        (void)nd_addr_has(n->bridge, addr, &has, NULL);
    (void)forwarding_get(&fwd);
    (void)nd_nft_table_exists(&table, NULL);
    json_t *j = json_pack("{s:s, s:b, s:b, s:s, s:b, s:b, s:b}", "bridge", n->bridge, "present", present, "up",
                          present && l.up, "address", addr, "gateway_address", has, "forwarding", fwd, "table", table);
    json_object_set_new(j, "created", found ? created_json(&rec) : json_null());
    return j;
}

static void action(json_t *actions, const char *what, const char *name, const char *fmt, bool dry) {
    if (!actions)
        return;
    char a[128];
    snprintf(a, sizeof a, "%s%s", dry ? "would " : "", fmt);
    json_array_append_new(actions, json_pack("{s:s, s:s, s:s}", "what", what, "name", name, "action", a));
}

int nd_nat_teardown(const nd_nat *n, bool dry_run, json_t **ret_actions, qv_error *err) {
    pthread_mutex_lock(&nat_lock);
    json_t *actions = json_array();
    record rec;
    bool found = false;
    int r = record_load(n->record, &rec, &found);
    if (r < 0) {
        r = qv_error_set(err, -r, "cannot read %s: %s", n->record, strerror(-r));
        goto out;
    }
    if (!found)
        goto out; /* nothing of ours */
    nd_link l;
    bool present = nd_link_get(rec.bridge, &l, NULL) == 0;
    if (present && rec.bridge_created) {
        /* ports on it: something (a VM's TAP) still uses it */
        _cleanup_free_ nd_link *links = NULL;
        size_t nl = 0;
        if ((r = nd_link_list(&links, &nl, err)) < 0)
            goto out;
        for (size_t i = 0; i < nl; i++)
            if (links[i].master == l.index) {
                r = qv_error_set(err, EBUSY, "bridge %s still has port %s; stop the VMs on it first", rec.bridge,
                                 links[i].name);
                goto out;
            }
    }
    if (rec.table) {
        if (!dry_run && (r = nd_nft_table_delete(err)) < 0)
            goto out;
        action(actions, "nftables table", "ip " ND_NFT_TABLE, "deleted", dry_run);
    }
    unsigned len = 0;
    uint32_t net;
    nd_ipv4_cidr_parse(rec.subnet, &net, &len);
    char addr[ND_IPV4_CIDR_STRLEN];
    snprintf(addr, sizeof addr, "%s/%u", rec.gateway, len);
    if (present && rec.bridge_created) {
        if (!dry_run && (r = nd_link_delete(rec.bridge, err)) < 0 && r != -ENODEV)
            goto out;
        action(actions, "bridge", rec.bridge, "deleted", dry_run);
    } else if (present && rec.address_added) {
        if (!dry_run && (r = nd_addr_del(rec.bridge, addr, err)) < 0 && r != -EADDRNOTAVAIL)
            goto out;
        action(actions, "address", addr, "removed", dry_run);
    }
    if (rec.forwarding_enabled) {
        if (!dry_run && (r = forwarding_set(false)) < 0) {
            r = qv_error_set(err, -r, "cannot turn IP forwarding off again: %s", strerror(-r));
            goto out;
        }
        action(actions, "ip forwarding", FORWARD_PATH, "turned off (qvisor had turned it on)", dry_run);
    }
    if (!dry_run && unlink(n->record) < 0 && errno != ENOENT) {
        r = qv_error_set(err, errno, "cannot remove %s: %s", n->record, strerror(errno));
        goto out;
    }
    r = 0;
out:
    pthread_mutex_unlock(&nat_lock);
    if (r == 0 && ret_actions)
        *ret_actions = actions;
    else
        json_decref(actions);
    return r;
}
