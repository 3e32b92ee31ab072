/* vfio/: PCI display devices and their IOMMU groups (discovered through
 * libudev), and moving devices between their host driver and vfio-pci
 * (through the project's sysfs root, common/sysroot.h).
 *
 * Discovery reads /sys through libudev (under umockdev in tests, the
 * testbed); every sysfs write goes through qv_sysroot_*.  In tests both point
 * at the same fake tree (docs/fakesysfs.md).
 *
 * Errors: negative errno, with a qv_error message naming the device. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#define VFIO_BDF_MAX 16     /* "0000:01:00.0" + NUL, with room */
#define VFIO_DRIVER_MAX 64
#define VFIO_DRIVER "vfio-pci"

/* One PCI function as sysfs shows it now. */
typedef struct vfio_pci_dev {
    char bdf[VFIO_BDF_MAX];         /* "0000:01:00.0" */
    unsigned class_code;            /* 24 bits: 0x030000 */
    unsigned vendor, device;        /* 0x10de, 0x1eb8 */
    char vendor_name[128];          /* udev hwdb; "" when unknown */
    char device_name[128];
    char driver[VFIO_DRIVER_MAX];   /* bound driver; "" when none */
    int iommu_group;                /* -1: no group (no IOMMU) */
    int numa_node;                  /* -1: none or unknown */
    bool bridge;                    /* a bridge (has pci_bus/): exempt from group viability */
} vfio_pci_dev;

/* A display device with what goes along with it. */
typedef struct vfio_gpu {
    vfio_pci_dev dev;
    int index;                      /* short id: position in the list (by PCI address) */
    vfio_pci_dev *companions;       /* other functions of the same slot (audio .1, USB .2 …) */
    size_t n_companions;
    vfio_pci_dev *group;            /* every member of the IOMMU group, the GPU included */
    size_t n_group;
} vfio_gpu;

typedef struct vfio_gpu_list {
    vfio_gpu *gpus;
    size_t n;
} vfio_gpu_list;

/* True for class 0x03xxxx (VGA, XGA, 3D, other display). */
bool vfio_class_is_display(unsigned class_code);
/* "VGA controller", "3D controller", "Audio device", "PCI bridge", …; never NULL. */
const char *vfio_class_name(unsigned class_code);
/* True when two normalised addresses are functions of one slot
 * ("dddd:bb:ss" equal): a GPU and its audio, USB … functions. */
bool vfio_bdf_same_slot(const char *a, const char *b);
/* Normalises "01:00.0", "0000:01:00.0" (any case) to "0000:01:00.0".
 * Returns 0 or -EINVAL. */
int vfio_bdf_normalize(const char *in, char ret[VFIO_BDF_MAX]);

/* Every PCI display device, sorted by address, with companions and group
 * members.  Returns 0 (an empty list when there are none) or a negative
 * errno with err set. */
int vfio_gpu_list_get(vfio_gpu_list *ret, qv_error *err);
void vfio_gpu_list_clear(vfio_gpu_list *l);
/* Finds a GPU by PCI address (any accepted spelling) or short index ("0",
 * "1"); NULL when none matches. */
const vfio_gpu *vfio_gpu_list_find(const vfio_gpu_list *l, const char *id);

/* One PCI function, read fresh.  -ENOENT when it does not exist. */
int vfio_pci_dev_get(const char *bdf, vfio_pci_dev *ret, qv_error *err);

/* ---- durable records: STATE_DIR/vfio/BDF.json --------------------------
 * Written before a device is taken from its driver, removed once it is back
 * (or kept on vfio-pci by choice).  The authority on "which VM holds it" and
 * on what to give a device back to after a crash. */
typedef enum vfio_rec_state {
    VFIO_REC_BINDING,   /* being moved to vfio-pci, or on it for a VM that is starting/running */
    VFIO_REC_BOUND,     /* on vfio-pci and verified */
    VFIO_REC_RETURNING, /* being given back */
    VFIO_REC_STUCK,     /* a sysfs write hung or failed: needs a person */
} vfio_rec_state;

typedef struct vfio_record {
    char bdf[VFIO_BDF_MAX];
    char vm[64];                    /* the VM that holds it */
    char driver[VFIO_DRIVER_MAX];   /* driver before we took it; "" when it had none */
    bool keep;                      /* stays on vfio-pci when the VM stops */
    int state;                      /* vfio_rec_state */
    char reason[256];               /* for STUCK: what hung or failed */
} vfio_record;

const char *vfio_rec_state_to_string(int s);
/* Atomic, durable write of DIR/BDF.json (DIR is created).  0 or -errno. */
int vfio_record_save(const char *dir, const vfio_record *r);
/* -ENOENT when there is none; -EBADMSG for a file that does not parse. */
int vfio_record_load(const char *dir, const char *bdf, vfio_record *ret);
/* 0 also when it did not exist. */
int vfio_record_remove(const char *dir, const char *bdf);
/* All records, sorted by address; a missing DIR gives none.  Unparsable
 * files are skipped.  Caller frees *ret. */
int vfio_record_list(const char *dir, vfio_record **ret, size_t *ret_n);
