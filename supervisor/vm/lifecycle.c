/* The state table (see lifecycle.h and docs/lifecycle.md). */
#include "supervisor/vm/lifecycle.h"

#include "cleanup.h"

#include <errno.h>
#include <string.h>

/* A cell: the next state and the action, or one of these in `to`. */
#define NOOP (-1) /* already satisfied */
#define ALRD (-2) /* -EALREADY */
#define BUSY (-3) /* -EBUSY */
#define NONE (-4) /* -EINVAL: cannot happen (written __) */
#define DOWN (-5) /* -EHOSTDOWN: needs a QEMU, the VM has none */

typedef struct cell {
    signed char to; /* an sv_vm_state, or one of the codes above */
    unsigned char action;
} cell;

#define C(state, act) {(signed char)(state), (unsigned char)(SV_ACT_##act)}
#define R(code) {(signed char)(code), SV_ACT_NONE}
#define __ R(NONE)

#define CREA SV_VM_CREATING
#define STOP SV_VM_STOPPED
#define STRT SV_VM_STARTING
#define RUN SV_VM_RUNNING
#define PAUS SV_VM_PAUSED
#define STPG SV_VM_STOPPING
#define CRSH SV_VM_CRASHED
#define REMV SV_VM_REMOVING

/* rows: states in enum order; columns: events in enum order */
static const cell table[][SV_EV__COUNT] = {
    /*          START             STARTED       START_FAILED      STOP              PAUSED          RESUMED         EXITED            CRASHED           REMOVE            PAUSE           RESUME          CREATED           GUEST             SNAPSHOT                REVERT            EDIT              RESIZE            COPY */
    [CREA] = {R(BUSY),          __,           __,               R(BUSY),          __,             __,             __,               __,               R(BUSY),          R(BUSY),        R(BUSY),        C(STOP, CREATED), R(BUSY),          R(BUSY),                R(BUSY),          R(BUSY),          R(BUSY), R(BUSY)},
    [STOP] = {C(STRT, PREPARE), __,           __,               R(NOOP),          __,             __,             __,               __,               C(REMV, REMOVE),  R(DOWN),        R(DOWN),        __,               R(DOWN),          C(STOP, SNAPSHOT),      C(STOP, REVERT),  C(STOP, EDIT),    C(STOP, GROW), C(STOP, HOLD)},
    [STRT] = {R(BUSY),          C(RUN, RUN),  C(STOP, ABANDON), C(STPG, ABORT),   C(STRT, NOTE),  C(STRT, NOTE),  C(STOP, ABANDON), C(STOP, ABANDON), R(BUSY),          R(BUSY),        R(BUSY),        __,               R(BUSY),          R(BUSY),                R(BUSY),          R(BUSY),          R(BUSY), R(BUSY)},
    [RUN] =  {R(ALRD),          __,           __,               C(STPG, SHUTDOWN), C(PAUS, NOTE),  C(RUN, NOTE),   C(STOP, EXIT),    C(CRSH, EXIT),    R(BUSY),          C(PAUS, SEND),  R(NOOP),        __,               C(RUN, AGENT),    C(RUN, LIVE_SNAPSHOT),  R(ALRD),          R(BUSY),          C(RUN, GROW), R(BUSY)},
    [PAUS] = {R(ALRD),          __,           __,               C(STPG, SHUTDOWN), C(PAUS, NOTE),  C(RUN, NOTE),   C(STOP, EXIT),    C(CRSH, EXIT),    R(BUSY),          R(NOOP),        C(RUN, SEND),   __,               R(BUSY),          C(PAUS, LIVE_SNAPSHOT), R(ALRD),          R(BUSY),          C(PAUS, GROW), R(BUSY)},
    [STPG] = {R(BUSY),          __,           __,               C(STPG, JOIN),    C(STPG, NOTE),  C(STPG, NOTE),  C(STOP, FINISH),  C(STOP, FINISH),  R(BUSY),          R(BUSY),        R(BUSY),        __,               R(BUSY),          R(BUSY),                R(BUSY),          R(BUSY),          R(BUSY), R(BUSY)},
    [CRSH] = {C(STRT, PREPARE), __,           __,               R(NOOP),          __,             __,             __,               __,               C(REMV, REMOVE),  R(DOWN),        R(DOWN),        __,               R(DOWN),          C(CRSH, SNAPSHOT),      C(CRSH, REVERT),  C(CRSH, EDIT),    C(CRSH, GROW), C(CRSH, HOLD)},
    [REMV] = {R(BUSY),          __,           __,               R(BUSY),          __,             __,             __,               __,               R(BUSY),          R(BUSY),        R(BUSY),        __,               R(BUSY),          R(BUSY),                R(BUSY),          R(BUSY),          R(BUSY), R(BUSY)},
};

