/* QEMU capability probe (see qemucaps.h, docs/qemucaps.md).
 *
 * "KVM works" is only believed when a guest really ran under it: /dev/kvm
 * opening, KVM_CREATE_VM succeeding and QMP's query-kvm saying "enabled"
 * all happen on hosts where every guest then dies (nested hosts that
 * reject MSR writes, or cannot run a far jump into protected mode).  So
 * the probe boots a guest of its own that walks through the CPU modes a
 * real kernel uses and asks QEMU to exit with a known status at the end. */
#include "host/qemucaps.h"
#include "host/probeguest.h"

#include "cleanup.h"
#include "run.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/kvm.h>

#define PROBE_ROM_SIZE SV__PROBE_ROM_SIZE /* QEMU wants a -bios image in multiples of 64 KiB */

/* The guest, placed at the last 256 bytes of the ROM: linear 0xffffff00.
 * Assembled with GNU as (.code16/.code32/.code64) and a linker script
 * putting .text at 0xffffff00 and the reset stub at 0xfffffff0.
 * kvmprobe.c runs the same bytes on a bare KVM vCPU (probeguest.h). */
const uint8_t sv__probe_guest[SV__PROBE_GUEST_SIZE] = {
    /* .code16, CS base 0xffff0000, IP 0xff00 */
    0xfa,                                     /* cli                                  */
    0xb0, 0x52, 0xe6, 0xe9,                   /* mov $'R',%al; out %al,$0xe9          */
    0x2e, 0x66, 0x0f, 0x01, 0x16, 0xc8, 0xff, /* lgdtl %cs:0xffc8 (gdtr below)        */
    0x0f, 0x20, 0xc0,                         /* mov %cr0,%eax                        */
    0x66, 0x83, 0xc8, 0x01,                   /* or $1,%eax              (CR0.PE)     */
    0x0f, 0x22, 0xc0,                         /* mov %eax,%cr0                        */
    0x66, 0xea, 0x1e, 0xff, 0xff, 0xff, 0x08, 0x00, /* ljmpl $0x08,$0xffffff1e        */
    /* .code32 at 0xffffff1e */
    0x66, 0xb8, 0x10, 0x00,                   /* mov $0x10,%ax                        */
    0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0,       /* mov %ax,%ds; %es; %ss                */
    0xb0, 0x50, 0xe6, 0xe9,                   /* mov $'P',%al; out %al,$0xe9          */
    0xbf, 0x00, 0x10, 0x00, 0x00,             /* mov $0x1000,%edi                     */
    0x31, 0xc0,                               /* xor %eax,%eax                        */
    0xb9, 0x00, 0x10, 0x00, 0x00,             /* mov $0x1000,%ecx                     */
    0xf3, 0xab,                               /* rep stosl       (zero 0x1000-0x4fff) */
    0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, /* PML4[0]   = 0x2003 */
    0xc7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30, 0x00, 0x00, /* PDPT[0]   = 0x3003 */
    0xc7, 0x05, 0x18, 0x20, 0x00, 0x00, 0x03, 0x40, 0x00, 0x00, /* PDPT[3]   = 0x4003 */
    0xc7, 0x05, 0x00, 0x30, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, /* PD0[0]    = 2M page at 0 */
    0xc7, 0x05, 0xf8, 0x4f, 0x00, 0x00, 0x83, 0x00, 0xe0, 0xff, /* PD3[511]  = 2M page at 0xffe00000 */
    0xb8, 0x00, 0x10, 0x00, 0x00,             /* mov $0x1000,%eax                     */
    0x0f, 0x22, 0xd8,                         /* mov %eax,%cr3                        */
    0x0f, 0x20, 0xe0,                         /* mov %cr4,%eax                        */
    0x83, 0xc8, 0x20,                         /* or $0x20,%eax           (CR4.PAE)    */
    0x0f, 0x22, 0xe0,                         /* mov %eax,%cr4                        */
    0xb9, 0x80, 0x00, 0x00, 0xc0,             /* mov $0xc0000080,%ecx    (EFER)       */
    0x0f, 0x32,                               /* rdmsr                                */
    0x0d, 0x00, 0x01, 0x00, 0x00,             /* or $0x100,%eax          (EFER.LME)   */
    0x0f, 0x30,                               /* wrmsr                                */
    0x0f, 0x20, 0xc0,                         /* mov %cr0,%eax                        */
    0x0d, 0x00, 0x00, 0x00, 0x80,             /* or $0x80000000,%eax     (CR0.PG)     */
    0x0f, 0x22, 0xc0,                         /* mov %eax,%cr0                        */
    0xea, 0x9d, 0xff, 0xff, 0xff, 0x18, 0x00, /* ljmp $0x18,$0xffffff9d               */
    /* .code64 at 0xffffff9d */
    0xb0, 0x4c, 0xe6, 0xe9,                   /* mov $'L',%al; out %al,$0xe9          */
    0xb0, 0x2a, 0xe6, 0xf4,                   /* mov $0x2a,%al; out %al,$0xf4 (exit)  */
    0xf4,                                     /* 1: hlt                               */
    0xeb, 0xfd,                               /* jmp 1b                               */
    /* GDT at 0xffffffa8 */
    [0xa8] = 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* null                  */
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00,          /* 0x08 code, 32-bit flat */
    0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,          /* 0x10 data, flat        */
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00,          /* 0x18 code, 64-bit      */
    /* gdtr at 0xffffffc8: limit 0x1f, base 0xffffffa8 */
    0x1f, 0x00, 0xa8, 0xff, 0xff, 0xff,
    /* reset vector at 0xfffffff0 */
    [0xf0] = 0xe9, 0x0d, 0xff,                /* jmp 0xff00                           */
    0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4, 0xf4,
};

