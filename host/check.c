/* `qvisor check` items (see check.h, docs/check.md). */
#include "host/check.h"

#include "cleanup.h"
#include "log.h"
#include "run.h"
#include "sysroot.h"
#include "util.h"
#include "host/firmware.h"
#include "vfio/vfio.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QEMU_IMG_TIMEOUT_MS 1500

const char *sv_check_status_name(int status) {
    switch (status) {
    case SV_CHECK_OK:
        return "ok";
    case SV_CHECK_WARN:
        return "warn";
    default:
        return "fail";
    }
}

int sv_check_parse_needs(const char *list, unsigned *needs) {
    static const char *const names[] = {"kvm", "vfio", "hugepages", "uefi", NULL};
    static const unsigned bits[] = {SV_NEED_KVM, SV_NEED_VFIO, SV_NEED_HUGEPAGES, SV_NEED_UEFI};
    unsigned add = 0;
    const char *p = list;
    do {
        size_t len = strcspn(p, ",");
        char word[32];
        if (len == 0 || len >= sizeof word)
            return -EINVAL;
        memcpy(word, p, len);
        word[len] = '\0';
        int i = qv_string_index(names, word);
        if (i < 0)
            return -EINVAL;
        add |= bits[i];
        p += len;
    } while (*p++ == ',');
    *needs |= add;
    return 0;
}

bool sv_check_report_ok(const sv_check_report *r) {
    for (size_t i = 0; i < r->n; i++)
        if (r->items[i].status == SV_CHECK_FAIL)
            return false;
    return true;
}

void sv_check_report_clear(sv_check_report *r) {
    free(r->items);
    r->items = NULL;
    r->n = 0;
}

/* Appends an item; detail from fmt, hint as given (NULL: none). */
sv_check_item *sv_check_add(sv_check_report *r, const char *name, int status, const char *hint, const char *fmt, ...) {
    sv_check_item *items = realloc(r->items, (r->n + 1) * sizeof *items);
    if (!items)
        abort(); /* a few kilobytes; as output.c does */
    r->items = items;
    sv_check_item *it = &items[r->n++];
    memset(it, 0, sizeof *it);
    snprintf(it->name, sizeof it->name, "%s", name);
    it->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->detail, sizeof it->detail, fmt, ap);
    va_end(ap);
    snprintf(it->hint, sizeof it->hint, "%s", hint ? hint : "");
    return it;
}

static int severity(const sv_check_opts *o, unsigned need) {
    return (o->needs & need) ? SV_CHECK_FAIL : SV_CHECK_WARN;
}

static bool kvm_required(const sv_check_opts *o) {
    return (o->needs & SV_NEED_KVM) || o->config->accelerator == SV_ACCEL_KVM;
}

/* ---- QEMU and qemu-img ---------------------------------------------------- */

void sv_check_qemu(sv_check_report *r, const sv_check_opts *o, sv_qemu_caps *ret_caps, bool *ret_ran) {
    const char *bin = o->config->qemu_binary;
    sv_qemu_caps caps;
    qv_error err = {0};
    /* KVM always: the accel item shows QEMU's view even with accelerator tcg */
    if (sv_qemu_caps_probe(bin, true, &caps, &err) < 0) {
        sv_check_add(r, "qemu", SV_CHECK_FAIL,
            "install QEMU (apt-get install qemu-system-x86) or point qemu.binary in the config at it", "%s",
            err.msg);
        *ret_ran = false;
        return;
    }
    if (caps.sandbox)
        sv_check_add(r, "qemu", SV_CHECK_OK, NULL, "%s %s, seccomp sandbox works", bin, caps.version);
    else
        sv_check_add(r, "qemu", SV_CHECK_WARN, "VMs run without -sandbox (no seccomp filter around QEMU)",
            "%s %s, seccomp sandbox unusable: %s", bin, caps.version, caps.sandbox_detail);
    *ret_caps = caps;
    *ret_ran = true;
}

