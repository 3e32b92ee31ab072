/* The daemon's VMs: one instance directory each under INSTANCES_DIR, loaded
 * at start, changed only through these functions so the files and memory
 * agree.  Every change to disk is crash-safe: a VM being created lives in
 * INSTANCES_DIR/.NAME.creating until it is complete and renamed into place; a
 * VM being removed is renamed to .NAME.removing first.  Leftovers of both are
 * cleaned when the registry loads. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"
#include "run.h"
#include "spec/config.h"
#include "netdev/ip.h"
#include "spec/vmspec.h"
#include "supervisor/vm/layout.h"
#include "supervisor/vm/lifecycle.h"

/* A VM: opaque outside supervisor/vm/ (its fields: vm/vm-record.h), read
 * through the accessors below; only supervisor/vm/ changes one. */
typedef struct sv_vm sv_vm;

const char *sv_vm_name(const sv_vm *vm);
sv_vm_state sv_vm_state_of(const sv_vm *vm);
/* The VM's spec, borrowed: valid while the VM is. */
const sv_vmspec *sv_vm_spec(const sv_vm *vm);
/* DIR/FILE for a file of the VM's instance directory (vm/layout.h). */
int sv_vm_path(const sv_vm *vm, const char *file, char *buf, size_t len);
/* The overlay's virtual size (0 when unknown: the spec's disk applies). */
uint64_t sv_vm_disk_size(const sv_vm *vm);
/* What its disk takes of its storage pool: its virtual size (else the
 * spec's), or the size a resize under way grows it to (vm resize: the
 * growth is claimed from its check on, so that two resizes cannot both fit
 * the same free space). */
uint64_t sv_vm_disk_claim(const sv_vm *vm);
/* While it has a QEMU: its pid and the NUMA node it is bound to (0 and -1
 * otherwise). */
int sv_vm_pid(const sv_vm *vm);
int sv_vm_numa_node(const sv_vm *vm);
/* Whether its guest agent answered last time it was asked (while it runs). */
bool sv_vm_agent_up(const sv_vm *vm);

typedef struct sv_registry sv_registry;

/* Scans the instances directory: loads every VM, finishes interrupted
 * creates (rolled back) and removes (completed).  `cleaned` (may be NULL)
 * counts the leftovers removed.  `config` is where the daemon keeps its
 * current config (a reload swaps it); the registry reads it there, and a
 * create's worker takes its own reference (spec/config.h). */
int sv_registry_load(sv_config *const *config, sv_registry **ret, int *cleaned, qv_error *err);
void sv_registry_free(sv_registry *r);

sv_vm *sv_registry_find(sv_registry *r, const char *name);
/* The VMs in registry order: first, then next until NULL. */
sv_vm *sv_registry_first(sv_registry *r);
sv_vm *sv_registry_next(const sv_vm *vm);
/* VM names using base image `image`, as "a, b" (caller frees); NULL if none. */
char *sv_registry_users_of_image(sv_registry *r, const char *image);

/* Creates a VM asynchronously (qemu-img runs on a worker thread).  The name
 * is reserved at once (state creating); `done` is called exactly once with 0
 * and the VM, still creating in memory until the caller passes it to the
 * engine's sv_vm_created() (on disk it is born stopped), or a negative errno
 * and err filled.  Returns a negative errno
 * (with err) when the request is refused before any work starts: -EEXIST,
 * -ENOENT (no such image), -EINVAL; the spec and the fds are then still the
 * caller's.  Otherwise spec is taken, and so are kernel_fd and initrd_fd
 * (the client's files, checked with sv_vmspec_check_boot(); -1 for none):
 * the worker copies them into the instance directory (SV_VM_KERNEL_FILE,
 * SV_VM_INITRD_FILE, 0640) and the stored spec names those copies, while
 * vm->kernel_source and initrd_source keep the names spec gave. */
typedef void (*sv_registry_done_fn)(int status, sv_vm *vm, const qv_error *err, void *userdata);
int sv_registry_create(sv_registry *r, uv_loop_t *loop, sv_vmspec *spec, int kernel_fd, int initrd_fd,
                       sv_registry_done_fn done, void *userdata, qv_error *err);

/* The VM's disk opened for reading (*ret_fd, O_CLOEXEC): disk.qcow2 of its
 * instance directory, or the file in its storage pool it links to,
 * checked to be the file create made (state.json's disk_dev/disk_ino). */
int sv_vm_disk_open(const sv_vm *vm, int *ret_fd, qv_error *err);

/* vm clone: creates `spec` (a clone's, sv_vmclone_spec() completed and
 * checked as at create) as sv_registry_create() does, but its disk is an
 * overlay on the same base holding what src's disk (io->disk_fd, opened by
 * sv_vm_disk_open; src held by sv_vm_copy_begin) changed over the base,
 * copied by `qemu-img convert -B` with io->progress, and src's kernel and
 * initrd are copied too.  io's fds stay the caller's until done.
 * io->cancel_fd becoming readable before the clone is renamed into place
 * rolls it back (-ECANCELED). */