static const char *tmp_dir(void) {
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

/* Writes the ROM image to a new temporary file; path into buf. */
static int write_payload(char *buf, size_t size, qv_error *err) {
    if ((size_t)snprintf(buf, size, "%s/qvisor-probe-XXXXXX", tmp_dir()) >= size)
        return qv_error_set(err, ENAMETOOLONG, "temporary directory path too long");
    _cleanup_close_ int fd = mkostemp(buf, O_CLOEXEC);
    if (fd < 0)
        return qv_error_set(err, errno, "cannot create the probe guest in %s: %s", tmp_dir(), strerror(errno));
    _cleanup_free_ uint8_t *rom = calloc(1, PROBE_ROM_SIZE);
    if (!rom) {
        unlink(buf);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    memcpy(rom + PROBE_ROM_SIZE - sizeof sv__probe_guest, sv__probe_guest, sizeof sv__probe_guest);
    size_t done = 0;
    while (done < PROBE_ROM_SIZE) {
        ssize_t n = write(fd, rom + done, PROBE_ROM_SIZE - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            unlink(buf);
            return qv_error_set(err, e, "cannot write the probe guest %s: %s", buf, strerror(e));
        }
        done += (size_t)n;
    }
    return 0;
}

/* The first line of QEMU's stderr that says something: the program-name
 * prefix ("qemu-system-x86_64: ") and "error: " removed, warnings
 * (unsupported CPUID bits and the like) skipped.  "" when there is none. */
static void stderr_reason(const char *binary, const char *text, char *buf, size_t size) {
    const char *slash = strrchr(binary, '/');
    const char *prog = slash ? slash + 1 : binary;
    size_t plen = strlen(prog);
    buf[0] = '\0';
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        const char *next = nl ? nl + 1 : NULL;
        if (len > plen + 1 && strncmp(line, prog, plen) == 0 && line[plen] == ':' && line[plen + 1] == ' ') {
            line += plen + 2;
            len -= plen + 2;
        }
        while (len && isspace((unsigned char)*line)) {
            line++;
            len--;
        }
        while (len && isspace((unsigned char)line[len - 1]))
            len--;
        if (len >= 6 && strncmp(line, "error:", 6) == 0) {
            line += 6;
            len -= 6;
            while (len && *line == ' ') {
                line++;
                len--;
            }
        }
        if (len > 0 && strncmp(line, "warning:", 8) != 0) {
            snprintf(buf, size, "%.*s", (int)len, line);
            return;
        }
        line = next;
    }
}

static const char *stage_story(const char *stages) {
    if (strchr(stages, 'L'))
        return "the guest reached long mode, yet QEMU did not exit";
    if (strchr(stages, 'P'))
        return "the guest reached protected mode, then stopped making progress entering long mode";
    if (strchr(stages, 'R'))
        return "the guest ran real-mode code, then stopped making progress entering protected mode";
    return "no guest instruction ran";
}

static void collect_stages(const char *out, char *stages, size_t size) {
    size_t n = 0;
    for (const char *p = out; *p && n + 1 < size; p++)
        if (*p == 'R' || *p == 'P' || *p == 'L')
            stages[n++] = *p;
    stages[n] = '\0';
}

static void describe_failure(const char *binary, const qv_run_result *res, bool timed_out, int timeout_ms,
                             sv_qemu_guest_run *g) {
    char reason[200];
    stderr_reason(binary, res->err, reason, sizeof reason);
    /* QEMU stops the VM on a KVM internal error and waits, so this one
     * usually comes with the timeout. */
    const char *internal = strstr(res->err, "KVM internal error");
    if (internal) {
        if (strstr(internal, "emulation failure"))
            snprintf(g->detail, sizeof g->detail, "KVM internal error: emulation failure");
        else
            snprintf(g->detail, sizeof g->detail, "%.*s", (int)strcspn(internal, "\n"), internal);
    } else if (timed_out) {
        if (reason[0])
            snprintf(g->detail, sizeof g->detail, "%s (QEMU killed after %d ms)", reason, timeout_ms);
        else
            snprintf(g->detail, sizeof g->detail, "%s (QEMU killed after %d ms)", stage_story(g->stages),
                     timeout_ms);
    } else if (WIFSIGNALED(res->status)) {
        int sig = WTERMSIG(res->status);
        if (sig == SIGABRT)
            snprintf(g->detail, sizeof g->detail, "QEMU aborted: %s", reason[0] ? reason : stage_story(g->stages));
        else
            snprintf(g->detail, sizeof g->detail, "QEMU killed by signal %d (%s): %s", sig, strsignal(sig),
                     reason[0] ? reason : stage_story(g->stages));
    } else if (WIFEXITED(res->status) && WEXITSTATUS(res->status) == 0 && !reason[0]) {
        /* -no-reboot turns a guest reset (triple fault) into a clean exit */
        snprintf(g->detail, sizeof g->detail, "the guest reset (triple fault?): %s", stage_story(g->stages));
    } else {
        char how[64];
        qv_run_describe(res, how, sizeof how);
        snprintf(g->detail, sizeof g->detail, "QEMU %s: %s", how, reason[0] ? reason : stage_story(g->stages));
    }
}

static int run_guest(const char *binary, const char *payload, bool kvm, bool sandbox, int timeout_ms,
                     sv_qemu_guest_run *ret, qv_error *err) {
    const char *argv[32];
    size_t n = 0;
    argv[n++] = binary;
    argv[n++] = "-machine";
    argv[n++] = kvm ? "q35,accel=kvm" : "q35,accel=tcg";
    argv[n++] = "-cpu";
    argv[n++] = kvm ? "host" : "max"; /* as qemuargv.c */
    argv[n++] = "-smp";
    argv[n++] = "1";
    argv[n++] = "-m";
    argv[n++] = "32";
    argv[n++] = "-nodefaults";
    argv[n++] = "-no-user-config";
    argv[n++] = "-display";
    argv[n++] = "none";
    argv[n++] = "-no-reboot";
    argv[n++] = "-bios";
    argv[n++] = payload;
    argv[n++] = "-device";
    argv[n++] = "isa-debug-exit,iobase=0xf4,iosize=0x04";
    argv[n++] = "-debugcon";
    argv[n++] = "stdio";
    if (sandbox) {
        argv[n++] = "-sandbox";
        argv[n++] = SV_QEMU_PROBE_SANDBOX;
    }
    argv[n] = NULL;

    qv_run_result res;
    bool timed_out;
    int r = qv_run_bounded((char *const *)argv, timeout_ms, NULL, NULL, &res, &timed_out);
    if (r < 0)
        return qv_error_set(err, r, "cannot run %s: %s", binary, strerror(-r));

    sv_qemu_guest_run g = {.timed_out = timed_out, .exit_status = -1};
    collect_stages(res.out, g.stages, sizeof g.stages);
    if (!timed_out && WIFEXITED(res.status))
        g.exit_status = WEXITSTATUS(res.status);
    if (g.exit_status == SV_QEMU_PROBE_EXIT_STATUS) {
        g.completed = true;
        snprintf(g.detail, sizeof g.detail, "guest reached long mode");
    } else {
        describe_failure(binary, &res, timed_out, timeout_ms, &g);
    }
    qv_run_result_free(&res);
    *ret = g;
    return 0;
}

int sv_qemu_probe_guest(const char *binary, bool kvm, bool sandbox, int timeout_ms, sv_qemu_guest_run *ret,
                        qv_error *err) {
    char payload[PATH_MAX];
    int r = write_payload(payload, sizeof payload, err);
    if (r < 0)
        return r;
    r = run_guest(binary, payload, kvm, sandbox, timeout_ms, ret, err);
    unlink(payload);
    return r;
}

/* The cheap half of the KVM check: the device, its API version, a VM. */
static bool kvm_device_usable(char *detail, size_t size) {
    _cleanup_close_ int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(detail, size, "/dev/kvm: %m");
        return false;
    }
    int v = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (v < 0) {
        snprintf(detail, size, "/dev/kvm: KVM_GET_API_VERSION: %m");
        return false;
    }
    if (v != KVM_API_VERSION) {
        snprintf(detail, size, "/dev/kvm: KVM API version %d, expected %d", v, KVM_API_VERSION);
        return false;
    }
    _cleanup_close_ int vm = ioctl(fd, KVM_CREATE_VM, 0);
    if (vm < 0) {
        snprintf(detail, size, "/dev/kvm: cannot create a VM (KVM_CREATE_VM): %m");
        return false;
    }
    return true;
}

