/* TAP devices the daemon opens itself and hands to QEMU as an fd. */
#pragma once

#include <stdbool.h>

#include "error.h"

/* Opens /dev/net/tun and attaches a TAP named `name` (≤ 15 characters)
 * with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR.  The TAP is not persistent: the
 * kernel removes it when the last fd closes (QEMU's, once ours is closed
 * after the spawn), so a QEMU that dies takes its TAP with it.  The fd is
 * O_CLOEXEC.  Only a new TAP is made (IFF_TUN_EXCL): -EBUSY when any link
 * of that name exists, be it a TAP open elsewhere, a persistent leftover
 * (never adopted: it would outlive the VM) or a link of another kind;
 * -EINVAL for a name nd_ifname_valid() refuses, -ENOENT without
 * /dev/net/tun. */
int nd_tap_open(const char *name, int *ret_fd, qv_error *err);

/* Opens /dev/vhost-net for one NIC (QEMU's vhostfd=), O_CLOEXEC.
 * -ENOENT when the host has no vhost-net. */
int nd_vhost_open(int *ret_fd, qv_error *err);
