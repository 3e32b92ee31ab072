/* A VM's NICs in the daemon: completing them at create (MACs unique on the
 * node, nat addresses allocated), setting up their TAPs at start, removing
 * them after, and `qvisor net list`/`net teardown`.  The NIC rules
 * themselves are in netdev/.
 *
 * Address allocation lives in the VM specs: a nat NIC's `ip=` is written
 * into the spec at create, and the spec is saved durably before the create
 * answers, so the set of allocated addresses is exactly the set in the
 * registry — across daemon restarts, and released by `vm rm` with the
 * spec.  There is no second ledger to drift from it. */
#pragma once

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>

#include "error.h"
#include "netdev/nat.h"
#include "netdev/nic.h"
#include "spec/config.h"
#include "supervisor/vm/registry.h"
#include "spec/vmspec.h"

/* The NICs of a spec: its nets, or (none given) one user NIC with the MAC
 * VMs had before NIC lists existed. */
int sv_net_nics(const sv_vmspec *spec, nd_nic ret[ND_NICS_MAX], size_t *ret_n, qv_error *err);

/* At create, on the loop thread: rewrites spec->nets in canonical form with
 * every MAC (derived, unique among the node's VMs), nat address (given and
 * free, or the lowest free one) and bridge (network.overlay_bridge when
 * not named) filled in.  Refusals: EINVAL (bad values), EBUSY (a MAC or
 * address another VM has), QV_ECAPACITY (the subnet is full). */
int sv_net_prepare_spec(sv_registry *r, const sv_config *c, sv_vmspec *spec, qv_error *err);
/* The same, at vm edit: a NIC that gets a derived MAC gets none of the
 * n_avoid MACs of `avoid` either (the VM's NICs before the edit: a new NIC
 * is a new MAC to the guest and to DHCP servers). */
int sv_net_prepare_spec_avoiding(sv_registry *r, const sv_config *c, sv_vmspec *spec, const nd_nic *avoid,
                                 size_t n_avoid, qv_error *err);

/* The fds a start hands to QEMU, per NIC index; -1 where none. */
typedef struct sv_net_fds {
    int tap[ND_NICS_MAX];
    int vhost[ND_NICS_MAX];
} sv_net_fds;
void sv_net_fds_init(sv_net_fds *f);
void sv_net_fds_close(sv_net_fds *f);
/* Closes the vhost fds only (a TCG guest cannot use vhost-net). */
void sv_net_fds_drop_vhost(sv_net_fds *f);

/* Before QEMU runs (any thread): sets up the NAT network when a nat NIC
 * needs it, opens each TAP, puts it on its bridge (with its VLAN), brings it
 * up, and opens /dev/vhost-net per TAP when there is one.  On failure
 * everything opened is closed again (a closed TAP disappears). */
int sv_net_setup(const sv_config *c, const sv_vmspec *spec, sv_net_fds *ret, qv_error *err);
/* After QEMU ended: deletes any TAP of the VM that outlived it.  Returns the
 * number deleted (normally 0: the kernel removes a TAP with its last fd). */
int sv_net_remove_taps(const sv_vmspec *spec);

/* The NAT network as configured; `record` holds its record path. */
void sv_net_nat(const sv_config *c, nd_nat *ret, char record[PATH_MAX]);

/* `qvisor net list`: {"networks": [...]} with bridges, allocations and free
 * addresses.  New reference. */
json_t *sv_net_list_json(sv_registry *r, const sv_config *c);