/* "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" */
static int parse_version(const char *binary, const char *out, sv_qemu_caps *caps, qv_error *err) {
    size_t first = strcspn(out, "\n");
    const char *v = strstr(out, "version ");
    if (!v || (size_t)(v - out) >= first)
        return qv_error_set(err, EPROTO, "'%s -version' printed no QEMU version: '%.*s'", binary,
                            (int)(first > 200 ? 200 : first), out);
    v += strlen("version ");
    size_t len = (size_t)(out + first - v);
    while (len && isspace((unsigned char)v[len - 1]))
        len--;
    int major, minor, micro = 0, used = 0;
    if (sscanf(v, "%d.%d%n", &major, &minor, &used) != 2 || used == 0)
        return qv_error_set(err, EPROTO, "'%s -version' printed an unreadable version: '%.*s'", binary,
                            (int)(len > 200 ? 200 : len), v);
    if (v[used] == '.' && sscanf(v + used + 1, "%d", &micro) != 1)
        micro = 0;
    caps->major = major;
    caps->minor = minor;
    caps->micro = micro;
    snprintf(caps->version, sizeof caps->version, "%.*s", (int)len, v);
    return 0;
}

static int probe_version(const char *binary, sv_qemu_caps *caps, qv_error *err) {
    char *argv[] = {(char *)binary, (char *)"-version", NULL};
    qv_run_result res;
    int r = qv_run(argv, SV_QEMU_PROBE_VERSION_TIMEOUT_MS, NULL, NULL, &res);
    if (r == -ETIMEDOUT)
        return qv_error_set(err, ETIMEDOUT, "'%s -version' did not finish within %d ms", binary,
                            SV_QEMU_PROBE_VERSION_TIMEOUT_MS);
    if (r < 0)
        return qv_error_set(err, r, "cannot run QEMU '%s': %s", binary, strerror(-r));
    if (!qv_run_ok(&res)) {
        char how[64], reason[200];
        qv_run_describe(&res, how, sizeof how);
        stderr_reason(binary, res.err, reason, sizeof reason);
        qv_run_result_free(&res);
        return qv_error_set(err, EPROTO, "'%s -version' %s%s%s", binary, how, reason[0] ? ": " : "", reason);
    }
    r = parse_version(binary, res.out, caps, err);
    qv_run_result_free(&res);
    return r;
}

