/* The VM lifecycle engine: starts QEMU processes, watches them, stops them,
 * notices when they die, applies restart policies and re-adopts running VMs
 * after a daemon restart.  Everything runs on the daemon's libuv loop;
 * blocking work (probes, seed ISOs) runs on worker threads.  The state table
 * is supervisor/vm/lifecycle.h; docs/lifecycle.md tells the whole story. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "error.h"
#include "spec/config.h"
#include "host/qemucaps.h"
#include "supervisor/vm/registry.h"

typedef struct sv_vmctl sv_vmctl;

/* `config` points at the daemon's config pointer, so a reload is seen at
 * once.  The QEMU binary is probed (accelerator, sandbox) on a worker thread
 * at the first start, and again when qemu.binary or the accelerator mode
 * changes; starts wait for it. */
int sv_vmctl_new(uv_loop_t *loop, sv_registry *registry, sv_config *const *config, sv_vmctl **ret, qv_error *err);

/* Where the engine reports what happens to VMs (docs/events.md): an event
 * of `type` ("state", "start", "stop", "restart", "agent", "ip", "gpu",
 * "admission", "qemu", "snapshot") of VM `vm` with `fields` (an object, reference
 * stolen).  Without a sink the events are dropped. */
typedef void (*sv_vm_emit_fn)(const char *type, const char *vm, json_t *fields, void *userdata);
void sv_vmctl_set_emit(sv_vmctl *c, sv_vm_emit_fn fn, void *userdata);
/* What this node's QEMU can do, for checks at create (a named cpu_model):
 * done gets 0, the probe's caps (borrowed, valid during the call) and
 * whether VMs run under KVM (the configured accelerator resolved as a start
 * would), or a negative errno with err (QEMU cannot be run, accelerator kvm
 * without a working KVM, ECANCELED when the daemon stops first).  Called at
 * once when the cached probe is current, else after the probe. */
typedef void (*sv_vmctl_caps_fn)(int status, const sv_qemu_caps *caps, bool kvm, const qv_error *err,
                                 void *userdata);
void sv_vmctl_with_caps(sv_vmctl *c, sv_vmctl_caps_fn done, void *userdata);

/* Takes over every VM the previous daemon left running, starting or stopping
 * (identity checked; a pid that fails the check is never signalled) and
 * finishes or rolls back their operations.  Call once, after sv_vmctl_new. */
void sv_vmctl_adopt_all(sv_vmctl *c);

/* Devices on vfio-pci that no running VM needs: recorded ones go back to
 * their driver (kept ones only when their VM is gone; stuck ones are tried
 * again); unrecorded ones are left alone.  done (may be NULL) gets
 * [{address, vm, action, detail}] (borrowed) when every give-back ended;
 * NULL on ENOMEM.  With dry_run nothing is changed. */
void sv_vmctl_release_devices(sv_vmctl *c, bool dry_run, void (*done)(json_t *items, void *userdata),
                              void *userdata);
/* The same, without a report (daemon start, after `vm rm`). */
void sv_vmctl_release_orphans(sv_vmctl *c);
/* Daemon shutdown: pending requests fail with ECANCELED, every handle is
 * closed, VMs keep running (the next daemon adopts them).  Frees `c` once
 * the loop has closed the handles. */
void sv_vmctl_shutdown(sv_vmctl *c);

/* Completion of a start, stop or restart: status 0 with a result object
 * (borrowed), or a negative errno with err. */
typedef void (*sv_vm_done_fn)(int status, json_t *result, const qv_error *err, void *userdata);

/* Starts a stopped or crashed VM.  Returns a negative errno with err when
 * refused at once (-EALREADY running, -EBUSY in another operation, ...);
 * otherwise `done` runs exactly once, when QEMU runs the guest (status 0)
 * or the start failed (QEMU's own error output in the message). */
int sv_vm_start(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err);

typedef struct sv_stop_options {
    bool force;          /* skip the graceful step: QMP quit, then signals */
    uint64_t timeout_ms; /* graceful timeout; 0: the VM's stop_timeout, scaled */
} sv_stop_options;

/* Stops a VM (see docs/lifecycle.md for the escalation).  `done` gets
 * {"result": "clean"|"forced"|"already-stopped", "how": …, "seconds": …}
 * once QEMU is gone and cleaned up.  A stop of a starting VM aborts the
 * start; a second stop joins the first (and can make it forced). */
int sv_vm_stop(sv_vmctl *c, sv_vm *vm, const sv_stop_options *o, sv_vm_done_fn done, void *userdata,
               qv_error *err);

/* Pause (QMP stop) or resume (QMP cont) the guest of a running or paused
 * VM.  Returns 1 when there is nothing to do (pause of a paused VM, resume
 * of a running one), a negative errno with err when refused (-EHOSTDOWN no
 * QEMU: stopped or crashed; -EBUSY starting, stopping, being created or
 * removed; -EIO no monitor connection); otherwise 0, and `done` gets
 * {"name", "state", "result": "paused"|"resumed"} once QEMU answered (the
 * VM is then in its new state), or EIO when QEMU refused. */