void sv_check_accel(sv_check_report *r, const sv_check_opts *o, const sv_qemu_caps *caps) {
    const char *accel = sv_accel_to_string(o->config->accelerator);
    if (!caps) {
        sv_check_add(r, "accel", kvm_required(o) ? SV_CHECK_FAIL : SV_CHECK_WARN, "see the qemu line",
            "%s: unknown, QEMU does not run", accel);
        return;
    }
    bool kvm = false;
    char warning[512];
    qv_error err = {0};
    int rc = sv_qemu_accel_resolve(accel, caps, &kvm, warning, sizeof warning, &err);
    if (rc < 0) {
        sv_check_add(r, "accel", SV_CHECK_FAIL,
            "VMs will not start: fix KVM (see the kvm line), or set qemu.accelerator: auto to fall back to TCG",
            "%s", err.msg);
        return;
    }
    if (kvm) {
        sv_check_add(r, "accel", SV_CHECK_OK, NULL, "%s: VMs use KVM (QEMU ran a guest under KVM with -cpu host)", accel);
        return;
    }
    if (o->config->accelerator == SV_ACCEL_TCG) {
        if (o->needs & SV_NEED_KVM)
            sv_check_add(r, "accel", SV_CHECK_FAIL, "set qemu.accelerator: auto (or kvm) in the config",
                "tcg is configured: VMs do not use KVM (QEMU under KVM: %s)", caps->kvm_detail);
        else
            sv_check_add(r, "accel", SV_CHECK_OK, NULL, "tcg is configured: VMs use TCG (QEMU under KVM: %s)",
                caps->kvm_detail);
        return;
    }
    /* auto, falling back: the daemon's own warning */
    sv_check_add(r, "accel", severity(o, SV_NEED_KVM),
        "TCG runs guests, but much slower than KVM; the kvm line tells whether the kernel side works", "%s",
        warning);
}

void sv_check_qemu_img(sv_check_report *r, const sv_check_opts *o) {
    const char *bin = o->config->qemu_img_binary;
    static const char hint[] = "install qemu-utils (apt-get install qemu-utils) or set qemu.img_binary";
    char *argv[] = {(char *)bin, (char *)"--version", NULL};
    qv_run_result res;
    int rc = qv_run(argv, QEMU_IMG_TIMEOUT_MS, NULL, NULL, &res);
    if (rc == -ETIMEDOUT) {
        sv_check_add(r, "qemu-img", SV_CHECK_FAIL, hint, "'%s --version' did not finish within %d ms", bin,
            QEMU_IMG_TIMEOUT_MS);
        return;
    }
    if (rc < 0) {
        sv_check_add(r, "qemu-img", SV_CHECK_FAIL, hint, "cannot run '%s': %s", bin, strerror(-rc));
        return;
    }
    size_t first = strcspn(res.out, "\n");
    const char *v = strstr(res.out, "version ");
    if (!qv_run_ok(&res) || !v || (size_t)(v - res.out) >= first) {
        char how[64];
        qv_run_describe(&res, how, sizeof how);
        sv_check_add(r, "qemu-img", SV_CHECK_FAIL, hint, "'%s --version' %s and printed no version", bin, how);
    } else {
        v += strlen("version ");
        sv_check_add(r, "qemu-img", SV_CHECK_OK, NULL, "%s %.*s", bin, (int)(res.out + first - v), v);
    }
    qv_run_result_free(&res);
}

/* ---- KVM ----------------------------------------------------------------- */