static const char *const state_names[] = {
    [SV_VM_CREATING] = "creating", [SV_VM_STOPPED] = "stopped",   [SV_VM_STARTING] = "starting",
    [SV_VM_RUNNING] = "running",   [SV_VM_PAUSED] = "paused",     [SV_VM_STOPPING] = "stopping",
    [SV_VM_CRASHED] = "crashed",   [SV_VM_REMOVING] = "removing",
};

const char *sv_vm_state_name(sv_vm_state s) {
    return (unsigned)s < QV_ARRAY_SIZE(state_names) ? state_names[s] : "unknown";
}

int sv_vm_state_from_name(const char *n) {
    for (size_t i = 0; i < QV_ARRAY_SIZE(state_names); i++)
        if (n && strcmp(state_names[i], n) == 0)
            return (int)i;
    return -1;
}

bool sv_vm_state_has_qemu(sv_vm_state s) {
    return s == SV_VM_STARTING || s == SV_VM_RUNNING || s == SV_VM_PAUSED || s == SV_VM_STOPPING;
}

static const char *const event_names[] = {
    [SV_EV_START] = "start",     [SV_EV_STARTED] = "started", [SV_EV_START_FAILED] = "start-failed",
    [SV_EV_STOP] = "stop",       [SV_EV_PAUSED] = "paused",   [SV_EV_RESUMED] = "resumed",
    [SV_EV_EXITED] = "exited",   [SV_EV_CRASHED] = "crashed", [SV_EV_REMOVE] = "remove",
    [SV_EV_PAUSE] = "pause",     [SV_EV_RESUME] = "resume",   [SV_EV_CREATED] = "created",
    [SV_EV_GUEST] = "guest",     [SV_EV_EDIT] = "edit",       [SV_EV_RESIZE] = "resize",
    [SV_EV_SNAPSHOT] = "snapshot", [SV_EV_REVERT] = "revert",
    [SV_EV_COPY] = "copy",
};

static const char *const action_names[] = {
    [SV_ACT_NONE] = "none",         [SV_ACT_CREATED] = "created", [SV_ACT_PREPARE] = "prepare",
    [SV_ACT_RUN] = "run",           [SV_ACT_ABANDON] = "abandon", [SV_ACT_ABORT] = "abort",
    [SV_ACT_SHUTDOWN] = "shutdown", [SV_ACT_JOIN] = "join",       [SV_ACT_NOTE] = "note",
    [SV_ACT_SEND] = "send",         [SV_ACT_FINISH] = "finish",   [SV_ACT_EXIT] = "exit",
    [SV_ACT_REMOVE] = "remove",     [SV_ACT_AGENT] = "agent",
    [SV_ACT_SNAPSHOT] = "snapshot", [SV_ACT_LIVE_SNAPSHOT] = "live-snapshot",
    [SV_ACT_REVERT] = "revert",     [SV_ACT_EDIT] = "edit",       [SV_ACT_GROW] = "grow",
    [SV_ACT_HOLD] = "hold",
};

const char *sv_vm_event_name(sv_vm_event e) {
    return (unsigned)e < QV_ARRAY_SIZE(event_names) ? event_names[e] : "unknown";
}

const char *sv_vm_action_name(sv_vm_action a) {
    return (unsigned)a < QV_ARRAY_SIZE(action_names) ? action_names[a] : "unknown";
}

int sv_vm_transition(sv_vm_state from, sv_vm_event event, sv_vm_state *ret_to, sv_vm_action *ret_action) {
    if ((unsigned)from >= QV_ARRAY_SIZE(table) || (unsigned)event >= SV_EV__COUNT)
        return -EINVAL;
    const cell *c = &table[from][event];
    int to = c->to;
    switch (to) {
    case NOOP:
        *ret_to = from;
        if (ret_action)
            *ret_action = SV_ACT_NONE;
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
        *ret_to = (sv_vm_state)to;
        if (ret_action)
            *ret_action = (sv_vm_action)c->action;
        return 0;
    }
}

int sv_vm_next_state(sv_vm_state from, sv_vm_event event, sv_vm_state *ret_to) {
    return sv_vm_transition(from, event, ret_to, NULL);
}