int sv_vm_pause(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err);
int sv_vm_resume(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err);

/* Stop (if running) then start; `done` gets {"stop": …, "start": …}. */
int sv_vm_restart(sv_vmctl *c, sv_vm *vm, const sv_stop_options *o, sv_vm_done_fn done, void *userdata,
                  qv_error *err);

/* The serial console (docs/console.md).  Connects to the console socket of
 * the VM's QEMU and reserves the console for the client uid/pid: -EHOSTDOWN
 * no QEMU, -EBUSY another client holds it (the message names it),
 * -EOPNOTSUPP a QEMU started without a console socket.  On success
 * *ret_qemu_fd is the connection (non-blocking); it goes to
 * sv_vm_console_attach() once the client's connection is handed over. */
int sv_vm_console_open(sv_vmctl *c, sv_vm *vm, uid_t uid, pid_t pid, int *ret_qemu_fd, qv_error *err);
/* Relays between client_fd and qemu_fd (both taken; client_fd -1: the
 * client went away, the reservation is released) until the client detaches
 * or the VM stops (end frame {"reason": "stopped"}), or the daemon stops
 * ({"reason": "daemon"}). */
void sv_vm_console_attach(sv_vmctl *c, const char *vm_name, int client_fd, int qemu_fd);

/* Create's work is done (sv_registry_create's callback): the VM moves
 * from creating to stopped through the table (event created). */
void sv_vm_created(sv_vmctl *c, sv_vm *vm);

/* vm rm: a stopped or crashed VM and its files (docs/lifecycle.md, the
 * action `remove`).  0: under way, `done` called once the VM is gone from
 * the registry (its name free again), or with the error when its directory
 * could not be renamed away (nothing changed then); negative errno with err:
 * refused (EBUSY: the VM is not stopped; the VM pointer stays valid). */
int sv_vm_remove(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err);

/* One command for the guest agent of a running VM (vm exec, vm cp;
 * docs/guest.md), on the engine's own agent connection, through the state
 * table (event `guest`): -EHOSTDOWN with err when the VM has no QEMU, no
 * agent (spec), or an agent channel that is not connected, -EBUSY while
 * paused, starting or stopping.  `args` are the agent command's arguments
 * (borrowed), built and bounded by the caller.  Otherwise 0, and `done`
 * gets, once the agent answered, the reply checked (qmp/qga.h: a hostile
 * guest's answer) and in the protocol's shape:
 *   EXEC         {"pid"}
 *   EXEC_STATUS  {"exited", "exitcode", "signal" (null when none), "stdout",
 *                "stderr" (base64, "" when none), "stdout_truncated",
 *                "stderr_truncated"}
 *   FILE_OPEN    {"handle"}
 *   FILE_READ    {"data" (base64), "count", "eof"}; `limit` is the count asked
 *   FILE_WRITE   {"count"}; `limit` is the number of bytes sent
 *   FILE_CLOSE   {}
 * or an error: -EHOSTDOWN (no answer within timeout_ms, or the channel
 * closed: the VM stopped), -EIO (the agent refused: its message), -EPROTO
 * (a reply that is not what the command answers, or no JSON). */
/* The most a file read or write moves in one command (a request line holds
 * its base64: the CLI sizes its chunks to daemon.max_request_size). */
#define SV_GUEST_CHUNK_MAX (4u << 20)
typedef enum sv_guest_cmd {
    SV_GUEST_EXEC,
    SV_GUEST_EXEC_STATUS,
    SV_GUEST_FILE_OPEN,
    SV_GUEST_FILE_READ,
    SV_GUEST_FILE_WRITE,
    SV_GUEST_FILE_CLOSE,
} sv_guest_cmd;
int sv_vm_guest(sv_vmctl *c, sv_vm *vm, sv_guest_cmd cmd, json_t *args, size_t limit, uint64_t timeout_ms,
                sv_vm_done_fn done, void *userdata, qv_error *err);

/* vm cp into a guest (docs/guest.md, "vm cp"): the whole copy as one
 * operation of the engine, through the state table as event `guest` (the
 * same refusals as sv_vm_guest).  0: under way, the fd taken (read on
 * libuv's workers), `done` called once with {"target", "bytes"} or the
 * error: EEXIST (the target exists, no force), ENOTDIR, EISDIR (a
 * directory and no filename), EHOSTDOWN, EIO, EPROTO as for sv_vm_guest,
 * ECANCELED (gone() said so, or the daemon stops).  Whatever the end, no
 * partial file is left: the temporary file is removed, now or, when the
 * agent cannot be reached, when it next answers (layout.h's mark).
 * Negative errno with err: refused, nothing done, the fd still the
 * caller's. */