void sv_check_kvm(sv_check_report *r, const sv_check_opts *o) {
    const char *dev = o->kvm_device ? o->kvm_device : sv_kvm_device();
    int sev = kvm_required(o) ? SV_CHECK_FAIL : SV_CHECK_WARN;
    const char *consequence = o->config->accelerator == SV_ACCEL_TCG ? "qemu.accelerator is tcg: VMs do not use KVM"
                              : o->config->accelerator == SV_ACCEL_AUTO
                                  ? "with accelerator auto, VMs will run with TCG, much slower"
                                  : "with accelerator kvm, VMs will not start";
    char hint[1024];
    sv_kvm_probe p;
    int rc = sv_kvm_probe_run(dev, o->kvm_ops, o->kvm_timeout_ms, &p);
    if (rc < 0) {
        sv_check_add(r, "kvm", sev, consequence, "cannot run the KVM probe: %s", strerror(-rc));
        return;
    }
    switch (p.outcome) {
    case SV_KVM_WORKS:
        sv_check_add(r, "kvm", SV_CHECK_OK, NULL, "%s %s", dev, p.detail);
        return;
    case SV_KVM_ABSENT:
        snprintf(hint, sizeof hint,
                 "load kvm_intel or kvm_amd (modprobe kvm_intel), and enable virtualisation (VT-x/AMD-V) in "
                 "the firmware setup; %s",
                 consequence);
        sv_check_add(r, "kvm", sev, hint, "no %s", dev);
        return;
    case SV_KVM_DENIED:
        snprintf(hint, sizeof hint, "run as root, or as a member of the group that owns %s (usually kvm); %s", dev,
                 consequence);
        sv_check_add(r, "kvm", sev, hint, "%s: %s", dev, p.detail);
        return;
    default:
        if (strcmp(p.call, "open") == 0) /* ENXIO, ENODEV: a node without a driver */
            snprintf(hint, sizeof hint, "the device node exists but no KVM module answers: modprobe kvm_intel "
                                        "or kvm_amd; %s", consequence);
        else if (strcmp(p.call, "KVM_RUN") == 0)
            snprintf(hint, sizeof hint,
                     "the kernel offers KVM, but a vCPU cannot run the start-up code every guest runs (typical "
                     "of nested virtualisation without full support); %s",
                     consequence);
        else
            snprintf(hint, sizeof hint, "the kernel log (dmesg) may say why; %s", consequence);
        sv_check_add(r, "kvm", sev, hint, "%s present but unusable: %s", dev, p.detail);
        return;
    }
}

/* ---- /proc: CPU and kernel command line ---------------------------------- */

