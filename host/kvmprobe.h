/* A direct KVM probe: can a vCPU run on this node?  (docs/check.md)
 *
 * qemucaps.c asks QEMU; this asks the kernel, with KVM ioctls and no QEMU:
 * open /dev/kvm, KVM_GET_API_VERSION (must be 12), KVM_CREATE_VM, RAM at 0
 * and a read-only 64 KiB "firmware ROM" at 0xffff0000 holding the probe
 * guest (probeguest.h, the same bytes QEMU runs as its -bios), one vCPU
 * with the host's CPUID, started at the reset vector in real mode.  KVM_RUN
 * must then give the guest's markers on port 0xe9 ('R', 'P', 'L': real,
 * protected and long mode reached), 0x2a on port 0xf4, and KVM_EXIT_HLT.
 *
 * Why not just a few real-mode instructions in RAM: on the nested hosts
 * qvisor is developed on, exactly that works, while every real guest dies.
 * What fails there is leaving real mode while running from a read-only
 * memory slot, which is how every BIOS starts (KVM_RUN then never returns).
 *
 * The vCPU runs in a forked child, killed at the time limit, so a KVM_RUN
 * that hangs (or a KVM that crashes its caller) costs the caller nothing.
 * The child reports through a pipe.  The ioctl layer is injectable
 * (sv_kvm_ops), so tests can play every kind of broken KVM.
 *
 * Blocks for at most about timeout_ms + 1 s.  Library code: logs at debug
 * only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define SV_KVM_DEVICE "/dev/kvm"
#define SV_KVM_API_VERSION 12
/* A working vCPU finishes in well under a millisecond. */
#define SV_KVM_PROBE_TIMEOUT_MS 1500

/* What the probe does to the kernel, so tests can replace it.  Every
 * function returns a negative errno on failure, never -1 with errno. */
typedef struct sv_kvm_ops {
    int (*open)(const char *path, int flags);              /* an fd */
    int (*ioctl)(int fd, unsigned long request, void *arg); /* the ioctl's non-negative result */
    int (*mmap)(int fd, size_t len, void **ret);            /* shared read-write map of fd at 0 (kvm_run) */
    void (*munmap)(void *addr, size_t len);
    void (*close)(int fd);
} sv_kvm_ops;

/* The real ones: open(2), ioctl(2), mmap(2), munmap(2), close(2). */
extern const sv_kvm_ops sv_kvm_ops_real;

typedef enum sv_kvm_outcome {
    SV_KVM_WORKS,    /* the probe guest ran to its end */
    SV_KVM_ABSENT,   /* no device node (ENOENT) */
    SV_KVM_DENIED,   /* the device exists but we may not open it (EACCES, EPERM) */
    SV_KVM_UNUSABLE, /* it opened, then something failed: API version, a KVM ioctl, or the vCPU */
} sv_kvm_outcome;

typedef struct sv_kvm_probe {
    int outcome;       /* sv_kvm_outcome */
    int api_version;   /* from KVM_GET_API_VERSION; -1 when not read */
    bool timed_out;    /* a call did not come back (KVM_RUN, usually): the child was killed */
    char call[32];     /* the call that failed or hung: "open", "KVM_CREATE_VM", "KVM_RUN", ...; "" when it works */
    char stages[8];    /* markers the guest wrote, in order: "RPL" when it got through */
    char detail[256];  /* WORKS: "API 12, vCPU runs (real, protected and long mode)"; otherwise why not,
                        * without the device name: "KVM_RUN: emulation failure entering protected mode",
                        * "KVM_RUN did not return: ... (killed after 1500 ms)", "No such file or directory" */
} sv_kvm_probe;

/* The device to probe: SV_KVM_DEVICE, or, in builds with test hooks, the
 * environment variable QVISOR_TEST_KVM_DEVICE (a test knob, e.g. a path
 * that does not exist). */
const char *sv_kvm_device(void);

/* Runs the probe on `device` (NULL: sv_kvm_device()) through `ops` (NULL:
 * sv_kvm_ops_real), killing the vCPU's process after timeout_ms (<= 0:
 * SV_KVM_PROBE_TIMEOUT_MS).  Returns 0 with *ret filled whatever KVM did,
 * or a negative errno when the probe itself could not run (pipe, fork). */
int sv_kvm_probe_run(const char *device, const sv_kvm_ops *ops, int timeout_ms, sv_kvm_probe *ret);

/* "works", "absent", "denied", "unusable". */
const char *sv_kvm_outcome_name(int outcome);
