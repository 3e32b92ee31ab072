/* Where a VM's files are: every path under the instances directory and the
 * run directory, in one place.  Nothing else spells these names.
 *
 *   INSTANCES_DIR/NAME/              the instance directory (vm->dir)
 *       spec.json state.json         what the VM is, what it is doing
 *       .state.json.spare            the durable writes' spare (store.c)
 *       .state.json.next             the next visible write's file, made ahead (store.c)
 *       disk.qcow2                   its disk (or a link into a storage pool)
 *       seed.iso efivars.fd          cloud-init seed, UEFI variable store
 *       kernel initrd                copies of a direct kernel boot's files
 *       qemu.log serial.log[.1]      QEMU's stderr, the guest's serial port
 *       ssh/id_ed25519{,.pub}        the key pair `--ssh` generates
 *       known_hosts                  the guest's host keys, as `vm ssh` saw them
 *       snapshots.json               what qvisor knows of the disk's snapshots
       copy-in.<16 hex>             a copy into the guest under way (guestcopy.c)
 *   INSTANCES_DIR/.NAME.creating     a create in progress (renamed into place)
 *   INSTANCES_DIR/.NAME.removing     a remove in progress
 *   RUN_DIR/vm/NAME/                 the run directory (gone with QEMU)
 *       qmp.sock qga.sock console.sock qemu.pid
 *       fsfreeze                     a snapshot froze the guest (snapshot.c)
 *
 * Functions return 0, or -ENAMETOOLONG when the path does not fit. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spec/config.h"

/* In the instance directory. */
#define SV_VM_SPEC_FILE "spec.json"
#define SV_VM_STATE_FILE "state.json"
#define SV_VM_STATE_SPARE ".state.json.spare" /* the durable writes' spare (qv_atomic_begin_spare_at) */
#define SV_VM_STATE_NEXT ".state.json.next"   /* the next visible write's file, made ahead (qv_atomic_prepare_at) */
#define SV_VM_DISK_FILE "disk.qcow2"
#define SV_VM_SEED_FILE "seed.iso"
#define SV_VM_VARS_FILE "efivars.fd"
#define SV_VM_KERNEL_FILE "kernel"
#define SV_VM_INITRD_FILE "initrd"
#define SV_VM_QEMU_LOG "qemu.log"
#define SV_VM_SERIAL_LOG "serial.log"
#define SV_VM_SERIAL_LOG_OLD "serial.log.1" /* the previous start's */
#define SV_VM_SSH_DIR "ssh"
#define SV_VM_SSH_KEY "ssh/id_ed25519" /* the public key is SV_VM_SSH_KEY ".pub" */
#define SV_VM_KNOWN_HOSTS "known_hosts" /* `qvisor vm ssh`'s, for the guest's host keys */
#define SV_VM_SNAPSHOTS_FILE "snapshots.json" /* qvisor's records of the disk's snapshots (snapshot.c) */

/* A copy into the guest (vm cp, guestcopy.c) is about to create its
 * temporary file there: this prefix and the 16 hex digits of that file's
 * name, holding its guest path (written durably before guest-file-open),
 * removed once the file was renamed or removed.  A mark a killed daemon left
 * (or one whose `rm` could not run, the VM being down) is acted on when the
 * daemon re-adopts the VM and whenever its agent comes up: `rm -f` of that
 * path through the agent, then the mark goes. */
#define SV_VM_COPY_MARK_PREFIX "copy-in."
/* The longest guest path a copy takes (PATH_MAX in the guest). */
#define SV_GUEST_PATH_MAX 4096u

/* In the run directory. */
#define SV_VM_QMP_SOCK "qmp.sock"
#define SV_VM_QGA_SOCK "qga.sock"
#define SV_VM_CONSOLE_SOCK "console.sock"
#define SV_VM_PIDFILE "qemu.pid"
/* A stop of a running or paused VM, written (on this tmpfs, at once) before
 * QEMU is told; state.json's "stopping" follows on a worker.  A daemon
 * that dies in between finds it (sv_vm_stop_mark_read). */
#define SV_VM_STOP_MARK "stopping"
/* A live snapshot is about to freeze the guest's filesystems through its
 * agent: written before guest-fsfreeze-freeze is sent, removed once the
 * agent says they are thawed.  A daemon that finds it when it re-adopts
 * that QEMU thaws the guest (the agent keeps it frozen until told). */
#define SV_VM_FSFREEZE_MARK "fsfreeze"

/* Suffixes of an instance directory's temporary names. */
#define SV_VM_CREATING_SUFFIX ".creating"
#define SV_VM_REMOVING_SUFFIX ".removing"

/* INSTANCES_DIR/NAME. */
int sv_layout_instance_dir(const sv_config *c, const char *vm_name, char *buf, size_t len);
/* DIR/FILE: a file of the instance directory dir (vm->dir). */
int sv_layout_instance_file(const char *dir, const char *file, char *buf, size_t len);
/* ".NAME.creating" or ".NAME.removing" (the name in INSTANCES_DIR). */
int sv_layout_leftover(const char *vm_name, bool creating, char *buf, size_t len);
/* The VM name of a leftover entry of INSTANCES_DIR, ".NAME.creating" or
 * ".NAME.removing" with NAME valid: true, and *ret_creating says which. */
bool sv_layout_leftover_name(const char *entry, char ret[64], bool *ret_creating);

/* "copy-in.<id as 16 hex digits>": the mark of a copy into the guest. */
int sv_layout_copy_mark(uint64_t id, char *buf, size_t len);
/* Whether entry (a name in the instance directory) is such a mark. */
bool sv_layout_copy_mark_entry(const char *entry);
/* The guest's temporary file of a copy to `target` (absolute, not ending
 * in '/'): "DIR/.BASE.qvisor-<id as 16 hex digits>". */
int sv_layout_guest_tmp(const char *target, uint64_t id, char *buf, size_t len);
/* A mark's content, read back: the daemon removes that path in the guest,
 * so whatever is there is checked as if hostile.  One guest path of at most
 * SV_GUEST_PATH_MAX bytes, optionally followed by one newline: absolute, no
 * NUL or other control byte, its last component ".X.qvisor-<16 lowercase
 * hex>" with X non-empty.  0 with the path in ret (NUL-terminated), or
 * -EINVAL (-ENAMETOOLONG when ret is too small). */
int sv_layout_copy_mark_parse(const char *text, size_t len, char *ret, size_t ret_len);

/* RUN_DIR/vm: where every VM's run directory is. */
int sv_layout_run_root(const sv_config *c, char *buf, size_t len);
/* RUN_DIR/vm/NAME/FILE, or RUN_DIR/vm/NAME when file is NULL. */
int sv_layout_run_path(const sv_config *c, const char *vm_name, const char *file, char *buf, size_t len);
/* The VM name a -pidfile argument names (RUN_DIR/vm/NAME/qemu.pid, NAME
 * valid): true; false for any other path. */
bool sv_layout_pidfile_vm(const sv_config *c, const char *pidfile, char ret[64]);
