/* The state table (see lifecycle.h and docs/lifecycle.md). */
#include "supervisor/vm/lifecycle.h"

#include "cleanup.h"

#include <errno.h>

/* Codes in the table: a state (its enum value), or one of these. */
#define NOOP (-1)  /* already satisfied */
#define ALRD (-2)  /* -EALREADY */
#define BUSY (-3)  /* -EBUSY */
#define NONE (-4)  /* -EINVAL: cannot happen */
#define DOWN (-5)  /* -EHOSTDOWN: needs a QEMU, the VM has none */

#define CREA SV_VM_CREATING
#define STOP SV_VM_STOPPED
#define STRT SV_VM_STARTING
#define RUN SV_VM_RUNNING
#define PAUS SV_VM_PAUSED
#define STPG SV_VM_STOPPING
#define CRSH SV_VM_CRASHED
#define REMV SV_VM_REMOVING

/* rows: states in enum order; columns: events in enum order */
static const int table[][SV_EV__COUNT] = {
    /*             START STARTED FAILED STOP  PAUSED RESUMED EXITED CRASHED REMOVE PAUSE RESUME */
    [CREA] = {BUSY, NONE, NONE, BUSY, NONE, NONE, NONE, NONE, BUSY, BUSY, BUSY},
    [STOP] = {STRT, NONE, NONE, NOOP, NONE, NONE, NONE, NONE, REMV, DOWN, DOWN},
    [STRT] = {BUSY, RUN, STOP, STPG, STRT, STRT, STOP, STOP, BUSY, BUSY, BUSY},
    [RUN] = {ALRD, NONE, NONE, STPG, PAUS, RUN, STOP, CRSH, BUSY, PAUS, NOOP},
    [PAUS] = {ALRD, NONE, NONE, STPG, PAUS, RUN, STOP, CRSH, BUSY, NOOP, RUN},
    [STPG] = {BUSY, NONE, NONE, STPG, STPG, STPG, STOP, STOP, BUSY, BUSY, BUSY},
    [CRSH] = {STRT, NONE, NONE, NOOP, NONE, NONE, NONE, NONE, REMV, DOWN, DOWN},
    [REMV] = {BUSY, NONE, NONE, BUSY, NONE, NONE, NONE, NONE, BUSY, BUSY, BUSY},
};

static const char *const event_names[] = {
    [SV_EV_START] = "start",     [SV_EV_STARTED] = "started", [SV_EV_START_FAILED] = "start-failed",
    [SV_EV_STOP] = "stop",       [SV_EV_PAUSED] = "paused",   [SV_EV_RESUMED] = "resumed",
    [SV_EV_EXITED] = "exited",   [SV_EV_CRASHED] = "crashed", [SV_EV_REMOVE] = "remove",
    [SV_EV_PAUSE] = "pause",     [SV_EV_RESUME] = "resume",
};

const char *sv_vm_event_name(sv_vm_event e) {
    return (unsigned)e < QV_ARRAY_SIZE(event_names) ? event_names[e] : "unknown";
}

int sv_vm_next_state(sv_vm_state from, sv_vm_event event, sv_vm_state *ret_to) {
    if ((unsigned)from >= QV_ARRAY_SIZE(table) || (unsigned)event >= SV_EV__COUNT)
        return -EINVAL;
    int v = table[from][event];
    switch (v) {
    case NOOP:
        *ret_to = from;
        return 1;
    case ALRD:
        return -EALREADY;
    case BUSY:
        return -EBUSY;
    case DOWN:
        return -EHOSTDOWN;
    case NONE:
        return -EINVAL;
    default:
        *ret_to = (sv_vm_state)v;
        return 0;
    }
}