size_t sv_qemu_cpu_models_parse(const char *out, sv_qemu_caps *caps) {
    size_t off = 0, n = 0;
    caps->cpu_models[0] = '\0';
    const char *list = strstr(out, "Available CPUs:");
    for (const char *line = list ? strchr(list, '\n') : NULL; line && *++line && *line != '\n';
         line = strchr(line, '\n')) {
        if (strncmp(line, "x86 ", 4) != 0)
            continue;
        const char *name = line + 4;
        while (*name == ' ')
            name++;
        size_t len = strcspn(name, " \t\n");
        if (len == 0 || off + len + 2 > sizeof caps->cpu_models)
            continue;
        memcpy(caps->cpu_models + off, name, len);
        off += len;
        caps->cpu_models[off++] = '\0';
        caps->cpu_models[off] = '\0';
        n++;
    }
    caps->n_cpu_models = n;
    return n;
}

bool sv_qemu_caps_has_cpu_model(const sv_qemu_caps *caps, const char *model) {
    for (const char *m = caps->cpu_models; *m; m += strlen(m) + 1)
        if (strcmp(m, model) == 0)
            return true;
    return false;
}

int sv_qemu_cpu_model_check(const sv_qemu_caps *caps, bool kvm, const char *model, qv_error *err) {
    if (strcmp(model, "host") == 0 && !kvm)
        return qv_error_set(err, EOPNOTSUPP,
                            "cpu_model host needs KVM, and VMs on this node run under TCG (KVM: %s); use max, a "
                            "named model, or leave cpu_model unset (host under KVM, max under TCG)",
                            caps->kvm_detail[0] ? caps->kvm_detail : "not probed");
    if (caps->n_cpu_models == 0)
        return qv_error_set(err, EPROTO, "cannot check cpu_model '%s': QEMU listed no CPU models (%s)", model,
                            caps->cpu_models_detail[0] ? caps->cpu_models_detail : "-cpu help printed none");
    if (sv_qemu_caps_has_cpu_model(caps, model))
        return 0;
    /* similar: the same name in another case, or names that contain it */
    char similar[256] = "";
    size_t off = 0, n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (const char *m = caps->cpu_models; *m && n < 5; m += strlen(m) + 1) {
            bool same = strcasecmp(m, model) == 0;
            if ((pass == 0 && !same) || (pass == 1 && (same || !strcasestr(m, model))))
                continue;
            int w = snprintf(similar + off, sizeof similar - off, "%s%s", n ? ", " : "", m);
            if (w < 0 || (size_t)w >= sizeof similar - off)
                break;
            off += (size_t)w;
            n++;
        }
    return qv_error_set(err, EINVAL, "cpu_model '%s': QEMU %s has no such CPU model%s%s (the list: %s -cpu help)",
                        model, caps->version, n ? "; similar: " : "", similar, "qemu-system-x86_64");
}