/* The value of the first "key\t: value" line of cpuinfo, in buf. */
static bool cpuinfo_field(const char *cpuinfo, const char *key, char *buf, size_t size) {
    size_t klen = strlen(key);
    for (const char *line = cpuinfo; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > klen && strncmp(line, key, klen) == 0 && (line[klen] == ' ' || line[klen] == '\t' ||
                                                            line[klen] == ':')) {
            const char *colon = memchr(line, ':', len);
            if (colon) {
                const char *v = colon + 1;
                while (*v == ' ' || *v == '\t')
                    v++;
                snprintf(buf, size, "%.*s", (int)(line + len - v), v);
                return true;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return false;
}

/* Whether a space-separated list has `word` as a whole word. */
static bool has_word(const char *list, const char *word) {
    size_t wl = strlen(word);
    for (const char *p = list; (p = strstr(p, word)); p += wl) {
        bool start = p == list || isspace((unsigned char)p[-1]);
        bool end = p[wl] == '\0' || isspace((unsigned char)p[wl]);
        if (start && end)
            return true;
    }
    return false;
}

typedef enum { VENDOR_UNKNOWN, VENDOR_INTEL, VENDOR_AMD } cpu_vendor;

static cpu_vendor vendor_of(const char *cpuinfo) {
    char v[64];
    if (!cpuinfo || !cpuinfo_field(cpuinfo, "vendor_id", v, sizeof v))
        return VENDOR_UNKNOWN;
    if (strcmp(v, "GenuineIntel") == 0)
        return VENDOR_INTEL;
    if (strcmp(v, "AuthenticAMD") == 0 || strcmp(v, "HygonGenuine") == 0)
        return VENDOR_AMD;
    return VENDOR_UNKNOWN;
}

void sv_check_cpu(sv_check_report *r, const sv_check_opts *o) {
    (void)o;
    _cleanup_free_ char *cpuinfo = NULL;
    int rc = qv_sysroot_read("proc/cpuinfo", &cpuinfo, NULL);
    if (rc < 0) {
        sv_check_add(r, "cpu", SV_CHECK_WARN, NULL, "cannot read /proc/cpuinfo: %s", strerror(-rc));
        return;
    }
    char flags[8192];
    if (!cpuinfo_field(cpuinfo, "flags", flags, sizeof flags))
        flags[0] = '\0';
    if (has_word(flags, "vmx")) {
        sv_check_add(r, "cpu", SV_CHECK_OK, NULL, "vmx (Intel VT-x)");
    } else if (has_word(flags, "svm")) {
        sv_check_add(r, "cpu", SV_CHECK_OK, NULL, "svm (AMD-V)");
    } else {
        cpu_vendor v = vendor_of(cpuinfo);
        const char *what = v == VENDOR_INTEL ? "VT-x" : v == VENDOR_AMD ? "AMD-V (SVM)" : "VT-x or AMD-V";
        char hint[512];
        snprintf(hint, sizeof hint,
                 "enable %s in the firmware setup; inside a VM the host must offer nested virtualisation "
                 "(the kvm line tells whether KVM works anyway)",
                 what);
        sv_check_add(r, "cpu", SV_CHECK_WARN, hint, "no vmx or svm flag in /proc/cpuinfo");
    }
}

/* Entries of a directory below the sysfs root, without "." and "..";
 * sorted.  Returns the count or a negative errno; *ret is freed with
 * free_names(). */
static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_dir(const char *rel, char ***ret) {
    int fd = qv_sysroot_open(rel, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return fd;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return -e;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char **grown = realloc(names, (n + 2) * sizeof *grown);
        char *name = strdup(de->d_name);
        if (!grown || !name)
            abort();
        names = grown;
        names[n++] = name;
        names[n] = NULL;
    }
    closedir(d);
    if (n > 1)
        qv_qsort(names, n, sizeof *names, cmp_names);
    *ret = names;
    return (int)n;
}

static void free_names(char **names) {
    for (char **p = names; p && *p; p++)
        free(*p);
    free(names);
}
QV_DEFINE_TRIVIAL_CLEANUP(char **, free_names)

void sv_check_iommu(sv_check_report *r, const sv_check_opts *o) {
    _cleanup_(free_namesp) char **groups = NULL;
    int n = list_dir("sys/kernel/iommu_groups", &groups);
    if (n > 0) {
        sv_check_add(r, "iommu", SV_CHECK_OK, NULL, "%d IOMMU group%s", n, n == 1 ? "" : "s");
        return;
    }
    _cleanup_free_ char *cpuinfo = NULL;
    qv_sysroot_read("proc/cpuinfo", &cpuinfo, NULL);
    char cmdline[4096] = "";
    qv_sysroot_read_line("proc/cmdline", cmdline, sizeof cmdline);
    cpu_vendor v = vendor_of(cpuinfo);
    bool pt = has_word(cmdline, "iommu=pt");
    const char *pt_note = pt ? "iommu=pt is set" : "add iommu=pt too (host devices skip translation)";
    char hint[1024];
    static const char *const off_params[] = {"iommu=off", "intel_iommu=off", "amd_iommu=off"};
    const char *off = NULL;
    for (size_t i = 0; i < QV_ARRAY_SIZE(off_params) && !off; i++)
        if (has_word(cmdline, off_params[i]))
            off = off_params[i];
    if (off) {
        snprintf(hint, sizeof hint, "the kernel command line has %s: remove it%s, and reboot", off,
                 v == VENDOR_AMD ? "" : ", add intel_iommu=on iommu=pt");
    } else if (v == VENDOR_AMD) {
        snprintf(hint, sizeof hint,
                 "enable the IOMMU (AMD-Vi, often just \"IOMMU\") in the firmware setup: Linux turns it on by "
                 "itself when the firmware has it (there is no amd_iommu=on); %s",
                 pt_note);
    } else if (has_word(cmdline, "intel_iommu=on")) {
        snprintf(hint, sizeof hint,
                 "intel_iommu=on is already on the kernel command line, yet there are no groups: enable VT-d "
                 "in the firmware setup; %s",
                 pt_note);
    } else {
        snprintf(hint, sizeof hint,
                 "%sadd intel_iommu=on%s to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, "
                 "update-grub, reboot; /proc/cmdline has no intel_iommu=on now) and enable VT-d in the firmware setup",
                 v == VENDOR_UNKNOWN ? "Intel: " : "", pt ? "" : " iommu=pt");
        if (v == VENDOR_UNKNOWN)
            snprintf(hint + strlen(hint), sizeof hint - strlen(hint),
                     "; AMD: enable the IOMMU (AMD-Vi) in the firmware setup, Linux turns it on by itself");
    }
    sv_check_add(r, "iommu", severity(o, SV_NEED_VFIO), hint,
        "no IOMMU groups in /sys/kernel/iommu_groups: the IOMMU is off, devices cannot be passed through");
}

/* ---- vfio ---------------------------------------------------------------- */

void sv_check_vfio_modules(sv_check_report *r, const sv_check_opts *o) {
    bool vfio = qv_sysroot_exists("sys/module/vfio") > 0;
    bool vfio_pci = qv_sysroot_exists("sys/module/vfio_pci") > 0;
    if (vfio && vfio_pci) {
        sv_check_add(r, "vfio", SV_CHECK_OK, NULL, "vfio and vfio_pci loaded");
        return;
    }
    sv_check_add(r, "vfio", severity(o, SV_NEED_VFIO),
        "modprobe vfio-pci (it loads vfio too); to load it at every boot: echo vfio-pci > "
        "/etc/modules-load.d/vfio-pci.conf",
        "%s not loaded", vfio ? "vfio_pci" : vfio_pci ? "vfio" : "vfio and vfio_pci");
}

/* "VGA compatible controller", from BDF/class; "" when unreadable. */
static const char *class_name_of(const char *bdf, unsigned *ret_class) {
    char rel[PATH_MAX], line[32];
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/class", bdf);
    if (qv_sysroot_read_line(rel, line, sizeof line) < 0)
        return "";
    char *end;
    unsigned long c = strtoul(line, &end, 16);
    if (end == line)
        return "";
    if (ret_class)
        *ret_class = (unsigned)c;
    return vfio_class_name((unsigned)c);
}

static void give_back_hint(char *buf, size_t size, const char *bdf, const char *driver) {
    snprintf(buf, size,
             "if nothing uses it, give it back to %s: echo %s > /sys/bus/pci/drivers/vfio-pci/unbind; echo > "
             "/sys/bus/pci/devices/%s/driver_override; echo %s > /sys/bus/pci/drivers_probe",
             driver && *driver ? driver : "its host driver", bdf, bdf, bdf);
}

void sv_check_vfio_devices(sv_check_report *r, const sv_check_opts *o) {
    _cleanup_(free_namesp) char **entries = NULL;
    int n = list_dir("sys/bus/pci/drivers/" VFIO_DRIVER, &entries);
    char recdir[PATH_MAX];
    snprintf(recdir, sizeof recdir, "%s/vfio", o->config->state_dir);
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n_recs = 0;
    if (n > 0 && vfio_record_list(recdir, &recs, &n_recs) < 0)
        n_recs = 0;
    int shown = 0;
    for (int i = 0; i < n; i++) {
        char bdf[VFIO_BDF_MAX];
        if (vfio_bdf_normalize(entries[i], bdf) < 0 || strcmp(bdf, entries[i]) != 0)
            continue; /* bind, unbind, new_id, module, ... */
        shown++;
        const char *cls = class_name_of(bdf, NULL);
        char what[128];
        snprintf(what, sizeof what, "%s%s%s%s", bdf, *cls ? " (" : "", cls, *cls ? ")" : "");
        const vfio_record *rec = NULL;
        for (size_t k = 0; k < n_recs; k++)
            if (strcmp(recs[k].bdf, bdf) == 0)
                rec = &recs[k];
        char hint[1024];
        if (!rec) {
            give_back_hint(hint, sizeof hint, bdf, NULL);
            sv_check_add(r, "vfio-pci", SV_CHECK_WARN, hint,
                "%s is on vfio-pci, not owned by any VM (bound outside qvisor, or its record in %s was lost)", what,
                recdir);
            continue;
        }
        if (rec->state == VFIO_REC_STUCK) {
            snprintf(hint, sizeof hint,
                     "a sysfs write on it hung or failed: check dmesg; once the device answers, `qvisor cleanup` "
                     "tries the give-back to %s again; reboot if it does not",
                     rec->driver[0] ? rec->driver : "its state before (no driver)");
            sv_check_add(r, "vfio-pci", SV_CHECK_WARN, hint, "%s held by VM %s is stuck: %s", what, rec->vm,
                rec->reason[0] ? rec->reason : "no reason recorded");
            continue;
        }
        char vmdir[PATH_MAX];
        snprintf(vmdir, sizeof vmdir, "%s/%s", o->config->instances_dir, rec->vm);
        struct stat st;
        if (!qv_name_valid(rec->vm) || stat(vmdir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            snprintf(hint, sizeof hint, "`qvisor cleanup` gives it back to %s (the driver recorded when it was taken)",
                     rec->driver[0] ? rec->driver : "no driver, as it was");
            sv_check_add(r, "vfio-pci", SV_CHECK_WARN, hint, "%s is on vfio-pci for VM %s, which no longer exists", what,
                rec->vm);
            continue;
        }
        sv_check_add(r, "vfio-pci", SV_CHECK_OK, NULL, "%s owned by VM %s (%s%s)", what, rec->vm,
            vfio_rec_state_to_string(rec->state), rec->keep ? ", kept on vfio-pci" : "");
    }
    if (shown == 0)
        sv_check_add(r, "vfio-pci", SV_CHECK_OK, NULL, "no devices on vfio-pci");
}

/* The IOMMU group number of a device, from its iommu_group link; -1 when
 * it has none. */
static int iommu_group_of(const char *bdf) {
    char rel[PATH_MAX], target[PATH_MAX];
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/iommu_group", bdf);
    if (qv_sysroot_readlink(rel, target, sizeof target) < 0)
        return -1;
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    uint64_t g;
    if (qv_parse_uint(base, 0, INT_MAX, &g) < 0)
        return -1;
    return (int)g;
}

static bool is_bridge(const char *bdf) {
    char rel[PATH_MAX];
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/pci_bus", bdf);
    return qv_sysroot_exists(rel) > 0;
}

static void append(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t size, const char *fmt, ...) {
    size_t len = strlen(buf);
    if (len >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, size - len, fmt, ap);
    va_end(ap);
}

static void check_gpu(sv_check_report *r, const char *bdf, unsigned class_code) {
    const char *cls = vfio_class_name(class_code);
    int group = iommu_group_of(bdf);
    if (group < 0) {
        sv_check_add(r, "gpu", SV_CHECK_WARN, "see the iommu line", "%s (%s): no IOMMU group, cannot be passed through", bdf,
            cls);
        return;
    }
    char rel[PATH_MAX];
    snprintf(rel, sizeof rel, "sys/kernel/iommu_groups/%d/devices", group);
    _cleanup_(free_namesp) char **members = NULL;
    int n = list_dir(rel, &members);
    char companions[384] = "", others[384] = "", other_list[384] = "";
    int n_others = 0;
    for (int i = 0; i < n; i++) {
        const char *m = members[i];
        if (strcmp(m, bdf) == 0 || is_bridge(m))
            continue;
        if (vfio_bdf_same_slot(m, bdf)) {
            append(companions, sizeof companions, "%s%s", companions[0] ? ", " : "", m);
            continue;
        }
        const char *mcls = class_name_of(m, NULL);
        append(others, sizeof others, "%s%s%s%s%s", others[0] ? ", " : "", m, *mcls ? " (" : "", mcls,
               *mcls ? ")" : "");
        append(other_list, sizeof other_list, "%s%s", other_list[0] ? ", " : "", m);
        n_others++;
    }
    if (n_others == 0) {
        if (companions[0])
            sv_check_add(r, "gpu", SV_CHECK_OK, NULL, "%s (%s): IOMMU group %d, with %s of its own slot", bdf, cls, group,
                companions);
        else
            sv_check_add(r, "gpu", SV_CHECK_OK, NULL, "%s (%s): alone in IOMMU group %d", bdf, cls, group);
        return;
    }
    char hint[1024];
    snprintf(hint, sizeof hint,
             "passthrough takes the whole group: %s would have to go to vfio-pci and the same VM too, away from "
             "the host; another slot may give the GPU a group of its own. ACS override "
             "(pcie_acs_override=downstream,multifunction, an out-of-tree kernel patch) splits groups by "
             "claiming an isolation the hardware does not have: the devices can still DMA into each other, so "
             "a guest could reach a host device's memory. A security risk, not a fix",
             other_list);
    sv_check_add(r, "gpu", SV_CHECK_WARN, hint, "%s (%s) shares IOMMU group %d with %s", bdf, cls, group, others);
}

void sv_check_gpu_groups(sv_check_report *r, const sv_check_opts *o) {
    (void)o;
    _cleanup_(free_namesp) char **devs = NULL;
    int n = list_dir("sys/bus/pci/devices", &devs);
    int gpus = 0;
    for (int i = 0; i < n; i++) {
        unsigned cls = 0;
        if (!*class_name_of(devs[i], &cls) || !vfio_class_is_display(cls))
            continue;
        gpus++;
        check_gpu(r, devs[i], cls);
    }
    if (gpus == 0)
        sv_check_add(r, "gpu", SV_CHECK_OK, NULL, "no PCI display devices");
}

/* ---- hugepages ----------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int read_u64(const char *rel, uint64_t *ret) {
    char line[32];
    int rc = qv_sysroot_read_line(rel, line, sizeof line);
    if (rc < 0)
        return rc;
    return qv_parse_uint(line, 0, UINT64_MAX, ret);
}

void sv_check_hugepages(sv_check_report *r, const sv_check_opts *o) {
    static const char *base = "sys/kernel/mm/hugepages";
    _cleanup_(free_namesp) char **sizes = NULL;
    int n = list_dir(base, &sizes);
    /* smallest size first (the directory names sort 1G before 2M) */
    uint64_t kbs[16];
    size_t n_kbs = 0;
    for (int i = 0; i < n && n_kbs < QV_ARRAY_SIZE(kbs); i++)
        if (sscanf(sizes[i], "hugepages-%" SCNu64 "kB", &kbs[n_kbs]) == 1)
            n_kbs++;
    qv_qsort(kbs, n_kbs, sizeof kbs[0], cmp_u64);
    char detail[512] = "";
    uint64_t total = 0, total_free = 0;
    for (size_t i = 0; i < n_kbs; i++) {
        uint64_t kb = kbs[i], nr = 0, fr = 0;
        char rel[PATH_MAX];
        snprintf(rel, sizeof rel, "%s/hugepages-%" PRIu64 "kB/nr_hugepages", base, kb);
        if (read_u64(rel, &nr) < 0)
            continue;
        snprintf(rel, sizeof rel, "%s/hugepages-%" PRIu64 "kB/free_hugepages", base, kb);
        read_u64(rel, &fr);
        char sz[32];
        qv_format_size(kb * 1024, sz, sizeof sz);
        if (nr)
            append(detail, sizeof detail, "%s%s: %" PRIu64 " reserved, %" PRIu64 " free", detail[0] ? "; " : "",
                   sz, nr, fr);
        else
            append(detail, sizeof detail, "%s%s: none", detail[0] ? "; " : "", sz);
        total += nr;
        total_free += fr;
    }
    bool needed = o->needs & SV_NEED_HUGEPAGES;
    static const char hint[] =
        "reserve them now with echo N > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages, or at boot "
        "with hugepages=N on the kernel command line (1 GiB pages: default_hugepagesz=1G hugepagesz=1G "
        "hugepages=N)";
    if (n <= 0) {
        sv_check_add(r, "hugepages", needed ? SV_CHECK_FAIL : SV_CHECK_OK, needed ? hint : NULL,
            "no hugepage sizes in /sys/kernel/mm/hugepages (kernel without hugetlbfs?)");
    } else if (total == 0) {
        sv_check_add(r, "hugepages", needed ? SV_CHECK_FAIL : SV_CHECK_OK, needed ? hint : NULL, "none reserved (%s)",
            detail);
    } else if (needed && total_free == 0) {
        sv_check_add(r, "hugepages", SV_CHECK_FAIL, "every reserved hugepage is in use: reserve more", "%s", detail);
    } else {
        sv_check_add(r, "hugepages", SV_CHECK_OK, NULL, "%s", detail);
    }
}

/* ---- directories ----------------------------------------------------------- */

static void check_dir(sv_check_report *r, const char *name, const char *path) {
    char hint[1024];
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            sv_check_add(r, name, SV_CHECK_FAIL, "move the file away or point the config elsewhere",
                "%s exists and is not a directory", path);
        } else if (faccessat(AT_FDCWD, path, W_OK | X_OK, AT_EACCESS) == 0) {
            sv_check_add(r, name, SV_CHECK_OK, NULL, "%s (writable)", path);
        } else {
            snprintf(hint, sizeof hint, "run qvisor as root, or give uid %u write access to %s", (unsigned)geteuid(),
                     path);
            sv_check_add(r, name, SV_CHECK_FAIL, hint, "%s is not writable: %s", path, strerror(errno));
        }
        return;
    }
    if (errno != ENOENT && errno != ENOTDIR) {
        sv_check_add(r, name, SV_CHECK_FAIL, NULL, "%s: %s", path, strerror(errno));
        return;
    }
    /* Not there yet: the daemon creates it, in the nearest existing parent. */
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", path);
    for (;;) {
        char *slash = strrchr(parent, '/');
        if (!slash)
            snprintf(parent, sizeof parent, ".");
        else if (slash == parent)
            parent[1] = '\0';
        else
            *slash = '\0';
        if (stat(parent, &st) == 0 || (errno != ENOENT && errno != ENOTDIR) || strcmp(parent, "/") == 0 ||
            strcmp(parent, ".") == 0)
            break;
    }
    if (stat(parent, &st) == 0 && S_ISDIR(st.st_mode) && faccessat(AT_FDCWD, parent, W_OK | X_OK, AT_EACCESS) == 0) {
        sv_check_add(r, name, SV_CHECK_OK, NULL, "%s does not exist yet; it can be created in %s", path, parent);
        return;
    }
    snprintf(hint, sizeof hint, "create it as root (mkdir -p %s) or point the config at a writable place", path);
    sv_check_add(r, name, SV_CHECK_FAIL, hint, "%s does not exist and cannot be created: %s is not a writable directory",
        path, parent);
}

