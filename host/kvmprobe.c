/* The direct KVM probe (see kvmprobe.h): the probe guest on a bare vCPU,
 * in a child process that reports each step through a pipe and is killed
 * when KVM_RUN does not come back. */
#include "host/kvmprobe.h"
#include "host/probeguest.h"

#include "cleanup.h"
#include "log.h"
#include "qv-build.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/kvm.h>

/* ---- the real kernel --------------------------------------------------- */

static int real_open(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int real_ioctl(int fd, unsigned long request, void *arg) {
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

static int real_mmap(int fd, size_t len, void **ret) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    *ret = p;
    return 0;
}

static void real_munmap(void *addr, size_t len) {
    munmap(addr, len);
}

static void real_close(int fd) {
    close(fd);
}

const sv_kvm_ops sv_kvm_ops_real = {
    .open = real_open,
    .ioctl = real_ioctl,
    .mmap = real_mmap,
    .munmap = real_munmap,
    .close = real_close,
};

const char *sv_kvm_device(void) {
#if QV_TEST_HOOKS
    const char *dev = getenv("QVISOR_TEST_KVM_DEVICE");
    if (dev && *dev)
        return dev;
#endif
    return SV_KVM_DEVICE;
}

const char *sv_kvm_outcome_name(int outcome) {
    static const char *const names[] = {"works", "absent", "denied", "unusable"};
    return outcome >= 0 && (size_t)outcome < QV_ARRAY_SIZE(names) ? names[outcome] : "unknown";
}

/* ---- the child: one snapshot of the probe per step --------------------- */

/* What goes through the pipe: whole records, each smaller than PIPE_BUF,
 * so every write(2) arrives in one piece. */
typedef struct wire {
    sv_kvm_probe p;
    char doing[32]; /* the call in progress: what hung, if the child is killed */
    int final;      /* the probe is over; p is the answer */
} wire;
_Static_assert(sizeof(wire) < 4096, "a pipe write of a wire record must be atomic");

typedef struct probe_ctx {
    const sv_kvm_ops *ops;
    int report_fd;
    wire w;
} probe_ctx;

static void send_snapshot(probe_ctx *c) {
    /* Best effort: if the parent is gone, nobody needs the answer. */
    ssize_t n;
    do
        n = write(c->report_fd, &c->w, sizeof c->w);
    while (n < 0 && errno == EINTR);
}

static void doing(probe_ctx *c, const char *what) {
    snprintf(c->w.doing, sizeof c->w.doing, "%s", what);
    send_snapshot(c);
}

static int fail(probe_ctx *c, int outcome, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(probe_ctx *c, int outcome, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->w.p.detail, sizeof c->w.p.detail, fmt, ap);
    va_end(ap);
    c->w.p.outcome = outcome;
    snprintf(c->w.p.call, sizeof c->w.p.call, "%s", c->w.doing);
    return -1;
}

/* Where the guest was when something went wrong, from its markers. */
static const char *stage_where(const char *stages) {
    if (strchr(stages, 'L'))
        return "in long mode";
    if (strchr(stages, 'P'))
        return "entering long mode";
    if (strchr(stages, 'R'))
        return "entering protected mode";
    return "in real mode, before the first marker";
}

/* The same, as a story: for a KVM_RUN that never returned. */
static const char *stage_story(const char *stages) {
    if (strchr(stages, 'L'))
        return "the vCPU reached long mode, then did not halt";
    if (strchr(stages, 'P'))
        return "the vCPU reached protected mode, then made no progress entering long mode";
    if (strchr(stages, 'R'))
        return "the vCPU ran real-mode code, then made no progress entering protected mode";
    return "the vCPU made no progress in real mode";
}

static const char *internal_error_name(uint32_t suberror) {
    switch (suberror) {
    case KVM_INTERNAL_ERROR_EMULATION:
        return "emulation failure";
    case KVM_INTERNAL_ERROR_SIMUL_EX:
        return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV:
        return "cannot deliver an event";
#ifdef KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON:
        return "unexpected hardware exit";
#endif
    default:
        return NULL;
    }
}

/* Gives the vCPU what the host's CPU offers: without it there is no long
 * mode (EFER.LME cannot be set). */
static int set_cpuid(probe_ctx *c, int kvm, int vcpu) {
    const sv_kvm_ops *ops = c->ops;
    for (uint32_t n = 128; n <= 4096; n *= 2) {
        _cleanup_free_ struct kvm_cpuid2 *cpuid =
            calloc(1, sizeof *cpuid + n * sizeof(struct kvm_cpuid_entry2));
        if (!cpuid)
            return fail(c, SV_KVM_UNUSABLE, "out of memory");
        cpuid->nent = n;
        doing(c, "KVM_GET_SUPPORTED_CPUID");
        int r = ops->ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid);
        if (r == -E2BIG)
            continue;
        if (r < 0)
            return fail(c, SV_KVM_UNUSABLE, "KVM_GET_SUPPORTED_CPUID: %s", strerror(-r));
        doing(c, "KVM_SET_CPUID2");
        r = ops->ioctl(vcpu, KVM_SET_CPUID2, cpuid);
        if (r < 0)
            return fail(c, SV_KVM_UNUSABLE, "KVM_SET_CPUID2: %s", strerror(-r));
        return 0;
    }
    return fail(c, SV_KVM_UNUSABLE, "KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

/* Runs the vCPU until the guest halts or something else happens. */
static int run_vcpu(probe_ctx *c, int vcpu, struct kvm_run *run, size_t run_size) {
    const sv_kvm_ops *ops = c->ops;
    sv_kvm_probe *p = &c->w.p;
    bool finished = false;
    int interrupted = 0;
    for (int exits = 0; exits < 64; exits++) {
        doing(c, "KVM_RUN");
        int r = ops->ioctl(vcpu, KVM_RUN, NULL);
        if (r == -EINTR && ++interrupted < 16) {
            exits--;
            continue;
        }
        if (r < 0)
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: %s (%s)", strerror(-r), stage_where(p->stages));
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 1 || run->io.count != 1 ||
                run->io.data_offset >= run_size)
                return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: unexpected I/O on port 0x%x (%s)", run->io.port,
                            stage_where(p->stages));
            uint8_t v = ((const uint8_t *)run)[run->io.data_offset];
            if (run->io.port == SV__PROBE_MARKER_PORT && (v == 'R' || v == 'P' || v == 'L') &&
                strlen(p->stages) + 1 < sizeof p->stages) {
                size_t n = strlen(p->stages);
                p->stages[n] = (char)v;
                p->stages[n + 1] = '\0';
                send_snapshot(c);
            } else if (run->io.port == SV__PROBE_EXIT_PORT && v == SV__PROBE_EXIT_VALUE) {
                finished = true;
            } else {
                return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: unexpected write of 0x%02x to port 0x%x (%s)", v,
                            run->io.port, stage_where(p->stages));
            }
            break;
        }
        case KVM_EXIT_HLT:
            if (finished && strcmp(p->stages, "RPL") == 0) {
                p->outcome = SV_KVM_WORKS;
                snprintf(p->detail, sizeof p->detail, "API %d, vCPU runs (real, protected and long mode)",
                         p->api_version);
                return 0;
            }
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: the guest halted early (markers '%s')", p->stages);
        case KVM_EXIT_INTERNAL_ERROR: {
            const char *name = internal_error_name(run->internal.suberror);
            if (name)
                return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: %s %s", name, stage_where(p->stages));
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: internal error %u %s", run->internal.suberror,
                        stage_where(p->stages));
        }
        case KVM_EXIT_FAIL_ENTRY:
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: VM entry failed (hardware reason 0x%llx) %s",
                        (unsigned long long)run->fail_entry.hardware_entry_failure_reason,
                        stage_where(p->stages));
        case KVM_EXIT_SHUTDOWN:
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: the guest triple-faulted %s", stage_where(p->stages));
        case KVM_EXIT_MMIO:
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: unexpected access to unmapped memory at 0x%llx %s",
                        (unsigned long long)run->mmio.phys_addr, stage_where(p->stages));
        default:
            return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: unexpected exit reason %u %s", run->exit_reason,
                        stage_where(p->stages));
        }
    }
    return fail(c, SV_KVM_UNUSABLE, "KVM_RUN: the guest did not halt (markers '%s')", c->w.p.stages);
}