/* `BINARY -cpu help`: the CPU models; no list is not fatal (only a VM
 * with a named cpu_model needs it). */
static void probe_cpu_models(const char *binary, sv_qemu_caps *caps) {
    char *argv[] = {(char *)binary, (char *)"-cpu", (char *)"help", NULL};
    qv_run_result res;
    int r = qv_run(argv, SV_QEMU_PROBE_VERSION_TIMEOUT_MS, NULL, NULL, &res);
    if (r < 0) {
        snprintf(caps->cpu_models_detail, sizeof caps->cpu_models_detail, "'%s -cpu help': %s", binary,
                 strerror(-r));
        return;
    }
    if (!qv_run_ok(&res)) {
        char how[64];
        qv_run_describe(&res, how, sizeof how);
        snprintf(caps->cpu_models_detail, sizeof caps->cpu_models_detail, "'%s -cpu help' %s", binary, how);
    } else if (sv_qemu_cpu_models_parse(res.out, caps) == 0) {
        snprintf(caps->cpu_models_detail, sizeof caps->cpu_models_detail, "'%s -cpu help' listed no x86 models",
                 binary);
    }
    qv_run_result_free(&res);
}

int sv_qemu_caps_probe(const char *binary, bool want_kvm, sv_qemu_caps *ret, qv_error *err) {
    sv_qemu_caps caps = {0};
    int r = probe_version(binary, &caps, err);
    if (r < 0)
        return r;
    probe_cpu_models(binary, &caps);

    char payload[PATH_MAX];
    r = write_payload(payload, sizeof payload, err);
    if (r < 0)
        return r;

    /* TCG with the sandbox: proves the sandbox and the payload on this QEMU */
    sv_qemu_guest_run g;
    r = run_guest(binary, payload, false, true, SV_QEMU_PROBE_GUEST_TIMEOUT_MS, &g, err);
    if (r < 0)
        goto out;
    caps.sandbox = g.completed;
    snprintf(caps.sandbox_detail, sizeof caps.sandbox_detail, "%s", g.completed ? "sandbox works" : g.detail);

    if (!want_kvm) {
        snprintf(caps.kvm_detail, sizeof caps.kvm_detail, "not probed (accelerator: tcg)");
    } else if (kvm_device_usable(caps.kvm_detail, sizeof caps.kvm_detail)) {
        r = run_guest(binary, payload, true, false, SV_QEMU_PROBE_GUEST_TIMEOUT_MS, &g, err);
        if (r < 0)
            goto out;
        caps.kvm = g.completed;
        snprintf(caps.kvm_detail, sizeof caps.kvm_detail, "%s", g.completed ? "KVM works" : g.detail);
    }
    *ret = caps;
    r = 0;
out:
    unlink(payload);
    return r;
}

