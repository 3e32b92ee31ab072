/* The VM state table: for each state and each request or event, the next
 * state and the action the engine takes (like s6-supervise's
 * actions[state][event]).  Pure (no I/O); the engine consults it before
 * every state change.  docs/lifecycle.md prints it, and
 * test/unit/test-lifecycle.c checks the docs against this table cell by
 * cell, so the daemon and the docs cannot disagree. */
#pragma once

#include <stdbool.h>

typedef enum sv_vm_state {
    SV_VM_CREATING,
    SV_VM_STOPPED,
    SV_VM_STARTING,
    SV_VM_RUNNING,
    SV_VM_PAUSED,
    SV_VM_STOPPING,
    SV_VM_CRASHED,
    SV_VM_REMOVING,
} sv_vm_state;

/* "creating", "stopped", …: the names state.json and the protocol use. */
const char *sv_vm_state_name(sv_vm_state s);
/* The inverse; -1 for a name that is none. */
int sv_vm_state_from_name(const char *name);
/* The states in which the VM has (or is getting) a QEMU process. */
bool sv_vm_state_has_qemu(sv_vm_state s);

typedef enum sv_vm_event {
    SV_EV_START,         /* request: vm start (or a restart policy firing) */
    SV_EV_STARTED,       /* QEMU answered QMP and `cont` succeeded */
    SV_EV_START_FAILED,  /* QEMU exited or timed out before running */
    SV_EV_STOP,          /* request: vm stop (also vm restart, vm rm --force) */
    SV_EV_PAUSED,        /* QMP STOP: the guest is paused (by QEMU or a user) */
    SV_EV_RESUMED,       /* QMP RESUME */
    SV_EV_EXITED,        /* QEMU is gone and it was expected: guest poweroff or our stop */
    SV_EV_CRASHED,       /* QEMU is gone unexpectedly: signal, error exit, guest panic */
    SV_EV_REMOVE,        /* request: vm rm */
    SV_EV_PAUSE,         /* request: vm pause (the move happens when QEMU answers `stop`) */
    SV_EV_RESUME,        /* request: vm resume (the move happens when QEMU answers `cont`) */
    SV_EV_CREATED,       /* create's worker made the instance directory */
    SV_EV_GUEST,         /* request: one command for the guest agent (vm exec, vm cp) */
    SV_EV_SNAPSHOT,      /* request: vm snapshot create or rm (the disk's snapshot table changes) */
    SV_EV_REVERT,        /* request: vm snapshot revert (the disk goes back to a snapshot) */
    SV_EV_EDIT,          /* request: vm edit (a new spec for a VM without a QEMU) */
    SV_EV_RESIZE,        /* request: vm resize --disk (grow the disk, QMP or qemu-img) */
    SV_EV_COPY,          /* request: vm clone or image create --from-vm reads the disk of a VM without a QEMU */
    SV_EV__COUNT,
} sv_vm_event;

/* What the engine does in a cell (docs/lifecycle.md says each in full). */
typedef enum sv_vm_action {
    SV_ACT_NONE,     /* nothing: a refusal, or a request already satisfied */
    SV_ACT_CREATED,  /* the new VM is defined */
    SV_ACT_PREPARE,  /* admission, "starting" saved, the preparation queued */
    SV_ACT_RUN,      /* "running" saved, the agent attached, the start answered */
    SV_ACT_ABANDON,  /* the start failed: cleaned up, answered with the reason */
    SV_ACT_ABORT,    /* a stop during start: the start answered ECANCELED, QEMU quit */
    SV_ACT_SHUTDOWN, /* the stop sequence: agent or ACPI, then quit, SIGTERM, SIGKILL */
    SV_ACT_JOIN,     /* a stop during a stop: it waits for the one in progress (--force escalates) */
    SV_ACT_NOTE,     /* QEMU paused or resumed the guest: recorded */
    SV_ACT_SEND,     /* `stop` or `cont` sent to QEMU; the state moves on its answer */
    SV_ACT_FINISH,   /* QEMU gone during a stop: the stop answered, clean or forced */
    SV_ACT_EXIT,     /* QEMU gone unasked: last exit recorded, restart policy applied */
    SV_ACT_REMOVE,   /* the instance directory renamed away, then deleted */
    SV_ACT_AGENT,    /* the command sent to the guest agent; the state stays */
    SV_ACT_SNAPSHOT, /* qemu-img snapshot on a worker; the VM is busy meanwhile */
    SV_ACT_LIVE_SNAPSHOT, /* QMP snapshot, the guest's filesystems frozen through its agent */
    SV_ACT_REVERT,   /* qemu-img snapshot -a on a worker; the VM is busy meanwhile */
    SV_ACT_EDIT,     /* the new spec checked, spec.json replaced, then swapped in memory */
    SV_ACT_GROW,     /* the disk grown (block_resize with a QEMU, qemu-img resize without), its size recorded */
    SV_ACT_HOLD,     /* the VM held while its disk is copied: no start, no remove until the copy ends */
    SV_ACT__COUNT,
} sv_vm_action;

const char *sv_vm_event_name(sv_vm_event e);
const char *sv_vm_action_name(sv_vm_action a);

/* What `event` does in state `from`:
 *   0          a transition: *ret_to is the new state (may equal `from`) and
 *              *ret_action what the engine does
 *   1          nothing to do, the request is already satisfied (stop of a
 *              stopped VM, pause of a paused one, resume of a running one):
 *              *ret_to = from, *ret_action = SV_ACT_NONE
 *   -EALREADY  start of a VM that is running or paused, revert of one
 *              (exit 73)
 *   -EBUSY     the VM is in the middle of something else (exit 75)
 *   -EHOSTDOWN pause, resume or a guest-agent command of a VM without a
 *              QEMU (stopped, crashed; exit 69, as `vm ssh` of a VM that is
 *              not running)
 *   -EINVAL    the event cannot happen in that state (a daemon bug if it
 *              does: logged, ignored)
 * ret_action may be NULL. */
int sv_vm_transition(sv_vm_state from, sv_vm_event event, sv_vm_state *ret_to, sv_vm_action *ret_action);
/* sv_vm_transition() without the action. */
int sv_vm_next_state(sv_vm_state from, sv_vm_event event, sv_vm_state *ret_to);
