/* Blocking vfio-pci binding and give-back (vfio/bind.c, vfio/take.c).
 * Call from a thread of its own: sysfs writes can hang. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "vfio/vfio.h"

/* What the caller learns while the work runs, and how it says "stop". */
typedef struct vfio_ctx {
    void (*step)(void *userdata, const char *what); /* before each sysfs write */
    bool (*abandoned)(void *userdata);              /* true: give up between steps */
    void *userdata;
} vfio_ctx;

/* The driver the device is bound to now ("" for none); -ENODEV when the
 * device does not exist. */
int vfio_current_driver(const char *bdf, char ret[VFIO_DRIVER_MAX]);

/* driver_override=vfio-pci, unbind from the current driver, drivers_probe,
 * then verify.  A device already on vfio-pci keeps it (override set). */
int vfio_bind_one(vfio_ctx *ctx, const char *bdf, qv_error *err);
/* Unbind from vfio-pci, clear driver_override, bind `driver` (or probe when
 * that is refused), verify.  driver "" leaves the device unbound, as it
 * was.  A device that something else bound meanwhile is left alone (EBUSY). */
int vfio_release_one(vfio_ctx *ctx, const char *bdf, const char *driver, qv_error *err);

/* ---- a VM's devices ------------------------------------------------------ */

/* One GPU of a VM spec: "0000:01:00.0" with options ",keep" (stays on
 * vfio-pci when the VM stops) and ",take-group" (members of its IOMMU group
 * that a host driver holds may be taken from the host too). */
typedef struct vfio_gpu_opt {
    char bdf[VFIO_BDF_MAX];
    bool keep;
    bool take_group;
} vfio_gpu_opt;

/* Parses "ID[,keep][,take-group]"; ID must already be a PCI address here
 * (vfio_gpu_spec_resolve turns short indexes into addresses). */
int vfio_gpu_opt_parse(const char *s, vfio_gpu_opt *ret, qv_error *err);
/* "ID[,opts]" with ID an address or a `gpu list` index → the normalised
 * spec string "0000:01:00.0[,keep][,take-group]" (caller frees).  Checks
 * that the device exists and is a display device. */
int vfio_gpu_spec_resolve(const vfio_gpu_list *l, const char *s, char **ret, qv_error *err);

typedef struct vfio_plan_dev {
    char bdf[VFIO_BDF_MAX];
    char driver[VFIO_DRIVER_MAX]; /* bound now (at planning time) */
    bool pass;                    /* given to the guest (GPU and its slot); else only held on vfio-pci */
    bool keep;
    int gpu;                      /* index into the spec's GPU list */
    int function;                 /* PCI function 0-7 */
} vfio_plan_dev;

typedef struct vfio_plan {
    vfio_plan_dev *devs;
    size_t n;
} vfio_plan;

/* Every device a VM with these GPUs (the spec's, parsed) needs on vfio-pci: each
 * GPU, the other functions of its slot, and the non-bridge members of its
 * IOMMU group.  Refuses (EINVAL/ENODEV/EBUSY with a message naming the
 * device) what cannot be passed: not a display device, no IOMMU group, a
 * group member held by a host driver without take-group, the same device
 * twice. */
int vfio_plan_make(const vfio_gpu_list *l, const vfio_gpu_opt *gpus, size_t n_gpus, vfio_plan *ret, qv_error *err);
void vfio_plan_clear(vfio_plan *p);
bool vfio_plan_has(const vfio_plan *p, const char *bdf);

/* Takes every device of the plan for `vm`: record (driver now, durably),
 * bind, verify, record "bound".  On failure gives back what it took (in
 * reverse) and returns the first error; a give-back that fails too leaves
 * that device's record "stuck". */
int vfio_take(vfio_ctx *ctx, const char *records_dir, const char *vm, const vfio_plan *p, qv_error *err);
/* Gives back every device recorded for `vm` except those marked keep
 * (unless include_kept) and those stuck.  Continues past failures (marking
 * them stuck) and returns the first error. */
int vfio_give_back(vfio_ctx *ctx, const char *records_dir, const char *vm, bool include_kept, qv_error *err);
