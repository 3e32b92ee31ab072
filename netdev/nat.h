/* The node's NAT network: a bridge with the gateway address, IP forwarding,
 * and the masquerade rule in qvisor's own nftables table.  Set up on demand
 * (the first start of a VM with a nat NIC) and torn down only on request,
 * and then only what qvisor itself created: a record
 * (STATE_DIR/net/nat.json) says which of bridge, address and forwarding
 * were there before.  Each step is recorded before it is taken, so a crash
 * in between leaves a record that claims at most a step that did not
 * happen, which teardown tolerates. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "error.h"

typedef struct nd_nat {
    const char *bridge;  /* "qvbr0" */
    const char *subnet;  /* "192.168.100.0/24", normalised */
    const char *gateway; /* "192.168.100.1": the bridge's address */
    const char *record;  /* path of the record file */
} nd_nat;

/* Makes the NAT network exist as configured (idempotent, thread-safe).
 * Refuses (-EBUSY) when the record describes another bridge, subnet or
 * gateway: the old one must be torn down first. */
int nd_nat_ensure(const nd_nat *n, qv_error *err);

/* What exists now, for `net list`: {"bridge", "present", "up", "address",
 * "gateway_address": bool, "forwarding": bool, "table": bool, "created":
 * {"bridge", "address", "forwarding", "table"} from the record}.  New
 * reference. */
json_t *nd_nat_status(const nd_nat *n);

/* Undoes what the record says qvisor created (table, address, bridge,
 * forwarding), newest first, then removes the record.  Ports still on the
 * bridge (TAPs of running VMs) make it -EBUSY; the caller checks VMs first.
 * *ret_actions (may be NULL): [{"what", "name", "action"}]; with dry_run
 * nothing changes and actions say "would …". */
int nd_nat_teardown(const nd_nat *n, bool dry_run, json_t **ret_actions, qv_error *err);
