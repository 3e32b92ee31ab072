/* The VM lifecycle engine's private header: what the files of the engine
 * (engine.c, requests.c, start.c, caps.c, launch.c, monitor.c, stop.c,
 * exit.c, adopt.c, remove.c, orphans.c, edit.c) share.  Not for anything outside
 * supervisor/vm/.  See vm.h for the engine's API and docs/lifecycle.md.
 *
 * One `vmrt` per VM holds what the engine knows beyond the registry: the
 * pidfd watch of the current QEMU, the monitor and agent connections, the
 * timers of the operation in progress and the requests waiting for it.
 * The authority on "QEMU is gone" is the pidfd (the process really exited),
 * never the monitor: cleanup runs from there, exactly once per process. */
#pragma once

#include "supervisor/vm/vm.h"
#include "supervisor/vm/vm-record.h"

#include "qv-build.h"

#include "cleanup.h"
#include "sysroot.h"
#include "fileio.h"
#include "log.h"
#include "util.h"
#include "qmp/qga.h"
#include "qmp/qmp.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/lifecycle.h"
#include "supervisor/vm/proc.h"
#include "supervisor/vm/launchplan.h"
#include "supervisor/vm/qemuargv.h"
#include "supervisor/vm/nics.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/resources/placement.h"
#include "supervisor/vm/console.h"
#include "frame.h"
#include "host/firmware.h"
#include "host/qemucaps.h"
#include "supervisor/resources/resources.h"
#include "supervisor/vm/seed.h"
#include "supervisor/vm/serlog.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define START_TIMEOUT_MS 60000u  /* QEMU up and `cont` answered */
#define CAPS_RETRY_MS 10000u     /* a failed probe of an unchanged binary is repeated at most this often */
#define QMP_CMD_TIMEOUT_MS 10000u
#define AGENT_PING_MS 3000u      /* Proxmox's: an agent slower than this is not used for shutdown */
#define ACPI_REPEAT_MS 5000u     /* a power button pressed before the guest listened is lost: press again */
#define AGENT_FALLBACK_MS 15000u /* an agent shutdown that has not taken by then gets ACPI too */
#define KILL_GRACE_MS 5000u      /* after SIGKILL: how often to complain while it lingers */
#define AGENT_FRESH_MS 2000u     /* agent answers younger than this are reused by `vm list` */
#define RESTART_RESET_S 60       /* a VM that ran this long has its restart counter reset */
#define PERSIST_COALESCE_MS 1000u /* pause/resume: state.json written at most this often */
#define PERSIST_RETRY_MS 5000u    /* a state that could not be saved: tried again this often */
#define PAUSE_LOG_BURST 10u       /* pause/resume changes logged one by one per window… */
#define PAUSE_LOG_WINDOW_MS 10000u /* …then counted, and the count logged at the window's end */

typedef struct waiter {
    sv_vm_done_fn done;
    void *userdata;
    struct waiter *next;
} waiter;

typedef enum stop_stage {
    STAGE_NONE,
    STAGE_GRACEFUL, /* agent guest-shutdown or ACPI, waiting for the guest */
    STAGE_QUIT,     /* QMP quit sent */
    STAGE_TERM,     /* SIGTERM sent */
    STAGE_KILL,     /* SIGKILL sent */
} stop_stage;

typedef struct watch watch;
typedef struct vmrt vmrt;

/* A state.json write is durable (status 0), or failed (negative errno, err
 * filled; it is retried): see vm__save. */
typedef void (*vm_saved_fn)(vmrt *rt, int status, const qv_error *err, void *userdata);

typedef struct save_waiter {
    vm_saved_fn fn;
    void *userdata;
    struct save_waiter *next;
} save_waiter;

typedef struct save_job save_job; /* engine.c: one write on a worker thread */
typedef struct save_group save_group; /* engine.c: durable writes on a worker together */
typedef struct prep_job prep_job; /* start.c: a start's preparation on a worker thread */
typedef struct snap_op snap_op;   /* snapshot.c: a snapshot operation, or a thaw after re-adoption */
typedef struct gcopy gcopy;       /* guestcopy.c: a copy into the guest, or the cleanup of marks left behind */

