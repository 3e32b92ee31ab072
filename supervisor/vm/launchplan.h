/* A VM's launch plan: everything a start decides before QEMU is spawned,
 * as a pure function of its input (no I/O): which descriptor QEMU gets at
 * which number, the resource limits, the command line and what qemu.log
 * says about them.  launch.c opens the files and sockets, fills the input
 * with what it has, makes the plan and executes it (sv_proc_spawn with the
 * descriptors the plan's slots name).  test/unit/test-launchplan.c pins
 * plans with golden files, as test-vmspec does the argv alone. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "netdev/nic.h"
#include "spec/vmspec.h"
#include "supervisor/vm/qemuargv.h"

/* What a descriptor QEMU inherits is. */
typedef enum sv_plan_fd {
    SV_PLAN_QMP,     /* the listening monitor socket (always fd 3) */
    SV_PLAN_QGA,     /* the listening guest-agent socket */
    SV_PLAN_CONSOLE, /* the listening serial-console socket */
    SV_PLAN_TAP,     /* a NIC's TAP (slot.nic says which) */
    SV_PLAN_VHOST,   /* a NIC's /dev/vhost-net */
    /* the VM's files, in this order (sv_launch_input.file) */
    SV_PLAN_DISK,
    SV_PLAN_BASE,
    SV_PLAN_SEED,
    SV_PLAN_FW_CODE,
    SV_PLAN_FW_VARS,
    SV_PLAN_SERIAL,
    SV_PLAN_KERNEL,
    SV_PLAN_INITRD,
} sv_plan_fd;

#define SV_PLAN_FILES (SV_PLAN_INITRD - SV_PLAN_DISK + 1)
#define SV_PLAN_MAX_FDS (3 + 2 * ND_NICS_MAX + SV_PLAN_FILES)

typedef struct sv_launch_input {
    const sv_vmspec *spec;
    sv_qemu_env env;            /* binary, resolved accelerator, sandbox, user */
    /* paths of the VM (supervisor/vm/layout.h); seed_iso NULL without a
     * seed, firmware_vars NULL for bios */
    const char *disk, *serial_log, *pidfile, *seed_iso, *firmware_vars;
    bool qga;                   /* an agent socket is passed */
    bool tap[ND_NICS_MAX];      /* per NIC index: a TAP is passed */
    bool vhost[ND_NICS_MAX];    /* … and a vhost-net descriptor */
    bool file[SV_PLAN_FILES];   /* which of the VM's files are open (SV_PLAN_DISK + i) */
    int ssh_port;               /* 0: no forward */
    bool numa_bind;
    unsigned numa_node;
    const sv_hostdev *hostdevs; /* passed-through PCI functions */
    size_t n_hostdevs;
} sv_launch_input;

/* QEMU's descriptor 3 + i is slots[i]. */
typedef struct sv_plan_slot {
    sv_plan_fd what;
    unsigned nic; /* SV_PLAN_TAP, SV_PLAN_VHOST: the NIC index */
} sv_plan_slot;

typedef struct sv_launch_plan {
    sv_plan_slot slots[SV_PLAN_MAX_FDS];
    size_t n_slots;
    uint64_t memlock; /* RLIMIT_MEMLOCK for QEMU, bytes; 0: inherited */
    char **argv;      /* owned */
} sv_launch_plan;

/* Makes the plan: descriptors numbered 3 (monitor), then the agent, then
 * the console, then TAP and vhost-net in NIC order, then the VM's files in
 * SV_PLAN_DISK order; RLIMIT_MEMLOCK guest RAM + 1 GiB when a PCI function
 * is passed through (VFIO pins all guest memory); the argv from
 * sv_qemu_argv().  0, or sv_qemu_argv()'s errors; *ret is set only on
 * success. */
int sv_launch_plan_make(const sv_launch_input *in, sv_launch_plan *ret, qv_error *err);
void sv_launch_plan_clear(sv_launch_plan *p);

/* The descriptor number QEMU sees for `what` (and NIC `nic`), 0 when the
 * plan passes none. */
int sv_launch_plan_fd(const sv_launch_plan *p, sv_plan_fd what, unsigned nic);
const char *sv_plan_fd_name(sv_plan_fd what);

/* What qemu.log says before QEMU's own output, after its "starting" line:
 * the limits, then the command line (one line).  Malloc'd. */
char *sv_launch_plan_log(const sv_launch_plan *p);
