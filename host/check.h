/* `qvisor check`: can this node run VMs with the requested features?
 * (docs/check.md)
 *
 * Each sv_check_*() looks at one thing and appends one or more items to a
 * report: a name, ok/warn/fail, what it found and, when not ok, a hint on
 * what to do.  Nothing here changes the node or needs the daemon: /sys and
 * /proc are read through the sysfs root (common/sysroot.h), directories are
 * only looked at, QEMU and KVM are probed with throw-away guests.
 *
 * Severity: what every VM needs (QEMU, qemu-img, the state directories,
 * and KVM when qemu.accelerator is kvm) fails when missing; the rest warns,
 * unless it was asked for with a need (SV_NEED_*), then it fails too.
 *
 * Library code: quiet (debug logging only); the caller prints the report. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "spec/config.h"
#include "host/kvmprobe.h"
#include "host/qemucaps.h"

typedef enum sv_check_status {
    SV_CHECK_OK,
    SV_CHECK_WARN,
    SV_CHECK_FAIL,
} sv_check_status;

/* Features a node is asked to have (`--need`). */
enum {
    SV_NEED_KVM = 1 << 0,
    SV_NEED_VFIO = 1 << 1,
    SV_NEED_HUGEPAGES = 1 << 2,
    SV_NEED_UEFI = 1 << 3,
};

typedef struct sv_check_item {
    char name[24];    /* "kvm", "iommu", "gpu", ...; per-device items repeat a name */
    int status;       /* sv_check_status */
    char detail[512]; /* what was found, one line */
    char hint[1024];  /* what to do about it, one line; "" when nothing */
} sv_check_item;

typedef struct sv_check_report {
    sv_check_item *items;
    size_t n;
} sv_check_report;

typedef struct sv_check_opts {
    const sv_config *config;  /* binaries, accelerator, directories (borrowed) */
    unsigned needs;           /* SV_NEED_* */
    const char *kvm_device;   /* NULL: sv_kvm_device() */
    const sv_kvm_ops *kvm_ops; /* NULL: the real kernel */
    int kvm_timeout_ms;       /* <= 0: SV_KVM_PROBE_TIMEOUT_MS */
} sv_check_opts;

/* "ok", "warn", "fail". */
const char *sv_check_status_name(int status);
/* Adds the bits of a comma-separated list of "kvm", "vfio", "hugepages", "uefi"
 * to *needs.  -EINVAL (and *needs untouched) for anything else. */
int sv_check_parse_needs(const char *list, unsigned *needs);

/* Adds an item (its detail from fmt); the report grows as needed. */
sv_check_item *sv_check_add(sv_check_report *r, const char *name, int status, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* True when no item failed. */
bool sv_check_report_ok(const sv_check_report *r);
void sv_check_report_clear(sv_check_report *r);

/* Everything, in the order it is shown: qemu, qemu-img, kvm, accel, cpu,
 * iommu, vfio, vfio-pci, gpu, hugepages, ovmf, ovmf-secure, state-dir, images-dir,
 * instances-dir, run-dir.  Runs QEMU (up to ~6.5 s when it hangs) and the
 * KVM probe (up to its timeout). */
void sv_check_all(sv_check_report *r, const sv_check_opts *o);

/* The pieces of sv_check_all().  sv_check_qemu() probes the configured
 * binary with sv_qemu_caps_probe() and adds "qemu"; *ret_caps gets the
 * result, and *ret_ran whether QEMU could be run at all. */
void sv_check_qemu(sv_check_report *r, const sv_check_opts *o, sv_qemu_caps *ret_caps, bool *ret_ran);
/* "accel": what sv_qemu_accel_resolve() decides for the configured
 * accelerator, the way the daemon will.  caps NULL: QEMU did not run. */
void sv_check_accel(sv_check_report *r, const sv_check_opts *o, const sv_qemu_caps *caps);
void sv_check_qemu_img(sv_check_report *r, const sv_check_opts *o);
/* "kvm": the direct probe (kvmprobe.h). */
void sv_check_kvm(sv_check_report *r, const sv_check_opts *o);
/* "cpu": vmx/svm in /proc/cpuinfo. */
void sv_check_cpu(sv_check_report *r, const sv_check_opts *o);
/* "iommu": groups in /sys/kernel/iommu_groups, else the kernel parameters
 * that turn the IOMMU on and whether /proc/cmdline has them. */
void sv_check_iommu(sv_check_report *r, const sv_check_opts *o);
/* "vfio": the vfio and vfio_pci modules. */
void sv_check_vfio_modules(sv_check_report *r, const sv_check_opts *o);
/* "vfio-pci": one item per device bound to vfio-pci and who holds it,
 * from the durable records in STATE_DIR/vfio (vfio/vfio.h). */
void sv_check_vfio_devices(sv_check_report *r, const sv_check_opts *o);
/* "gpu": one item per PCI display device and its IOMMU group: other
 * devices in the group that are neither functions of the GPU's slot nor
 * bridges would have to be passed through with it. */
void sv_check_gpu_groups(sv_check_report *r, const sv_check_opts *o);
/* "hugepages": reserved and free pages per size. */
void sv_check_hugepages(sv_check_report *r, const sv_check_opts *o);
/* "ovmf", "ovmf-secure": the firmware `vm create --firmware uefi` and
 * uefi-secure would get (host/firmware.h, paths.firmware_dir). */
void sv_check_firmware(sv_check_report *r, const sv_check_opts *o);
/* "state-dir", "images-dir", "instances-dir", "run-dir": each exists and
 * is writable, or its nearest existing parent is (nothing is created). */
void sv_check_dirs(sv_check_report *r, const sv_check_opts *o);