/* sv_vmctl_with_caps() calls waiting for a probe */
typedef struct caps_waiter {
    sv_vmctl_caps_fn done;
    void *userdata;
    struct caps_waiter *next;
} caps_waiter;

/* Work a visible write of state.json leaves for after its answer
 * (engine.c, after_write_later). */
typedef struct state_after_write {
    int old_fd; /* the file it replaced, held; -1: none */
    char *dir;  /* the instance directory whose next write's file is made ahead; NULL: none */
    vmrt *rt;   /* whose directory (a reference; rt->after_pending counts it); NULL with dir */
} state_after_write;

struct sv_vmctl {
    uv_loop_t *loop;
    sv_registry *registry;
    sv_config *const *config;
    vmrt *rts;
    unsigned refs;      /* open handles and queued work; freed at 0 once shut down */
    bool shutting_down;
    /* what the QEMU binary can do (probed once per binary and accelerator mode) */
    enum { CAPS_NONE, CAPS_PROBING, CAPS_DONE } caps_state;
    sv_qemu_caps caps;
    int caps_status;
    qv_error caps_err;
    char *caps_binary;
    bool caps_want_kvm;
    uint64_t caps_done_ms;      /* when the last probe ended (uv_now) */
    sv_qemu_binary_stamp caps_stamp;   /* the binary as that probe found it */
    bool accel_warned;
    caps_waiter *caps_waiters;
    unsigned save_groups;   /* groups of durable writes on workers (engine.c) */
    unsigned copy_io;       /* copies reading or writing a client's file on a worker (guestcopy.c) */
    gcopy *copy_io_queue;   /* copies waiting for that lane */
    save_job *save_next;    /* durable writes waiting for the next group */
    state_after_write *after_writes; /* the work visible writes leave for later (engine.c, after_write_later) */
    size_t n_after_writes, cap_after_writes;
    bool after_writing;     /* a worker is doing a batch of it */
    sv_vm_emit_fn emit;  /* the event sink (sv_vmctl_set_emit) */
    void *emit_userdata;
};

struct watch {
    uv_poll_t poll;
    int pidfd;
    pid_t pid;
    vmrt *rt;
};

