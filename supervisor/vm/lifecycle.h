/* The VM state table: which request or event moves a VM from which state to
 * which.  Pure (no I/O); the engine (supervisor/vm/engine.c) consults it before every change and
 * docs/lifecycle.md prints it.  One table, so the daemon, the docs and the
 * tests cannot disagree. */
#pragma once

#include "supervisor/vm/registry.h"

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
    SV_EV__COUNT,
} sv_vm_event;

const char *sv_vm_event_name(sv_vm_event e);

/* What `event` does in state `from`:
 *   0          a transition: *ret_to is the new state (may equal `from`)
 *   1          nothing to do, the request is already satisfied (stop of a
 *              stopped VM, pause of a paused one, resume of a running one):
 *              *ret_to = from
 *   -EALREADY  start of a VM that is running or paused (exit 73)
 *   -EBUSY     the VM is in the middle of something else (exit 75)
 *   -EHOSTDOWN pause or resume of a VM without a QEMU (stopped, crashed;
 *              exit 69, as `vm ssh` of a VM that is not running)
 *   -EINVAL    the event cannot happen in that state (a daemon bug if it
 *              does: logged, ignored)
 * The table lives in lifecycle.c and in docs/lifecycle.md. */
int sv_vm_next_state(sv_vm_state from, sv_vm_event event, sv_vm_state *ret_to);
