#include "fakekvm.h"

#include "host/probeguest.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/kvm.h>

enum { FD_KVM = 100, FD_VM = 101, FD_VCPU = 102, RUN_SIZE = 8192, IO_DATA = 4096 };

static fake_kvm F;

/* What the probe set up, checked before the WORKS script runs. */
static struct {
    const uint8_t *rom;
    bool rom_readonly;
    bool ram;
    bool cpuid;
    uint64_t cs_base;
    uint16_t cs_sel;
    uint64_t rip;
    struct kvm_run *run;
    int step;
} S;

void fake_kvm_set(const fake_kvm *f) {
    F = *f;
    memset(&S, 0, sizeof S);
}

static int fake_open(const char *path, int flags) {
    (void)flags;
    if (strcmp(path, FAKE_KVM_DEVICE) != 0)
        return -ENOENT;
    return F.open_error ? -F.open_error : FD_KVM;
}

static void io_out(uint16_t port, uint8_t v) {
    struct kvm_run *run = S.run;
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_OUT;
    run->io.size = 1;
    run->io.port = port;
    run->io.count = 1;
    run->io.data_offset = IO_DATA;
    ((uint8_t *)run)[IO_DATA] = v;
}

static bool set_up_right(void) {
    return S.ram && S.rom && S.rom_readonly && S.cpuid && S.cs_base == SV__PROBE_ROM_BASE && S.cs_sel == 0xf000 &&
           S.rip == 0xfff0 &&
           memcmp(S.rom + SV__PROBE_ROM_SIZE - SV__PROBE_GUEST_SIZE, sv__probe_guest, SV__PROBE_GUEST_SIZE) == 0;
}

static int fake_run(void) {
    int step = S.step++;
    switch (F.run) {
    case FAKE_RUN_WORKS: {
        if (!set_up_right()) {
            S.run->exit_reason = KVM_EXIT_SHUTDOWN; /* makes the test fail visibly */
            return 0;
        }
        static const char script[] = "RPL";
        if (step < 3)
            io_out(SV__PROBE_MARKER_PORT, (uint8_t)script[step]);
        else if (step == 3)
            io_out(SV__PROBE_EXIT_PORT, SV__PROBE_EXIT_VALUE);
        else
            S.run->exit_reason = KVM_EXIT_HLT;
        return 0;
    }
    case FAKE_RUN_INTERNAL_ERROR:
        if (step == 0) {
            io_out(SV__PROBE_MARKER_PORT, 'R');
        } else {
            S.run->exit_reason = KVM_EXIT_INTERNAL_ERROR;
            S.run->internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
        }
        return 0;
    case FAKE_RUN_FAIL_ENTRY:
        S.run->exit_reason = KVM_EXIT_FAIL_ENTRY;
        S.run->fail_entry.hardware_entry_failure_reason = 0x80000021;
        return 0;
    case FAKE_RUN_SHUTDOWN:
        if (step < 2)
            io_out(SV__PROBE_MARKER_PORT, step == 0 ? 'R' : 'P');
        else
            S.run->exit_reason = KVM_EXIT_SHUTDOWN;
        return 0;
    case FAKE_RUN_HANG:
        if (step == 0) {
            io_out(SV__PROBE_MARKER_PORT, 'R');
            return 0;
        }
        for (;;)
            pause();
    case FAKE_RUN_EPERM:
        return -EPERM;
    case FAKE_RUN_CRASH:
        raise(SIGKILL);
        return -EIO;
    case FAKE_RUN_EARLY_HLT:
        if (step == 0)
            io_out(SV__PROBE_MARKER_PORT, 'R');
        else
            S.run->exit_reason = KVM_EXIT_HLT;
        return 0;
    }
    return -EINVAL;
}

static int fake_ioctl(int fd, unsigned long request, void *arg) {
    switch (request) {
    case KVM_GET_API_VERSION:
        return fd == FD_KVM ? (F.api_version ? F.api_version : 12) : -ENOTTY;
    case KVM_CREATE_VM:
        return F.create_vm_error ? -F.create_vm_error : FD_VM;
    case KVM_CHECK_EXTENSION:
        return (uintptr_t)arg == KVM_CAP_READONLY_MEM ? 1 : 0;
    case KVM_SET_USER_MEMORY_REGION: {
        const struct kvm_userspace_memory_region *m = arg;
        if (fd != FD_VM)
            return -ENOTTY;
        if (m->guest_phys_addr == 0 && m->memory_size >= SV__PROBE_RAM_SIZE)
            S.ram = true;
        if (m->guest_phys_addr == SV__PROBE_ROM_BASE && m->memory_size == SV__PROBE_ROM_SIZE) {
            S.rom = (const uint8_t *)(uintptr_t)m->userspace_addr;
            S.rom_readonly = m->flags & KVM_MEM_READONLY;
        }
        return 0;
    }
    case KVM_GET_VCPU_MMAP_SIZE:
        return RUN_SIZE;
    case KVM_CREATE_VCPU:
        return fd == FD_VM ? FD_VCPU : -ENOTTY;
    case KVM_GET_SUPPORTED_CPUID: {
        struct kvm_cpuid2 *c = arg;
        if (F.cpuid_e2big > 0) {
            F.cpuid_e2big--;
            return -E2BIG;
        }
        c->nent = 1;
        c->entries[0] = (struct kvm_cpuid_entry2){.function = 0x80000001, .edx = 1u << 29}; /* LM */
        return 0;
    }
    case KVM_SET_CPUID2: {
        const struct kvm_cpuid2 *c = arg;
        S.cpuid = fd == FD_VCPU && c->nent == 1 && (c->entries[0].edx & (1u << 29));
        return 0;
    }
    case KVM_GET_SREGS:
        memset(arg, 0, sizeof(struct kvm_sregs));
        return 0;
    case KVM_SET_SREGS: {
        const struct kvm_sregs *s = arg;
        S.cs_base = s->cs.base;
        S.cs_sel = s->cs.selector;
        return 0;
    }
    case KVM_SET_REGS:
        S.rip = ((const struct kvm_regs *)arg)->rip;
        return 0;
    case KVM_RUN:
        return fd == FD_VCPU && S.run ? fake_run() : -ENOTTY;
    default:
        return -ENOTTY;
    }
}

static int fake_mmap(int fd, size_t len, void **ret) {
    if (fd != FD_VCPU || len < RUN_SIZE)
        return -EINVAL;
    S.run = calloc(1, len); /* the child's; it goes with the child */
    if (!S.run)
        return -ENOMEM;
    *ret = S.run;
    return 0;
}

static void fake_munmap(void *addr, size_t len) {
    (void)len;
    free(addr);
}

static void fake_close(int fd) {
    (void)fd;
}

const sv_kvm_ops fake_kvm_ops = {
    .open = fake_open,
    .ioctl = fake_ioctl,
    .mmap = fake_mmap,
    .munmap = fake_munmap,
    .close = fake_close,
};