static void *map_anon(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Everything after fork(); fills c->w.p.  When a step fails, what is
 * open is left to the _exit() that follows. */
static void probe(probe_ctx *c, const char *device) {
    const sv_kvm_ops *ops = c->ops;
    sv_kvm_probe *p = &c->w.p;

    doing(c, "open");
    int kvm = ops->open(device, O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        int outcome = kvm == -ENOENT ? SV_KVM_ABSENT
                      : kvm == -EACCES || kvm == -EPERM ? SV_KVM_DENIED
                                                          : SV_KVM_UNUSABLE;
        fail(c, outcome, "%s", strerror(-kvm));
        return;
    }
    doing(c, "KVM_GET_API_VERSION");
    int v = ops->ioctl(kvm, KVM_GET_API_VERSION, NULL);
    if (v < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_GET_API_VERSION: %s", strerror(-v));
        return;
    }
    p->api_version = v;
    if (v != SV_KVM_API_VERSION) {
        fail(c, SV_KVM_UNUSABLE, "KVM API version %d, expected %d", v, SV_KVM_API_VERSION);
        return;
    }
    doing(c, "KVM_CREATE_VM");
    int vm = ops->ioctl(kvm, KVM_CREATE_VM, NULL);
    if (vm < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_CREATE_VM: %s", strerror(-vm));
        return;
    }

    /* RAM at 0 for the page tables; the ROM at the top of 4 GiB, read-only
     * as QEMU maps firmware when KVM can (KVM_CAP_READONLY_MEM). */
    uint8_t *ram = map_anon(SV__PROBE_RAM_SIZE);
    uint8_t *rom = map_anon(SV__PROBE_ROM_SIZE);
    if (!ram || !rom) {
        fail(c, SV_KVM_UNUSABLE, "cannot allocate guest memory: %s", strerror(errno));
        return;
    }
    memcpy(rom + SV__PROBE_ROM_SIZE - SV__PROBE_GUEST_SIZE, sv__probe_guest, SV__PROBE_GUEST_SIZE);
    doing(c, "KVM_CHECK_EXTENSION");
    bool readonly = ops->ioctl(kvm, KVM_CHECK_EXTENSION, (void *)(uintptr_t)KVM_CAP_READONLY_MEM) > 0;
    struct kvm_userspace_memory_region regions[] = {
        {.slot = 0, .guest_phys_addr = 0, .memory_size = SV__PROBE_RAM_SIZE, .userspace_addr = (uintptr_t)ram},
        {.slot = 1,
         .flags = readonly ? KVM_MEM_READONLY : 0,
         .guest_phys_addr = SV__PROBE_ROM_BASE,
         .memory_size = SV__PROBE_ROM_SIZE,
         .userspace_addr = (uintptr_t)rom},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(regions); i++) {
        doing(c, "KVM_SET_USER_MEMORY_REGION");
        int r = ops->ioctl(vm, KVM_SET_USER_MEMORY_REGION, &regions[i]);
        if (r < 0) {
            fail(c, SV_KVM_UNUSABLE, "KVM_SET_USER_MEMORY_REGION: %s", strerror(-r));
            return;
        }
    }

    doing(c, "KVM_GET_VCPU_MMAP_SIZE");
    int run_size = ops->ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, NULL);
    if (run_size < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(-run_size));
        return;
    }
    if ((size_t)run_size < sizeof(struct kvm_run)) {
        fail(c, SV_KVM_UNUSABLE, "KVM_GET_VCPU_MMAP_SIZE: %d bytes, less than struct kvm_run", run_size);
        return;
    }
    doing(c, "KVM_CREATE_VCPU");
    int vcpu = ops->ioctl(vm, KVM_CREATE_VCPU, NULL);
    if (vcpu < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_CREATE_VCPU: %s", strerror(-vcpu));
        return;
    }
    void *run = NULL;
    doing(c, "mmap");
    int r = ops->mmap(vcpu, (size_t)run_size, &run);
    if (r < 0) {
        fail(c, SV_KVM_UNUSABLE, "mmap of the vCPU: %s", strerror(-r));
        return;
    }
    if (set_cpuid(c, kvm, vcpu) < 0)
        return;

    /* Real mode at the reset vector, F000:FFF0 with CS based at 0xffff0000:
     * the vCPU's reset state, set explicitly. */
    struct kvm_sregs sregs;
    doing(c, "KVM_GET_SREGS");
    r = ops->ioctl(vcpu, KVM_GET_SREGS, &sregs);
    if (r < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_GET_SREGS: %s", strerror(-r));
        return;
    }
    sregs.cs.selector = 0xf000;
    sregs.cs.base = SV__PROBE_ROM_BASE;
    sregs.cs.limit = 0xffff;
    doing(c, "KVM_SET_SREGS");
    r = ops->ioctl(vcpu, KVM_SET_SREGS, &sregs);
    if (r < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_SET_SREGS: %s", strerror(-r));
        return;
    }
    struct kvm_regs regs = {.rip = 0xfff0, .rflags = 0x2};
    doing(c, "KVM_SET_REGS");
    r = ops->ioctl(vcpu, KVM_SET_REGS, &regs);
    if (r < 0) {
        fail(c, SV_KVM_UNUSABLE, "KVM_SET_REGS: %s", strerror(-r));
        return;
    }

    run_vcpu(c, vcpu, run, (size_t)run_size);
    ops->munmap(run, (size_t)run_size);
    ops->close(vcpu);
    ops->close(vm);
    ops->close(kvm);
}

