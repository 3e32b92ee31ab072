/* QEMU argv builder (see qemuargv.h).  Choices worth knowing:
 * - Always -S: the supervisor connects QMP, does its setup (pinning later),
 *   then sends `cont`.  -nodefaults/-no-user-config: only devices we name.
 * - The monitor is a listening socket the supervisor created and passes as
 *   an fd (no start race, no polling for the socket file).
 * - -pidfile marks the process as ours for `qvisor cleanup`.
 * - With -runas, QEMU 7.2 dies of SIGSYS if the sandbox also denies
 *   privilege changes (it drops its uid after seccomp is installed), so
 *   elevateprivileges=deny is only set when QEMU does not change user.
 *   `children` is no way out: it denies the set*id calls in QEMU itself too (and
 *   sets no_new_privs).  Once -runas has run, QEMU has checked that
 *   setuid(0) fails: the calls it may still make cannot regain root.
 * - Disks, seed, firmware and the serial log come as fds the daemon opened
 *   (-add-fd, /dev/fdset/N), as libvirt passes them; a qcow2 overlay's
 *   backing is a blockdev of its own, so the name in its header is never
 *   followed.  An fdset hands QEMU a dup of an fd whose access mode
 *   matches, so each fd is opened with exactly the mode QEMU asks for.
 * - Guest RAM on hugepages is a memfd with hugetlb (no hugetlbfs mount to
 *   manage), shared and preallocated: QEMU fails at start rather than the
 *   guest taking SIGBUS later, as libvirt does.  NUMA binding is the
 *   backend's host-nodes/policy=bind (mbind), which seccomp allows.
 * - UEFI firmware is pflash on blockdevs, as libvirt does: the shared code
 *   read-only, the VM's own variable store writable.  Secure Boot needs
 *   SMM and `cfi.pflash01.secure`, so that only SMM code may write the
 *   variables (else the guest OS could rewrite the keys). */
#include "supervisor/vm/qemuargv.h"

#include "cleanup.h"
#include "supervisor/vm/nics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct argv_builder {
    char **v;
    size_t n, cap;
    bool oom;
} argv_builder;

