/* What this node's QEMU can do, found by running it (docs/qemucaps.md).
 *
 * Everything here blocks (it runs QEMU a few times and waits): the daemon
 * calls sv_qemu_caps_probe() once, on a worker thread, and keeps the result.
 * Nothing here keeps state, so concurrent calls are safe. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

typedef struct sv_qemu_caps {
    int major, minor, micro;  /* from `BINARY -version` */
    char version[64];         /* what followed "version " on its first line, trimmed:
                               * "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" */
    bool sandbox;             /* the probe guest ran under TCG with `-sandbox SV_QEMU_PROBE_SANDBOX` */
    char sandbox_detail[256]; /* "sandbox works", or why not */
    bool kvm;                 /* the probe guest ran under KVM with -cpu host (what qvisor uses) */
    char kvm_detail[256];     /* "KVM works", or why not: "/dev/kvm: No such file or directory",
                               * "QEMU aborted: failed to set MSR 0x10a to 0x69",
                               * "KVM internal error: emulation failure", "not probed (accelerator: tcg)" */
    /* the CPU models `BINARY -cpu help` lists ("486", "EPYC-Rome", "host", "max"),
     * each NUL-terminated, in its order; n_cpu_models 0 when it listed none */
    char cpu_models[8192];
    size_t n_cpu_models;
    char cpu_models_detail[256]; /* "" or why there is no list */
} sv_qemu_caps;

/* The probe guest is 256 bytes of x86 code at the top of a 64 KiB -bios
 * image: from the reset vector it goes real mode -> protected mode ->
 * long mode (PAE, 4-level paging), writes one marker per mode to the
 * debug console (port 0xe9: "R", "P", "L") and finally 0x2a to
 * isa-debug-exit (port 0xf4), which makes QEMU exit with (0x2a << 1) | 1.
 * That exit status is only reachable by the guest executing all of it. */
#define SV_QEMU_PROBE_EXIT_STATUS 85
/* The strictest -sandbox argument qemuargv.c passes (QEMU not changing user). */
#define SV_QEMU_PROBE_SANDBOX "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

/* Time limits of sv_qemu_caps_probe(), per QEMU run.  A probe runs QEMU at
 * most four times (-version, -cpu help, TCG+sandbox, KVM), so it is over
 * within 1.5 + 1.5 + 2.5 + 2.5 s even when QEMU hangs; it takes about 0.3 s
 * when not (measured here: 0.13-0.26 s before -cpu help, which adds ~0.1 s). */
#define SV_QEMU_PROBE_VERSION_TIMEOUT_MS 1500
#define SV_QEMU_PROBE_GUEST_TIMEOUT_MS 2500

typedef struct sv_qemu_guest_run {
    bool completed;    /* QEMU exited with SV_QEMU_PROBE_EXIT_STATUS: guest code ran to the end */
    bool timed_out;    /* killed after timeout_ms */
    int exit_status;   /* QEMU's exit status; -1 when it was killed or died of a signal */
    char stages[8];    /* markers the guest wrote, in order: "RPL" when it got through */
    char detail[256];  /* "guest reached long mode", or why QEMU or the guest did not get there */
} sv_qemu_guest_run;

/* Runs the probe guest once: `BINARY -machine q35,accel=kvm|tcg -cpu host|max
 * -m 32 -nodefaults -no-user-config -display none -no-reboot -bios PAYLOAD
 * -device isa-debug-exit -debugcon stdio [-sandbox SV_QEMU_PROBE_SANDBOX]`,
 * with the payload in a temporary file under $TMPDIR (or /tmp), removed
 * again.  Returns 0 when QEMU was started, whatever became of it (see
 * *ret); -ENOENT and others, with err set, when it could not be started
 * or the payload could not be written. */
int sv_qemu_probe_guest(const char *binary, bool kvm, bool sandbox, int timeout_ms, sv_qemu_guest_run *ret,
                        qv_error *err);

/* Reads `-cpu help` output: the name after "x86 " on each line of the
 * "Available CPUs:" list, into caps->cpu_models.  Returns the number of
 * names (0 when there is no such list); names that do not fit are dropped. */
size_t sv_qemu_cpu_models_parse(const char *out, sv_qemu_caps *caps);
/* Whether caps lists model (exact name, as QEMU takes it). */
bool sv_qemu_caps_has_cpu_model(const sv_qemu_caps *caps, const char *model);
/* A VM's cpu_model against this node (kvm: the resolved accelerator):
 * 0; -EOPNOTSUPP for "host" when VMs run under TCG (QEMU refuses it); -EINVAL
 * for a name QEMU does not list, with up to five similar ones as a hint;
 * -EPROTO when QEMU listed no models (cpu_models_detail says why). */
int sv_qemu_cpu_model_check(const sv_qemu_caps *caps, bool kvm, const char *model, qv_error *err);

/* Probes `binary` (PATH lookup or absolute): version, CPU models, sandbox, and with
 * want_kvm also KVM (first /dev/kvm: open, KVM_GET_API_VERSION == 12,
 * KVM_CREATE_VM; then the probe guest under KVM).  want_kvm false gives
 * kvm false with kvm_detail "not probed (accelerator: tcg)".  Returns 0,
 * or a negative errno with err set when the binary cannot be run at all
 * (-ENOENT, -EACCES, ...), does not answer -version in time (-ETIMEDOUT)
 * or does not print a QEMU version (-EPROTO). */
int sv_qemu_caps_probe(const char *binary, bool want_kvm, sv_qemu_caps *ret, qv_error *err);

/* What identifies an installed binary: the file `binary` names (a path, or
 * the first executable of that name in PATH, as exec finds it).  A binary
 * that cannot be found stamps as all zero.  The daemon keeps a failed probe
 * while its binary's stamp stays the same. */
typedef struct sv_qemu_binary_stamp {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
    int64_t ctime_ns;
} sv_qemu_binary_stamp;

void sv_qemu_binary_stamp_get(const char *binary, sv_qemu_binary_stamp *ret);
bool sv_qemu_binary_stamp_equal(const sv_qemu_binary_stamp *a, const sv_qemu_binary_stamp *b);

/* Resolves the configured accelerator ("auto", "kvm" or "tcg", as in the
 * config's qemu.accelerator) against caps: *ret_kvm tells whether VMs use
 * KVM.  "kvm" when KVM is unusable is -ENODEV ("accelerator kvm is
 * configured but KVM is unusable on this node: DETAIL"); an unknown name is
 * -EINVAL.  When "auto" falls back to TCG, `warning` (may be NULL) gets the
 * one line the daemon should log; otherwise it is set to "".  caps may be
 * NULL for "tcg" (and counts as KVM not probed otherwise). */
int sv_qemu_accel_resolve(const char *accel, const sv_qemu_caps *caps, bool *ret_kvm, char *warning,
                          size_t warning_len, qv_error *err);
