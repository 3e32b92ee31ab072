/* `qvisor cleanup`: what crashes can leave behind, found and removed.
 *
 *  - QEMU processes that claim to be ours (their -pidfile lies in
 *    RUN_DIR/vm/NAME/ and their -name is guest=NAME) but belong to no VM the
 *    daemon supervises: SIGTERM through a pidfd, SIGKILL after kill_timeout;
 *  - temp directories of interrupted creates and removes
 *    (INSTANCES/.NAME.creating, .NAME.removing) and partial image imports
 *    (IMAGES/.NAME.qcow2.partial) that no process has open;
 *  - run directories (sockets, pidfile) of VMs without a QEMU;
 *  - TAPs named like ours (netdev/nic.h) that belong to no VM with a QEMU.
 *
 * sv_sweep_run() blocks (it waits for killed processes): the daemon runs
 * it on a worker thread, with the facts it needs copied in. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "error.h"
#include "spec/config.h"

/* What the daemon supervises right now. */
typedef struct sv_sweep_vm {
    char name[64];
    pid_t pid;   /* its QEMU, 0 when none */
    bool busy;   /* creating or removing: its temp directory is in use */
} sv_sweep_vm;

/* Returns 0 and *ret = {"actions": [{"what", "path"|"pid", "action"}...]};
 * with dry_run nothing is changed and actions say "would …". */
int sv_sweep_run(const sv_config *c, const sv_sweep_vm *vms, size_t n_vms, bool dry_run, json_t **ret,
                   qv_error *err);
