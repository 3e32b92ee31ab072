/* GPU passthrough as the supervisor uses it (vfio/ does the work): the
 * records directory, the checks at `vm create`, and the take / give-back
 * jobs around a VM's QEMU, each on a thread of its own with a deadline. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "error.h"
#include "spec/config.h"
#include "supervisor/vm/registry.h"
#include "vfio/bind.h"

/* STATE_DIR/vfio */
void sv_pt_records_dir(const sv_config *c, char *buf, size_t len);

/* vm create: turns spec->gpus into normalised "ADDRESS[,keep][,take-group]"
 * and refuses what cannot be passed (vfio_plan_make) or what another VM of
 * the registry holds (its GPUs, their slots and groups, or a record). */
int sv_pt_prepare_spec(sv_registry *r, const sv_config *c, sv_vmspec *spec, qv_error *err);

/* Done: status 0 or a negative errno.  For a take, `plan` (valid during
 * the call) is what was bound. */
typedef void (*sv_pt_done_fn)(int status, const qv_error *err, const vfio_plan *plan, void *userdata);

/* Takes every device the VM's GPUs need (vfio_take).  On a timeout the
 * device being worked on is recorded stuck.  Returns 0 (done will be
 * called) or a negative errno with err set (it will not). */
int sv_pt_take(uv_loop_t *loop, const sv_config *c, const sv_vmspec *spec, sv_pt_done_fn done, void *userdata,
               qv_error *err);
/* Gives back what is recorded for `vm` (kept devices too when
 * include_kept).  Same contract as sv_pt_take. */
int sv_pt_give_back(uv_loop_t *loop, const sv_config *c, const char *vm, bool include_kept, sv_pt_done_fn done,
                    void *userdata, qv_error *err);

/* Records that name `vm` (any state). */
bool sv_pt_holds(const sv_config *c, const char *vm);

/* How much longer a start may take with this many GPUs (Proxmox: ×4). */
uint64_t sv_pt_start_timeout_ms(const sv_vmspec *spec, uint64_t base_ms);

/* `qvisor gpu list`: every display device with its group, companions and
 * holder (the VM whose spec names it, and what the records say). */
int sv_pt_gpu_list_json(sv_registry *r, const sv_config *c, json_t **ret, qv_error *err);