int sv_qemu_accel_resolve(const char *accel, const sv_qemu_caps *caps, bool *ret_kvm, char *warning,
                          size_t warning_len, qv_error *err) {
    static const char *const names[] = {"auto", "kvm", "tcg", NULL};
    int which = accel ? qv_string_index(names, accel) : -EINVAL;
    if (which < 0)
        return qv_error_set(err, EINVAL, "unknown accelerator '%s' (expected auto, kvm or tcg)",
                            accel ? accel : "(null)");
    bool works = caps && caps->kvm;
    const char *detail = caps ? caps->kvm_detail : "not probed";
    if (which == 1 && !works)
        return qv_error_set(err, ENODEV, "accelerator kvm is configured but KVM is unusable on this node: %s",
                            detail);
    if (warning && warning_len) {
        if (which == 0 && !works)
            snprintf(warning, warning_len,
                     "KVM is unusable on this node (%s); accelerator auto falls back to TCG, which is much slower",
                     detail);
        else
            warning[0] = '\0';
    }
    *ret_kvm = which != 2 && works;
    return 0;
}

static int stamp_path(const char *path, sv_qemu_binary_stamp *ret) {
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return -ENOENT;
    *ret = (sv_qemu_binary_stamp){
        .dev = st.st_dev,
        .ino = st.st_ino,
        .size = st.st_size,
        .mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
        .ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec,
    };
    return 0;
}

void sv_qemu_binary_stamp_get(const char *binary, sv_qemu_binary_stamp *ret) {
    *ret = (sv_qemu_binary_stamp){0};
    if (strchr(binary, '/')) {
        stamp_path(binary, ret);
        return;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, ":");
        char full[PATH_MAX];
        if (snprintf(full, sizeof full, "%.*s/%s", (int)n, n ? p : ".", binary) < (int)sizeof full &&
            access(full, X_OK) == 0 && stamp_path(full, ret) == 0)
            return;
        p += n;
        if (*p == ':')
            p++;
    }
}

bool sv_qemu_binary_stamp_equal(const sv_qemu_binary_stamp *a, const sv_qemu_binary_stamp *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns &&
           a->ctime_ns == b->ctime_ns;
}