struct vmrt {
    sv_vmctl *c;
    sv_vm *vm;             /* NULL once forgotten */
    vmrt *next;
    uv_timer_t timer;      /* start timeout, stop stages, restart backoff */
    uv_timer_t acpi_timer; /* ACPI repeats during a graceful stop */
    uv_timer_t persist_timer; /* a coalesced or retried write of state.json */
    int refs;
    /* state.json (vm__save, vm__persist, vm__persist_soon): written on a
     * worker, at most one write in flight per VM, the newest snapshot
     * waiting behind it (an older one waiting is replaced) */
    bool persist_due;      /* the state in memory is newer than any snapshot taken */
    bool persist_failing;  /* the last write failed (logged once per streak) */
    uint64_t persist_last_ms;
    char *state_dir;       /* the instance directory (a copy: writes outlive rt->vm) */
    save_job *save_inflight;      /* the write on a worker, NULL when none */
    char *save_text;              /* the snapshot waiting for it, NULL when none */
    size_t save_len;
    const char *save_state;       /* its state's name (static) */
    bool save_durable;            /* …and whether it is to be fsynced */
    save_waiter *save_waiters;    /* called once it (or a newer one) is durable */
    unsigned after_pending;       /* files made ahead in state_dir not yet done (engine.c, after_write_later) */
    save_waiter *after_waiters;   /* called once none is (vm__writes_done_then) */
    int start_old_fds[4];         /* files a start's writes replaced, freed once it is over (engine.c, keep_for_start) */
    unsigned n_start_old;
    /* pause/resume changes logged in this window, and those only counted */
    uint64_t pause_window_ms;
    unsigned pause_logged, pause_unlogged;
    watch *watch;          /* the current QEMU, NULL when none */
    bool our_child;        /* spawned by this daemon (waitid gives its status) */
    qmp_conn *qmp;
    qga_conn *qga;
    bool paused;           /* QEMU says the guest is paused (QMP STOP) */
    unsigned pause_ops;    /* our stop/cont commands QEMU has not answered yet */
    bool pause_target;     /* where the last of them leads: paused (stop) or running (cont) */
    bool status_pending;   /* re-adopted: query-status asked, not answered yet */
    bool stop_waits_status; /* a graceful stop waits for that answer (paused or not) */
    /* start */
    waiter *start_waiters;
    bool starting_prep;    /* prep or probe in flight, QEMU not spawned yet */
    prep_job *prep_next;   /* made by vm__check_prepare for vm__act_prepare */
    bool waiting_caps;
    bool cont_sent;
    bool pid_saved;        /* this QEMU's pid is durable: `cont` may go */
    bool cont_waits_save;  /* the monitor is ready for `cont`, the pid not durable yet */
    bool stop_waits_save;  /* a stop request waits for `stopping` to be durable */
    bool stop_save_force;  /* …and is forced */
    uintptr_t stop_seq;    /* stop requests so far: which one a "stopping" write was for */
    bool stop_marked;      /* this stop is in the run directory's stop mark (SV_VM_STOP_MARK) */
    bool policy_start;     /* started by the restart policy, not by a user */
    uint64_t start_begin_ms; /* when this start was asked for (qv_now_ms) */
    sv_start_placement place; /* this start's NUMA node and CPUs (decided before it began) */
    off_t log_offset;      /* where this QEMU's output starts in qemu.log */
    /* stop */
    waiter *stop_waiters;
    stop_stage stage;
    const char *how;       /* the step that ended it */
    uint64_t stop_begin_ms;
    char *stop_reason;     /* set when the daemon itself stops the VM (why) */
    bool monitor_failed;   /* stop_reason is a monitor failure during start */
    int fail_code;         /* errno a start killed by vm__start_fail_code fails with */
    /* seen from this QEMU */
    bool shutdown_seen, shutdown_guest, panicked;
    char shutdown_reason[32];
    /* agent */
    uint64_t agent_checked_ms;
    bool agent_busy;
    int agent_port;        /* the guest's end of the agent's port (VSERPORT_CHANGE): 1 open, 0 closed
                            * (an agent cannot answer: `vm list` does not ask it), -1 not known */
    /* GPU passthrough */
    vfio_plan pt_plan;     /* bound for this start: what goes on QEMU's command line */
    bool pt_ready;         /* the plan's devices are on vfio-pci */
    bool pt_busy;          /* a take or give-back is in flight */
    void (*after_release)(vmrt *rt);
    char *gone_how;        /* vm__handle_gone, waiting for the give-back */
    pid_t gone_pid;
    int abandon_code;      /* vm__start_abandon, waiting for the give-back */
    char *abandon_why;
    /* vm edit / vm resize (edit.c): what holds the VM's spec or disk (an
     * edit's spec write, a resize from its start to its spec write), for the
     * door's EBUSY; NULL when nothing does */
    const char *held;
    uint64_t grow_to;      /* grow's check: the disk's new size, for the action */
    /* vm clone, image create --from-vm (clone.c): copies of the disk under
     * way; while there are any, the door refuses what would start, remove
     * or change the VM (held_refuses) */
    unsigned copies;
    /* NICs: TAP and vhost-net fds from the prep until QEMU has its copies */
    sv_net_fds net;
    /* serial console: one client at a time (docs/console.md) */
    bool console_held;     /* answered to a client: reserved, or relaying */
    sv_relay *console;     /* the relay once the client's connection came */
    uid_t console_uid;
    pid_t console_pid;
    time_t console_since;
    sv_serial_cap *serial_cap; /* keeps serial.log bounded while QEMU runs */
    /* disk snapshots (snapshot.c): the operation in flight, NULL when none */
    snap_op *snap;
    /* copies into the guest (guestcopy.c) under way, and whether the marks
     * of copies that did not end are being acted on */
    gcopy *gcopies;
    bool copy_recovering;
};


