/* A scripted fake of the kernel's KVM for the probe in host/kvmprobe.h:
 * sv_kvm_ops whose open and ioctls fail where a test says, and whose KVM_RUN
 * plays a script of exits.  The probe runs its vCPU in a child process, so
 * the fake's state is set before the probe and only read by the child. */
#pragma once

#include "host/kvmprobe.h"

#define FAKE_KVM_DEVICE "/fake/kvm"

typedef enum fake_kvm_run {
    FAKE_RUN_WORKS,          /* 'R', 'P', 'L', 0x2a on 0xf4, hlt: only if the probe set the vCPU up right */
    FAKE_RUN_INTERNAL_ERROR, /* 'R', then KVM_EXIT_INTERNAL_ERROR (emulation failure) */
    FAKE_RUN_FAIL_ENTRY,     /* KVM_EXIT_FAIL_ENTRY at once */
    FAKE_RUN_SHUTDOWN,       /* 'R', 'P', then a triple fault */
    FAKE_RUN_HANG,           /* 'R', then KVM_RUN never returns */
    FAKE_RUN_EPERM,          /* KVM_RUN fails with EPERM */
    FAKE_RUN_CRASH,          /* the process dies in KVM_RUN (SIGKILL) */
    FAKE_RUN_EARLY_HLT,      /* 'R', then hlt */
} fake_kvm_run;

typedef struct fake_kvm {
    int open_error;      /* 0, or the errno open fails with (ENOENT, EACCES, ENXIO) */
    int api_version;     /* 0 means 12 */
    int create_vm_error; /* errno of KVM_CREATE_VM, or 0 */
    int cpuid_e2big;     /* KVM_GET_SUPPORTED_CPUID says E2BIG this many times first */
    fake_kvm_run run;
} fake_kvm;

/* Sets the behaviour for the next probes. */
void fake_kvm_set(const fake_kvm *f);
extern const sv_kvm_ops fake_kvm_ops;