/* ---- UEFI firmware --------------------------------------------------------- */

void sv_check_firmware(sv_check_report *r, const sv_check_opts *o) {
    static const struct {
        const char *item;
        int firmware;
    } builds[] = {{"ovmf", SV_FIRMWARE_UEFI}, {"ovmf-secure", SV_FIRMWARE_UEFI_SECURE}};
    for (size_t i = 0; i < QV_ARRAY_SIZE(builds); i++) {
        sv_fw_choice fw;
        qv_error err = {0};
        const char *fwname = sv_firmware_to_string(builds[i].firmware);
        if (sv_fw_resolve(o->config->firmware_dir, builds[i].firmware, &fw, &err) == 0) {
            sv_check_add(r, builds[i].item, SV_CHECK_OK, NULL, "--firmware %s: %s with %s (from %s)", fwname, fw.code, fw.vars,
                fw.source);
            continue;
        }
        char hint[256];
        snprintf(hint, sizeof hint, "apt-get install ovmf%s (needed by vm create --firmware %s)",
                 o->config->firmware_dir[0] ? ", or fix paths.firmware_dir" : "", fwname);
        sv_check_add(r, builds[i].item, severity(o, SV_NEED_UEFI), hint, "%s", err.msg);
    }
}

/* A directory VM disks and instance files live in that another user may
 * write: that user can plant names qvisor will create or remove (qvisor
 * refuses and never follows them, but such a user can still delete or
 * replace VMs' files).  Reported only when it is so. */