static inline const sv_config *cfg(const sv_vmctl *c) {
    return *c->config;
}

/* ---- engine.c ---- */

bool vm__guest_paused(const vmrt *rt);
void vm__ctl_unref(sv_vmctl *c);
void vm__save(vmrt *rt, vm_saved_fn fn, void *userdata);
void vm__save_as(vmrt *rt, sv_vm_state state, vm_saved_fn fn, void *userdata);
void vm__save_durable(vmrt *rt, vm_saved_fn fn, void *userdata);
void vm__saved_then(vmrt *rt, vm_saved_fn fn, void *userdata);
/* vm__saved_then, and then also until no worker makes a file in the
 * VM's directory any more (vm rm: the directory goes next). */
void vm__writes_done_then(vmrt *rt, vm_saved_fn fn, void *userdata);
void vm__persist(vmrt *rt);
void vm__persist_soon(vmrt *rt);
/* Reports an event of this VM (fields: reference stolen; NULL: none). */
void vm__emit(vmrt *rt, const char *type, json_t *fields);
void vm__save_drop(vmrt *rt);
void vm__forget(vmrt *rt);
void vm__undo_state(vmrt *rt, sv_vm_state back, const char *why);

/* ---- the engine's door ----
 *
 * A stage reports what happened by posting an event; the engine looks the
 * cell up in the table (lifecycle.c), moves the VM to the cell's state and
 * runs the cell's action (vm__actions[], engine.c).  What the event brings
 * travels in a vm_event_arg (NULL: nothing). */
typedef struct vm_event_arg {
    /* requests (start, stop, pause, resume): who gets the answer, and where
     * a refusal is explained (vm__event fills it) */
    sv_vm_done_fn done;
    void *userdata;
    qv_error *err;
    bool policy;       /* prepare: the restart policy starts it, not a user */
    bool pause;        /* send: `stop` (pause) or `cont` (resume) */
    int code;          /* abandon: the failed start's errno */
    const char *why;   /* abandon, exit: the reason; finish: the last exit */
    const char *how;   /* finish: the step that ended the stop */
    bool clean;        /* finish: the guest shut down by itself */
    double secs;       /* finish: how long the stop took */
    bool before_qemu;  /* finish: the stop came before QEMU existed */
    bool restart;      /* exit: the restart policy starts it again */
    bool force;        /* shutdown, abort, join: vm stop --force */
    uint64_t timeout_ms; /* shutdown: vm stop --timeout (0: the VM's); agent: the command's */
    const struct guest_call *call; /* agent: the command for the guest agent (guest.c) */
    gcopy *copy;       /* agent: instead, a copy into the guest (guestcopy.c; taken by the action) */
    snap_op *snap;     /* snapshot, live-snapshot, revert: the operation (taken by the action) */
    sv_vmspec *spec;   /* edit: the new spec (the action takes it; a refusal leaves it the caller's) */
    uint64_t size;     /* grow: the size asked for, or what to add when relative */
    bool relative;     /* grow: vm resize --disk +SIZE */
} vm_event_arg;

/* A request is judged against the table with the VM where it is; a cell
 * whose action has a check (vm__check_*) may still refuse it then
 * (admission, a monitor that is not there, GPUs still being given back),
 * and nothing has changed.  Then the VM moves and the action runs; `send`
 * leaves it where it is (QEMU's answer moves it: the cell names where).
 * Returns 0 (the action ran), 1 (already satisfied: nothing done), or a
 * negative errno: the table's refusal (-EALREADY, -EBUSY, -EHOSTDOWN; a
 * daemon bug, -EINVAL, is logged) or the check's, explained in arg->err
 * when there is one. */
