/* A VM's cloud-init seed: INSTANCE_DIR/seed.iso, written from the VM spec
 * and the node config, and the SSH key pair `--ssh` asks for.  Both are
 * blocking (files, fsync, ssh-keygen): call them on a worker thread.
 *
 * The seed's content (hence its instance-id, a hash of every file in it) is
 * a function of the spec, the generated public key and the node's DNS
 * servers; INSTANCE_DIR/seed.id records the instance-id of the seed.iso
 * next to it, so an unchanged VM keeps the very same file and any change
 * gives a new seed (and makes cloud-init run again in the guest). */
#pragma once

#include <stdbool.h>

#include "error.h"
#include "spec/config.h"
#include "spec/vmspec.h"
#include "supervisor/vm/layout.h"

/* The seed's identity in the instance directory (the others: layout.h). */
#define SV_SEED_ID "seed.id"

/* Writes INSTANCE_DIR/seed.iso from the VM spec and the node config when
 * its content differs from what is there (or it is missing); atomic and
 * durable (a reader sees the old or the whole new seed, also after a host
 * crash).  *ret_changed (may be NULL) tells whether it was (re)written.
 * With spec->seed false: removes a stale seed.iso (then *ret_changed is
 * true) and returns 0.
 *
 * Content: meta-data (instance-id, local-hostname = spec->hostname or the
 * VM name); user-data: spec->user_data verbatim, else #cloud-config with
 * the host name and spec->user holding spec->ssh_keys plus, with
 * spec->ssh_generate, INSTANCE_DIR/ssh/id_ed25519.pub (when user_data is
 * given and there are keys, that generated cloud-config goes to vendor-data
 * instead, which cloud-init applies under the user's user-data);
 * network-config: spec->network_config verbatim, else one entry per NIC
 * (sv_net_nics) matched by its MAC: DHCP for user NICs and bridge NICs
 * without an address, the static address, prefix and gateway for nat NICs
 * (from network.nat_subnet and nat_gateway) and bridge NICs with ip=; the
 * node's network.dns servers on each.  The
 * image timestamp is SOURCE_DATE_EPOCH when set, else the current time
 * (it only matters when the content changed: an unchanged seed is not
 * rewritten).
 *
 * Errors (err set): -ENOENT the generated public key is missing, -EINVAL
 * invalid content or SOURCE_DATE_EPOCH, other negative errnos from I/O. */
int sv_seed_prepare(const sv_vmspec *spec, const sv_config *node, const char *instance_dir, bool *ret_changed,
                    qv_error *err);

/* Generates the ed25519 key pair INSTANCE_DIR/ssh/id_ed25519{,.pub}
 * (`ssh-keygen -q -t ed25519 -N "" -C qvisor-NAME`), private key 0600 in a
 * 0700 directory, both fsync'd.  A complete pair that exists already is
 * kept.  -EOPNOTSUPP when ssh-keygen is not installed (openssh-client). */
int sv_seed_ssh_keygen(const char *vm_name, const char *instance_dir, qv_error *err);