static void check_dir_writers(sv_check_report *r, const char *name, const char *path) {
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode) || !(st.st_mode & (S_IWGRP | S_IWOTH)))
        return;
    char hint[PATH_MAX + 64];
    snprintf(hint, sizeof hint, "chmod go-w %s (qvisor itself needs no other writer)", path);
    sv_check_add(r, name, SV_CHECK_WARN, hint, "%s is writable by %s (mode %04o): they can delete or swap VMs' files", path,
        (st.st_mode & S_IWOTH) ? "every user" : "its group", (unsigned)(st.st_mode & 07777));
}

void sv_check_dirs(sv_check_report *r, const sv_check_opts *o) {
    check_dir(r, "state-dir", o->config->state_dir);
    check_dir(r, "images-dir", o->config->images_dir);
    check_dir(r, "instances-dir", o->config->instances_dir);
    check_dir(r, "run-dir", o->config->run_dir);
    check_dir_writers(r, "instances-dir", o->config->instances_dir);
    for (sv_storage_pool **p = o->config->storage_pools; p && *p; p++) {
        if (strcmp((*p)->path, o->config->instances_dir) == 0)
            continue;
        char item[96];
        snprintf(item, sizeof item, "storage-pool %s", (*p)->name);
        check_dir_writers(r, item, (*p)->path);
    }
}

/* ---- all ------------------------------------------------------------------- */

void sv_check_all(sv_check_report *r, const sv_check_opts *o) {
    sv_qemu_caps caps;
    bool ran = false;
    sv_check_qemu(r, o, &caps, &ran);
    sv_check_qemu_img(r, o);
    sv_check_kvm(r, o);
    sv_check_accel(r, o, ran ? &caps : NULL);
    sv_check_cpu(r, o);
    sv_check_iommu(r, o);
    sv_check_vfio_modules(r, o);
    sv_check_vfio_devices(r, o);
    sv_check_gpu_groups(r, o);
    sv_check_hugepages(r, o);
    sv_check_firmware(r, o);
    sv_check_dirs(r, o);
}