typedef struct sv_vm_copy_args {
    int fd;               /* in: the source, a regular file the client opened; out: the target */
    uint64_t size;        /* its size (fstat), for percentages */
    const char *path;     /* absolute in the guest: the file, or a directory it goes into */
    const char *filename; /* the file's name in a directory `path`; may be NULL */
    bool force;           /* replace an existing target */
    unsigned mode;        /* the file's permission bits */
    /* with the call's userdata; either may be NULL */
    void (*progress)(uint64_t bytes, uint64_t total, void *userdata); /* after each chunk */
    bool (*gone)(void *userdata); /* asked between steps: true stops the copy (the client went away) */
} sv_vm_copy_args;
int sv_vm_copy_in(sv_vmctl *c, sv_vm *vm, const sv_vm_copy_args *a, sv_vm_done_fn done, void *userdata,
                  qv_error *err);
/* vm cp out of a guest: the guest file `path` read in chunks and written to
 * a->fd (a regular file the client made and opened for writing; written at
 * its offsets from 0, on libuv's workers), as sv_vm_copy_in's operation;
 * `done` gets {"bytes"}; progress has no total (0: the agent has no stat).
 * Errors as sv_vm_copy_in's (the agent's refusal to open: EIO, with its
 * message).  The client removes its file on failure. */
int sv_vm_copy_out(sv_vmctl *c, sv_vm *vm, const sv_vm_copy_args *a, sv_vm_done_fn done, void *userdata,
                   qv_error *err);

/* vm edit: replaces the spec of a stopped or crashed VM with `spec` (made
 * by sv_vmspec_edit()), checked as create checks a spec (GPUs another VM
 * holds, MACs and nat addresses, admission: every defined VM counts, this
 * one with its new spec only).  0: under way, spec taken, `done` called
 * once spec.json is replaced (atomically, durably) and the VM has the new
 * spec in memory (result NULL), or with the error (the old spec stays).
 * Negative errno with err: refused, spec still the caller's (EBUSY: not
 * stopped or crashed, or an edit or resize in progress; the check's
 * EBUSY, QV_ECAPACITY, EINVAL, ENOENT). */
int sv_vm_edit(sv_vmctl *c, sv_vm *vm, sv_vmspec *spec, sv_vm_done_fn done, void *userdata, qv_error *err);

/* vm resize --disk: grows the disk to `size` bytes (relative: by `size`),
 * with QMP block_resize while it has a QEMU (running or paused), else
 * qemu-img resize; then records the size in its spec and state.json.
 * Refused (negative errno with err): EINVAL a smaller size or more than
 * 64 TiB, QV_ECAPACITY its storage pool has no room for the extra bytes,
 * EBUSY starting, stopping, being created, removed, edited or resized,
 * EIO no monitor connection.  Otherwise `done` gets {"name", "disk_size",
 * "previous_size", "how": "block_resize"|"qemu-img resize"|"unchanged"},
 * or EIO when QEMU or qemu-img refused. */
int sv_vm_resize(sv_vmctl *c, sv_vm *vm, uint64_t size, bool relative, sv_vm_done_fn done, void *userdata,
                 qv_error *err);

/* Asks the guest agent of every running VM for its addresses (at most
 * `timeout_ms` each, all at once) unless asked within the last few seconds,
 * then calls done.  Never fails: a silent agent is shown as "no answer". */
void sv_vmctl_refresh_agents(sv_vmctl *c, uint64_t timeout_ms, void (*done)(void *userdata), void *userdata);

/* Runtime facts for `vm show`: socket paths, accelerator, monitor and
 * agent connection (new reference). */
json_t *sv_vm_runtime_json(sv_vmctl *c, const sv_vm *vm);

/* The graceful and kill timeouts of a stop, scaled for big guests (pure;
 * unit-tested): graceful = override, else the VM's stop_timeout plus 5 s per
 * 16 GiB of RAM; kill = the node's kill_timeout plus 1 s per 16 GiB. */
void sv_stop_timeouts(const sv_vmspec *spec, const sv_config *c, uint64_t override_ms, uint64_t *ret_graceful_ms,
                      uint64_t *ret_kill_ms);
/* Automatic restart delay after `restarts` restarts in a row: 1 s, 2 s, 4 s
 * ... capped at 60 s (pure). */
uint64_t sv_restart_backoff_ms(uint64_t restarts);

/* vm clone, image create --from-vm (docs/lifecycle.md, "Clone and image
 * from a VM"): the copy of a VM's disk, judged by the table as the event
 * `copy`: 0 when the VM is stopped or crashed, and then held (a start or a
 * remove is refused with -EBUSY) until sv_vm_copy_end(), once per begin;
 * -EBUSY (err) with a QEMU or in another operation. */
int sv_vm_copy_begin(sv_vmctl *c, sv_vm *vm, qv_error *err);
void sv_vm_copy_end(sv_vmctl *c, sv_vm *vm);