typedef struct sv_clone_io {
    int disk_fd;
    int cancel_fd;
    qv_run_output_fn progress;
    void *userdata;
} sv_clone_io;
int sv_registry_clone(sv_registry *r, uv_loop_t *loop, const sv_vm *src, sv_vmspec *spec, const sv_clone_io *io,
                      sv_registry_done_fn done, void *userdata, qv_error *err);

/* The VM's state.json in two steps, so that the write can run on another
 * thread: its text as the VM is now but in `state` (caller frees; NULL when
 * out of memory), taken on the loop, and the atomic write of that text into
 * the instance directory `dir` (thread-safe: touches no sv_vm): durable
 * (fsynced: survives a power loss) or only visible (renamed into place: a
 * daemon killed afterwards finds it; QV_ATOMIC_ORDERED). */
char *sv_vm_state_text(const sv_vm *vm, sv_vm_state state, size_t *ret_len);
int sv_vm_state_write(const char *dir, const char *text, size_t len, bool durable, qv_error *err);
/* The same, holding the state.json it replaced in *ret_old (an O_PATH fd,
 * -1 when none; qv_atomic_commit_keep_old): the file is freed when the
 * caller closes that, after it has answered whoever waits. */
int sv_vm_state_write_keep_old(const char *dir, const char *text, size_t len, bool durable, int *ret_old,
                               qv_error *err);
/* A visible write goes into DIR/.state.json.next when that is there
 * (made ahead: creating a file is most of such a write's cost on some
 * file systems; qv_atomic_begin_prepared_at); this makes it again after a
 * write has used it, off the critical path.  It may run beside a write of
 * the same VM: it only ever creates the file, never touches one that is
 * there.  0 or -errno.  Thread-safe. */
int sv_vm_state_prepare(const char *dir);
/* The same for spec.json (vm edit, vm resize): the text of a spec (caller
 * frees; NULL when out of memory), and its atomic, durable replacement of
 * DIR/spec.json (temp file, fsync, rename, directory fsync: a daemon killed
 * or a power lost at any point leaves the old spec or the new one, whole).
 * Thread-safe. */
char *sv_vm_spec_text(const sv_vmspec *spec, size_t *ret_len);
int sv_vm_spec_write(const char *dir, const char *text, size_t len, qv_error *err);
/* Durable writes of several VMs' state.json as one group (a journal
 * commits them together: qv_atomic_commit_group); each its own status and
 * error, as sv_vm_state_write(…, true, …) would give it.  Thread-safe. */
typedef struct sv_vm_state_file {
    const char *dir;
    const char *text;
    size_t len;
    int status;
    qv_error err;
} sv_vm_state_file;
void sv_vm_state_write_group(sv_vm_state_file *f, size_t n);
/* The stop mark (SV_VM_STOP_MARK) of the QEMU vm->run names, in its run
 * directory `run_dir`: written on the loop (a tmpfs: no disk on the way)
 * before a stop of a running or paused VM tells QEMU, so that QEMU is told
 * without waiting for state.json's "stopping".  A VM loaded as running or
 * paused whose mark names its QEMU (pid and start time) was being stopped:
 * sv_vm_stop_mark_apply() makes it "stopping" with the stop's force and
 * timeout, as state.json would have said.  0 or -errno. */
int sv_vm_stop_mark_write(const char *run_dir, const sv_vm *vm);
bool sv_vm_stop_mark_apply(const char *run_dir, sv_vm *vm);
/* Replaces vm->last_exit (NULL clears it). */
void sv_vm_set_last_exit(sv_vm *vm, const char *why);

/* Test builds only: QVISOR_TEST_CRASH_AT=POINT kills the daemon there, to
 * prove that every operation survives a crash at that point.  A no-op in
 * release builds. */
void sv_crash_point(const char *point);

/* {"name", "state", "image", "cpus", "memory", "disk_size", "disk", "pid",
 * "ip", "gpus", "uptime_s", …}: the `vm list` row.  New reference. */
json_t *sv_vm_summary(const sv_vm *vm);
/* The first static address of the VM's NICs (without the prefix length) into
 * ret: true; false when no NIC has one.  What `vm ssh` and `vm start` name
 * when no user-mode NIC forwards a port. */
bool sv_vm_static_ip(const sv_vm *vm, char ret[ND_IPV4_CIDR_STRLEN]);
/* The private key of the pair `vm create --ssh` made (SV_VM_SSH_KEY), read
 * through the instance directory without following a link: *ret (caller
 * frees) for `vm ssh` of a client that may not read the instance directory
 * (the VM's owner; docs/protocol.md, "Who may do what").  -ENOENT (err
 * set) for a VM without one, -EIO when it cannot be read. */
int sv_vm_ssh_key_read(const sv_vm *vm, char **ret, qv_error *err);
/* Everything `vm show` prints: summary + spec + paths + last exit. */
json_t *sv_vm_details(const sv_vm *vm);