/* ---- the parent -------------------------------------------------------- */

/* Reaps the child; after SIGKILL it may take a moment, and a process stuck
 * in the kernel may never go: give up after a second rather than hang. */
static int reap(pid_t pid, int *ret_status) {
    for (int i = 0; i < 200; i++) {
        pid_t w = waitpid(pid, ret_status, WNOHANG);
        if (w == pid)
            return 0;
        if (w < 0 && errno != EINTR)
            return -errno;
        nanosleep(&(struct timespec){.tv_nsec = 5 * 1000 * 1000}, NULL);
    }
    return -ETIMEDOUT;
}

int sv_kvm_probe_run(const char *device, const sv_kvm_ops *ops, int timeout_ms, sv_kvm_probe *ret) {
    if (!device)
        device = sv_kvm_device();
    if (!ops)
        ops = &sv_kvm_ops_real;
    if (timeout_ms <= 0)
        timeout_ms = SV_KVM_PROBE_TIMEOUT_MS;

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    _cleanup_close_ int rfd = fds[0];
    pid_t pid = fork(); /* the child ends with _exit(): no stdio buffer is written twice */
    if (pid < 0) {
        int e = errno;
        close(fds[1]);
        return -e;
    }
    if (pid == 0) {
        close(fds[0]);
        probe_ctx c = {.ops = ops, .report_fd = fds[1], .w.p = {.outcome = SV_KVM_UNUSABLE, .api_version = -1}};
        probe(&c, device);
        c.w.final = 1;
        send_snapshot(&c);
        _exit(0);
    }
    close(fds[1]);

    /* Read snapshots until the final one, EOF or the deadline. */
    wire last = {.p = {.outcome = SV_KVM_UNUSABLE, .api_version = -1}};
    union {
        wire w;
        char bytes[sizeof(wire)];
    } buf;
    size_t have = 0;
    bool eof = false, timed_out = false;
    uint64_t deadline = qv_now_ms() + (uint64_t)timeout_ms;
    while (!eof && !last.final) {
        uint64_t now = qv_now_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd pfd = {.fd = rfd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (n == 0)
            continue;
        ssize_t got = read(rfd, buf.bytes + have, sizeof buf - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            eof = true;
            break;
        }
        have += (size_t)got;
        if (have == sizeof buf) {
            last = buf.w;
            have = 0;
        }
    }

    sv_kvm_probe p = last.p;
    int status = 0;
    if (timed_out) {
        kill(pid, SIGKILL);
        if (reap(pid, &status) < 0)
            log_debug("kvm probe: process %d did not go away after SIGKILL", (int)pid);
        p.outcome = SV_KVM_UNUSABLE;
        p.timed_out = true;
        snprintf(p.call, sizeof p.call, "%s", last.doing);
        if (strcmp(last.doing, "KVM_RUN") == 0)
            snprintf(p.detail, sizeof p.detail, "KVM_RUN did not return: %s (killed after %d ms)",
                     stage_story(p.stages), timeout_ms);
        else
            snprintf(p.detail, sizeof p.detail, "%s did not return (killed after %d ms)",
                     last.doing[0] ? last.doing : "the probe", timeout_ms);
    } else {
        int r = reap(pid, &status);
        if (r == -ETIMEDOUT) { /* it said its last word, so this is only a slow exit */
            kill(pid, SIGKILL);
            reap(pid, &status);
        }
        if (!last.final) {
            p.outcome = SV_KVM_UNUSABLE;
            snprintf(p.call, sizeof p.call, "%s", last.doing);
            if (r == 0 && WIFSIGNALED(status))
                snprintf(p.detail, sizeof p.detail, "the probe process died of signal %d (%s) during %s",
                         WTERMSIG(status), strsignal(WTERMSIG(status)), last.doing[0] ? last.doing : "start-up");
            else
                snprintf(p.detail, sizeof p.detail, "the probe process ended without an answer during %s",
                         last.doing[0] ? last.doing : "start-up");
        }
    }
    log_debug("kvm probe of %s: %s: %s", device, sv_kvm_outcome_name(p.outcome), p.detail);
    *ret = p;
    return 0;
}