static void add(argv_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(argv_builder *b, const char *fmt, ...) {
    if (b->oom)
        return;
    if (b->n + 2 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        char **nv = realloc(b->v, cap * sizeof *nv);
        if (!nv) {
            b->oom = true;
            return;
        }
        b->v = nv;
        b->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&b->v[b->n], fmt, ap);
    va_end(ap);
    if (r < 0) {
        b->oom = true;
        return;
    }
    b->v[++b->n] = NULL;
}

void sv_argv_free(char **argv) {
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}

/* How QEMU names a file it gets as fd (an fdset of the same number) or,
 * without one, its path. */
static const char *fdset_name(char *buf, size_t len, int fd, const char *path) {
    if (fd <= 0)
        return path;
    snprintf(buf, len, "/dev/fdset/%d", fd);
    return buf;
}

/* QEMU option values use ',' as separator; a literal comma is doubled. */
static int check_no_comma(const char *what, const char *v, qv_error *err) {
    if (v && strchr(v, ','))
        return qv_error_set(err, EINVAL, "%s '%s' contains a comma, which QEMU cannot take in this position", what, v);
    return 0;
}

int sv_qemu_argv(const sv_vmspec *spec, const sv_qemu_env *env, const sv_vm_paths *paths, char ***ret_argv,
                 qv_error *err) {
    const char *checked[][2] = {
        {"disk path", paths->disk},          {"serial log path", paths->serial_log},
        {"pidfile path", paths->pidfile},
        {"seed ISO path", paths->seed_iso},  {"kernel path", spec->kernel},
        {"initrd path", spec->initrd},       {"run-as user", env->run_as},
        {"firmware code path", spec->firmware_code}, {"firmware variables path", paths->firmware_vars},
        {"CPU model", spec->cpu_model},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(checked); i++) {
        int r = check_no_comma(checked[i][0], checked[i][1], err);
        if (r < 0)
            return r;
    }

    bool uefi = spec->firmware == SV_FIRMWARE_UEFI || spec->firmware == SV_FIRMWARE_UEFI_SECURE;
    bool secure = spec->firmware == SV_FIRMWARE_UEFI_SECURE;
    if (uefi && (!spec->firmware_code || !paths->firmware_vars))
        return qv_error_set(err, EINVAL, "firmware %s without its %s", sv_firmware_to_string(spec->firmware),
                            spec->firmware_code ? "variable store" : "code file");

    uint64_t page = sv_hugepage_bytes(spec->hugepages);
    if (page && spec->memory % page != 0)
        return qv_error_set(err, EINVAL, "memory %lluM is not a whole number of %s hugepages",
                            (unsigned long long)(spec->memory >> 20), page == (1ull << 30) ? "1G" : "2M");
    bool backend = page || paths->numa_bind;
    char bind[64] = "";
    if (paths->numa_bind)
        snprintf(bind, sizeof bind, ",host-nodes=%u,policy=bind", paths->numa_node);

    argv_builder b = {0};
    add(&b, "%s", env->binary);
    add(&b, "-name");
    add(&b, "guest=%s,debug-threads=on", spec->name);
    add(&b, "-S");
    add(&b, "-nodefaults");
    add(&b, "-no-user-config");
    add(&b, "-display");
    add(&b, "none");
    add(&b, "-machine");
    add(&b, "q35,accel=%s%s%s%s", env->kvm ? "kvm" : "tcg", secure ? ",smm=on" : "",
        backend ? ",memory-backend=ram0" : "", uefi ? ",pflash0=pflash0,pflash1=pflash1" : "");
    add(&b, "-cpu");
    add(&b, "%s", spec->cpu_model ? spec->cpu_model : env->kvm ? "host" : "max");
    add(&b, "-smp");
    add(&b, "%llu", (unsigned long long)spec->cpus);
    add(&b, "-m");
    add(&b, "%lluM", (unsigned long long)(spec->memory >> 20));
    /* guest RAM as an object of its own: on hugepages, bound to a node */
    if (page) {
        add(&b, "-object");
        add(&b, "memory-backend-memfd,id=ram0,size=%lluM,hugetlb=on,hugetlbsize=%s,share=on,prealloc=on%s",
            (unsigned long long)(spec->memory >> 20), page == (1ull << 30) ? "1G" : "2M", bind);
    } else if (paths->numa_bind) {
        add(&b, "-object");
        add(&b, "memory-backend-ram,id=ram0,size=%lluM%s", (unsigned long long)(spec->memory >> 20), bind);
    }
    add(&b, "-pidfile");
    add(&b, "%s", paths->pidfile);
    add(&b, "-msg");
    add(&b, "timestamp=on");

    /* the files the daemon opened, each in an fdset of its own number */
    const struct {
        int fd;
        const char *opaque;
    } fdsets[] = {
        {paths->disk_fd, "disk0"},        {paths->base_fd, "base0"},       {paths->seed_fd, "seed0"},
        {paths->fw_code_fd, "pflash0"},   {paths->fw_vars_fd, "pflash1"},  {paths->serial_fd, "serial0"},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(fdsets); i++)
        if (fdsets[i].fd > 0) {
            add(&b, "-add-fd");
            add(&b, "fd=%d,set=%d,opaque=%s", fdsets[i].fd, fdsets[i].fd, fdsets[i].opaque);
        }
    char disk_name[32], base_name[32], seed_name[32], code_name[32], vars_name[32], serial_name[32];
    const char *disk = fdset_name(disk_name, sizeof disk_name, paths->disk_fd, paths->disk);
    const char *seed = fdset_name(seed_name, sizeof seed_name, paths->seed_fd, paths->seed_iso);
    const char *code = fdset_name(code_name, sizeof code_name, paths->fw_code_fd, spec->firmware_code);
    const char *vars = fdset_name(vars_name, sizeof vars_name, paths->fw_vars_fd, paths->firmware_vars);
    const char *serial = fdset_name(serial_name, sizeof serial_name, paths->serial_fd, paths->serial_log);

    /* monitor on the pre-bound listening socket */
    add(&b, "-chardev");
    add(&b, "socket,id=qmp0,fd=%d,server=on,wait=off", paths->qmp_fd);
    add(&b, "-mon");
    add(&b, "chardev=qmp0,mode=control");

    /* serial console: a socket the daemon listens on (vm console) that
     * also logs everything to serial.log, attached or not; QEMU drops
     * (after logging) what the guest writes while nobody is connected.
     * Appending (the start made it empty): the daemon empties a log that
     * grows past SV_SERIAL_LOG_MAX, and QEMU then goes on at its start */
    add(&b, "-chardev");
    if (paths->console_fd > 0)
        add(&b, "socket,id=serial0,fd=%d,server=on,wait=off,logfile=%s,logappend=on", paths->console_fd, serial);
    else
        add(&b, "file,id=serial0,path=%s,append=on", serial);
    add(&b, "-serial");
    add(&b, "chardev:serial0");

    /* UEFI: the shared code read-only, the VM's own variable store */
    if (uefi) {
        add(&b, "-blockdev");
        add(&b, "driver=file,filename=%s,node-name=pflash0-file,read-only=on", code);
        add(&b, "-blockdev");
        add(&b, "driver=raw,file=pflash0-file,node-name=pflash0,read-only=on");
        add(&b, "-blockdev");
        add(&b, "driver=file,filename=%s,node-name=pflash1-file", vars);
        add(&b, "-blockdev");
        add(&b, "driver=raw,file=pflash1-file,node-name=pflash1");
        if (secure) {
            add(&b, "-global");
            add(&b, "driver=cfi.pflash01,property=secure,value=on");
        }
    }

    /* system disk: the overlay on its base, which has no backing of its own */
    if (paths->base_fd > 0) {
        add(&b, "-blockdev");
        add(&b, "driver=file,filename=%s,node-name=base0-file,read-only=on",
            fdset_name(base_name, sizeof base_name, paths->base_fd, NULL));
        add(&b, "-blockdev");
        /* JSON: the key=value syntax has no null, and QEMU 7.2 deprecates "" */
        add(&b, "{\"driver\":\"qcow2\",\"file\":\"base0-file\",\"node-name\":\"base0\",\"read-only\":true,"
                "\"backing\":null}");
    }
    add(&b, "-blockdev");
    add(&b, "driver=file,filename=%s,node-name=disk0-file,discard=unmap", disk);
    add(&b, "-blockdev");
    add(&b, "driver=qcow2,file=disk0-file,node-name=disk0,discard=unmap%s", paths->base_fd > 0 ? ",backing=base0" : "");
    add(&b, "-device");
    add(&b, "virtio-blk-pci,drive=disk0,id=virtio-disk0,bootindex=1");

    /* cloud-init seed: a read-only CD-ROM on a virtio-scsi controller.  Not
     * ide-cd: on q35 that hangs off the ICH9 AHCI controller, and cloud
     * kernels (Debian's linux-image-cloud-amd64) have no AHCI driver, so
     * cloud-init never saw its seed.  virtio_scsi + sr_mod is in every
     * mainstream cloud and generic kernel; a scsi-cd medium can also be
     * swapped at run time (docs/cloudinit.md). */
    if (seed) {
        add(&b, "-blockdev");
        add(&b, "driver=file,filename=%s,node-name=seed0-file,read-only=on", seed);
        add(&b, "-blockdev");
        add(&b, "driver=raw,file=seed0-file,node-name=seed0,read-only=on");
        add(&b, "-device");
        add(&b, "virtio-scsi-pci,id=scsi0");
        add(&b, "-device");
        add(&b, "scsi-cd,bus=scsi0.0,drive=seed0,id=seed0-cd");
    }

    /* network: user mode (SSH forwarded from loopback on the first one) or
     * a TAP the supervisor opened and passes as an fd (QEMU needs no
     * privileges and runs no scripts) */
    nd_nic nics[ND_NICS_MAX];
    size_t n_nics;
    int r = sv_net_nics(spec, nics, &n_nics, err);
    if (r < 0) {
        sv_argv_free(b.v);
        return r;
    }
    bool forwarded = false;
    for (size_t i = 0; i < n_nics; i++) {
        add(&b, "-netdev");
        if (nics[i].mode == ND_MODE_USER) {
            if (paths->ssh_port > 0 && !forwarded)
                add(&b, "user,id=net%zu,hostfwd=tcp:127.0.0.1:%d-:22", i, paths->ssh_port);
            else
                add(&b, "user,id=net%zu", i);
            forwarded = forwarded || paths->ssh_port > 0;
        } else {
            int tap = paths->tap_fds ? paths->tap_fds[i] : -1, vhost = paths->vhost_fds ? paths->vhost_fds[i] : -1;
            if (tap < 0) {
                sv_argv_free(b.v);
                return qv_error_set(err, EINVAL, "NIC %zu (%s) has no TAP", i, nd_mode_name(nics[i].mode));
            }
            if (vhost >= 0)
                add(&b, "tap,id=net%zu,fd=%d,vhost=on,vhostfd=%d", i, tap, vhost);
            else
                add(&b, "tap,id=net%zu,fd=%d", i, tap);
        }
        add(&b, "-device");
        add(&b, "virtio-net-pci,netdev=net%zu,id=net%zu-nic,mac=%s", i, i, nics[i].mac);
    }

    /* guest agent on a virtio-serial port */
    if (spec->agent && paths->qga_fd > 0) {
        add(&b, "-device");
        add(&b, "virtio-serial-pci,id=vser0");
        add(&b, "-chardev");
        add(&b, "socket,id=qga0,fd=%d,server=on,wait=off", paths->qga_fd);
        add(&b, "-device");
        add(&b, "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0,id=" SV_QGA_PORT_ID);
    }

    /* passthrough: each GPU on a PCIe root port of its own, its functions at
     * the same function numbers as on the host (drivers expect the audio
     * function next to the GPU), as Proxmox and libvirt lay them out */
    for (size_t i = 0; i < paths->n_hostdevs; i++) {
        const sv_hostdev *h = &paths->hostdevs[i];
        bool first = i == 0 || paths->hostdevs[i - 1].gpu != h->gpu;
        bool multi = (i + 1 < paths->n_hostdevs && paths->hostdevs[i + 1].gpu == h->gpu) || !first;
        if (first) {
            add(&b, "-device");
            add(&b, "pcie-root-port,id=qv-hostport%u,bus=pcie.0,chassis=%u,port=0x%x", h->gpu, 16 + h->gpu,
                16 + h->gpu);
        }
        add(&b, "-device");
        add(&b, "vfio-pci,host=%s,id=hostpci%u.%u,bus=qv-hostport%u,addr=0x0.%u%s", h->bdf, h->gpu, h->function,
            h->gpu, h->function, multi && h->function == 0 ? ",multifunction=on" : "");
    }

    /* entropy for guests that generate SSH host keys at first boot */
    add(&b, "-object");
    add(&b, "rng-random,id=rng0,filename=/dev/urandom");
    add(&b, "-device");
    add(&b, "virtio-rng-pci,rng=rng0");

    if (spec->kernel) {
        /* the files the daemon opened: QEMU reopens them through its own fd */
        add(&b, "-kernel");
        if (paths->kernel_fd > 0)
            add(&b, "/proc/self/fd/%d", paths->kernel_fd);
        else
            add(&b, "%s", spec->kernel);
        if (spec->initrd) {
            add(&b, "-initrd");
            if (paths->initrd_fd > 0)
                add(&b, "/proc/self/fd/%d", paths->initrd_fd);
            else
                add(&b, "%s", spec->initrd);
        }
        if (spec->append) {
            add(&b, "-append");
            add(&b, "%s", spec->append);
        }
    }

    if (env->sandbox) {
        add(&b, "-sandbox");
        if (env->run_as)
            add(&b, "on,obsolete=deny,spawn=deny,resourcecontrol=deny");
        else
            add(&b, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    }
    if (env->run_as) {
        add(&b, "-runas");
        add(&b, "%s", env->run_as);
    }

    if (b.oom) {
        sv_argv_free(b.v);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    *ret_argv = b.v;
    return 0;
}
