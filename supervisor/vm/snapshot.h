/* Disk snapshots of a VM (docs/snapshots.md): internal qcow2 snapshots of
 * its own disk.qcow2, made through QMP while QEMU runs (the guest's
 * filesystems frozen through its agent when it answers) and through
 * qemu-img on a worker while it does not.  Every request goes through the
 * state table (events snapshot and revert).
 *
 * The list comes from the image itself (qemu-img info, or QMP query-block
 * while QEMU runs); what only qvisor knows (whether the guest was frozen,
 * the disk's size then) is kept in INSTANCES_DIR/NAME/snapshots.json
 * (written atomically) and reconciled with the image at every list: an
 * entry whose snapshot is not in the image is dropped, a snapshot in the
 * image without an entry shows "frozen: unknown". */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "supervisor/vm/vm.h"

/* ---- the engine's requests (supervisor/vm/snapshot.c) ------------------- */

typedef enum sv_snapshot_op {
    SV_SNAPSHOT_CREATE,
    SV_SNAPSHOT_REMOVE,
    SV_SNAPSHOT_REVERT,
} sv_snapshot_op;

/* Creates, removes or reverts to snapshot `snap` (checked with
 * sv_snapshot_name_valid for create).  A negative errno with err when
 * refused at once: -EINVAL a bad name, -EBUSY another snapshot operation
 * or a state in which the VM is busy (starting, stopping, …), -EALREADY a
 * revert of a VM that has a QEMU (exit 73), -EIO no monitor.  Otherwise 0,
 * and done gets {"name", "snapshot", "op", "frozen", "agent", "how", …}
 * once it is done, or the error: -EEXIST the name is taken (create),
 * -ENOENT no such snapshot, -EIO qemu-img or QEMU failed. */
int sv_vm_snapshot(sv_vmctl *c, sv_vm *vm, sv_snapshot_op op, const char *snap, sv_vm_done_fn done,
                   void *userdata, qv_error *err);

/* The VM's snapshots: done gets {"name", "snapshots": [{"name", "id",
 * "time", "vm_state_size", "disk_size", "frozen", "state"}], "source"}
 * (disk_size, frozen and state null when qvisor has no record).  -EBUSY
 * while a snapshot operation of a stopped VM runs (its image is being
 * written), -EIO no monitor while QEMU runs. */
int sv_vm_snapshot_list(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err);

/* ---- pure parts (supervisor/vm/snapmeta.c; unit-tested) ------------------ */

#define SV_SNAPSHOT_NAME_MAX 63   /* bytes */
#define SV_SNAPSHOT_MAX 256       /* snapshots an image may list for us to read it */
#define SV_SNAPSHOT_IMAGE_NAME_MAX 255 /* a name in an image made by someone else */

/* A name qvisor gives a snapshot: 1..63 bytes of [A-Za-z0-9._-], starting
 * with a letter or digit (never '-': it becomes a qemu-img argument), not
 * all digits (qemu-img -a/-d take a snapshot's numeric id before its name,
 * so "2" could name another snapshot). */
bool sv_snapshot_name_valid(const char *name);
/* The same, with a message (EINVAL) for a bad one. */
int sv_snapshot_name_check(const char *name, qv_error *err);

/* The snapshots of an image, from an ImageInfo object (qemu-img info
 * --output=json, or query-block's inserted.image): a new array of
 * {"id", "name", "time", "vm_state_size"}.  The text is QEMU's, which
 * reads the guest's disk: refused whole (-EBADMSG, err says why) unless
 * "snapshots" is absent or an array of at most SV_SNAPSHOT_MAX objects,
 * each with a string id (1..64 bytes) and name (1..255 bytes, no NUL), and
 * non-negative integers date-sec and vm-state-size. */
int sv_snapshot_parse_image(json_t *image, json_t **ret, qv_error *err);
/* The disk node `node` in a query-block reply (borrowed): its
 * inserted.image, or NULL. */
json_t *sv_snapshot_find_node(json_t *query_block, const char *node);

/* snapshots.json's text, parsed: a new array of records {"name",
 * "started", "finished", "frozen", "state", "disk_size"}; records that are
 * not well formed are skipped (the file is qvisor's, but a broken one must
 * not hide the image's snapshots).  NULL text: an empty array. */
json_t *sv_snapmeta_parse(const char *text);
/* The file's text for records (new string, caller frees). */
char *sv_snapmeta_dump(json_t *records);
/* The record of snapshot `s` (from sv_snapshot_parse_image) in records,
 * borrowed, or NULL: same name, and the image's time within the record's
 * operation (started - 2 s .. finished + 2 s): a snapshot made again under
 * that name by someone else is not taken for ours. */
json_t *sv_snapmeta_find(json_t *records, json_t *s);
/* The list `vm snapshot list` shows: each snapshot of the image with its
 * record's frozen, state and disk_size (null without one).  *ret_pruned
 * (may be NULL) gets the records that still have their snapshot.  New
 * references. */
json_t *sv_snapshot_reconcile(json_t *image_snaps, json_t *records, json_t **ret_pruned);
/* Whether the image lists a snapshot named name. */
bool sv_snapshot_listed(json_t *image_snaps, const char *name);