int vm__event(vmrt *rt, sv_vm_event ev, const vm_event_arg *arg);

/* The checks and actions the engine runs from the table. */
int vm__check_prepare(vmrt *rt, const vm_event_arg *a);                   /* start.c */
int vm__check_stop(vmrt *rt, const vm_event_arg *a);                      /* stop.c */
int vm__check_send(vmrt *rt, const vm_event_arg *a);                      /* stop.c */
void vm__act_prepare(vmrt *rt, sv_vm_state from, const vm_event_arg *a); /* start.c */
void vm__act_run(vmrt *rt, sv_vm_state from, const vm_event_arg *a);     /* start.c */
void vm__act_abandon(vmrt *rt, sv_vm_state from, const vm_event_arg *a); /* start.c */
void vm__act_note(vmrt *rt, sv_vm_state from, const vm_event_arg *a);    /* monitor.c */
void vm__act_finish(vmrt *rt, sv_vm_state from, const vm_event_arg *a);  /* exit.c */
void vm__act_exit(vmrt *rt, sv_vm_state from, const vm_event_arg *a);    /* exit.c */
void vm__act_shutdown(vmrt *rt, sv_vm_state from, const vm_event_arg *a); /* stop.c */
void vm__act_abort(vmrt *rt, sv_vm_state from, const vm_event_arg *a);    /* stop.c */
void vm__act_join(vmrt *rt, sv_vm_state from, const vm_event_arg *a);     /* stop.c */
void vm__act_send(vmrt *rt, sv_vm_state from, const vm_event_arg *a);     /* stop.c */
void vm__act_remove(vmrt *rt, sv_vm_state from, const vm_event_arg *a);   /* remove.c */
int vm__check_agent(vmrt *rt, const vm_event_arg *a);                     /* guest.c */
void vm__act_agent(vmrt *rt, sv_vm_state from, const vm_event_arg *a);    /* guest.c */
int vm__check_snapshot(vmrt *rt, const vm_event_arg *a);                  /* snapshot.c */
int vm__check_live_snapshot(vmrt *rt, const vm_event_arg *a);             /* snapshot.c */
void vm__act_snapshot(vmrt *rt, sv_vm_state from, const vm_event_arg *a); /* snapshot.c */
void vm__act_live_snapshot(vmrt *rt, sv_vm_state from, const vm_event_arg *a); /* snapshot.c */
int vm__check_edit(vmrt *rt, const vm_event_arg *a);                      /* edit.c */
int vm__check_grow(vmrt *rt, const vm_event_arg *a);                      /* edit.c */
void vm__act_edit(vmrt *rt, sv_vm_state from, const vm_event_arg *a);     /* edit.c */
void vm__act_grow(vmrt *rt, sv_vm_state from, const vm_event_arg *a);     /* edit.c */
void vm__act_hold(vmrt *rt, sv_vm_state from, const vm_event_arg *a);     /* clone.c */
/* Whether a copy of the VM's disk (rt->copies) refuses this action. */
bool vm__held_refuses(const vmrt *rt, sv_vm_action act);                  /* clone.c */
void vm__add_waiter(waiter **list, sv_vm_done_fn done, void *userdata);
void vm__complete(waiter **list, int status, json_t *result, const qv_error *err);
void vm__fail_waiters(waiter **list, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void vm__rt_unref(vmrt *rt);
vmrt *vm__get_rt(sv_vmctl *c, sv_vm *vm);
void vm__serial_cap_start(vmrt *rt);
void vm__run_path(const vmrt *rt, const char *file, char *buf, size_t len);
void vm__remove_run_files(const vmrt *rt);
int vm__pick_port(sv_vmctl *c);
void vm__log_tail(const vmrt *rt, off_t offset, char *buf, size_t len);
const char *vm__signal_name(int sig);

/* ---- start.c ---- */

void vm__started(vmrt *rt);
void vm__on_start_timeout(uv_timer_t *t);
bool vm__has_gpus(const sv_vm *vm);
void vm__release_devices(vmrt *rt, void (*then)(vmrt *rt));
void vm__start_abandon(vmrt *rt, int code, const char *why);
void vm__maybe_launch(vmrt *rt);

/* ---- requests.c: the requests, turned into events ---- */

int vm__begin_start(sv_vmctl *c, sv_vm *vm, bool policy, sv_vm_done_fn done, void *userdata, qv_error *err);
/* A request's way in (requests.c): refused while the daemon stops, then
 * the event through the door with arg (arg->err set by the caller). */
int vm__request(sv_vmctl *c, sv_vm *vm, sv_vm_event ev, const vm_event_arg *arg);

/* ---- caps.c ---- */

void vm__caps_deliver(sv_vmctl *c, sv_vmctl_caps_fn done, void *userdata);
bool vm__caps_current(sv_vmctl *c);

/* ---- launch.c ---- */

void vm__launch(vmrt *rt);

/* ---- monitor.c ---- */

void vm__note_paused(vmrt *rt, bool paused);
void vm__start_fail_code(vmrt *rt, int code, const char *why);
void vm__start_fail_kill(vmrt *rt, const char *why);
int vm__qmp_attach(vmrt *rt);
void vm__send_cont(vmrt *rt);
void vm__agent_attach(vmrt *rt);
/* The agent's status ("ok", "no answer", …; NULL: no QEMU): an "agent"
 * event when it comes up or goes down. */
void vm__set_agent(vmrt *rt, const char *status);
void vm__detach_channels(vmrt *rt);
void vm__console_end(vmrt *rt, json_t *end);

/* ---- stop.c ---- */

void vm__stage_quit(vmrt *rt);
void vm__stop_first_step(vmrt *rt, bool force);
void vm__begin_stop_sequence(vmrt *rt, bool force);

/* ---- snapshot.c ---- */

/* A snapshot operation makes the VM busy for what would change its disk
 * under it: a start, a remove, another snapshot; and a stop that is not
 * forced while a live snapshot may hold the guest frozen.  0, or -EBUSY
 * with err. */
int vm__snapshot_idle(vmrt *rt, bool stop, bool force, qv_error *err);
/* Re-adoption of a running or paused QEMU: a freeze mark naming it means
 * its guest may still be frozen; it is thawed through the agent. */
void vm__snapshot_adopted(vmrt *rt);
/* The runtime is let go (daemon stop, VM removed): an operation waiting
 * for a timer ends now. */
void vm__snapshot_release(vmrt *rt);

/* ---- guest.c ---- */

/* An agent command's reply status as an outcome: 0, or a negative errno
 * with err (EHOSTDOWN no answer or channel closed, EIO the agent refused,
 * EPROTO no JSON); the VM's agent status follows (up, or no answer). */
int vm__agent_outcome(vmrt *rt, int status, const char *command, const qmp_error *e, uint64_t timeout_ms,
                      qv_error *err);
/* A command's deadline: an agent not known to be up gets a ping's time. */
uint64_t vm__agent_timeout(const vmrt *rt, uint64_t timeout_ms);

/* ---- guestcopy.c ---- */

/* The action `agent` of a copy: the operation begins (op taken). */
void vm__guest_copy_run(vmrt *rt, gcopy *op);
/* The agent is up (re-adoption, or it answered a ping): the marks of copies
 * that did not end are acted on (the temporary files removed in the guest,
 * then the marks).  A no-op when there are none or it is under way. */
void vm__guest_copy_recover(vmrt *rt);
/* The runtime is let go: an operation waiting for a timer ends now. */
void vm__guest_copy_release(vmrt *rt);

/* ---- exit.c ---- */

void vm__watch_close(vmrt *rt);
int vm__watch_start(vmrt *rt, pid_t pid, int pidfd);
void vm__handle_gone(vmrt *rt, const char *how_exited);
void vm__schedule_restart(vmrt *rt);
