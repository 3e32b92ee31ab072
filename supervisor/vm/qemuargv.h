/* The QEMU command line of a VM: a pure function of the spec, the node's
 * resolved facts and the instance's paths.  Golden tests pin its output. */
#pragma once

#include <stdbool.h>

#include "error.h"
#include "spec/vmspec.h"

/* The id of the agent's virtio-serial port: QEMU's VSERPORT_CHANGE names
 * it when the guest opens or closes the port (the agent starts or stops). */
#define SV_QGA_PORT_ID "qga0port"

typedef struct sv_qemu_env {
    const char *binary;  /* qemu-system-x86_64 or an absolute path */
    bool kvm;            /* resolved accelerator: true KVM, false TCG */
    bool sandbox;        /* this QEMU supports -sandbox (seccomp) */
    const char *run_as;  /* unprivileged user for -runas, or NULL: QEMU stays root */
} sv_qemu_env;

/* A host PCI function passed through with vfio-pci (already bound to it). */
typedef struct sv_hostdev {
    const char *bdf;   /* "0000:01:00.0" */
    unsigned gpu;      /* which GPU of the spec: its functions share a root port */
    unsigned function; /* PCI function, 0-7: the guest sees the same layout */
} sv_hostdev;

typedef struct sv_vm_paths {
    const char *disk;        /* the instance overlay (qcow2) */
    const char *serial_log;  /* the guest's serial console goes here */
    const char *pidfile;     /* QEMU writes its pid: our identity mark for cleanup */
    const char *seed_iso;    /* cloud-init seed, NULL for none */
    const char *firmware_vars; /* UEFI (spec->firmware): the VM's own variable store, writable
                                * pflash1; the code is spec->firmware_code */
    int qmp_fd;              /* listening monitor socket, as numbered in QEMU */
    int qga_fd;              /* listening guest-agent socket, as numbered in QEMU; 0: no
                              * agent channel (spec->agent off) */
    int console_fd;          /* listening serial-console socket, as numbered in QEMU (it
                              * logs to serial_log too); 0: serial_log alone */
    int ssh_port;            /* host port forwarded to guest port 22 on 127.0.0.1 by the first
                              * user-mode NIC; 0 for none */
    /* per NIC index (supervisor/vm/nics.h): the TAP's and /dev/vhost-net's fd
     * numbers as QEMU sees them, -1 for none; NULL when no NIC has a TAP */
    const int *tap_fds;
    const int *vhost_fds;
    /* Files the daemon opened itself and hands over, each fd as QEMU numbers
     * it, 0 for none.  A block or log file's fd is put in an fdset of the
     * same number (-add-fd fd=N,set=N) and named /dev/fdset/N, so the path
     * above is unused; kernel and initrd are read through /proc/self/fd/N.
     * launch() always passes them: QEMU opens no file of the VM by name. */
    int disk_fd;     /* the overlay, O_RDWR */
    int base_fd;     /* O_RDONLY: the overlay's backing, a qcow2 given explicitly
                      * (backing=base0), so QEMU never follows the name in the
                      * overlay's header; 0 with disk_fd set: the header decides */
    int seed_fd;     /* O_RDONLY */
    int fw_code_fd;  /* O_RDONLY */
    int fw_vars_fd;  /* O_RDWR */
    int serial_fd;   /* O_WRONLY|O_APPEND, the serial log (the daemon may empty it) */
    int kernel_fd;   /* O_RDONLY */
    int initrd_fd;   /* O_RDONLY */
    const sv_hostdev *hostdevs; /* passthrough functions, ordered by gpu then function */
    size_t n_hostdevs;
    /* guest RAM bound to host NUMA node numa_node (policy bind) when
     * numa_bind is set; zeroed: no binding */
    bool numa_bind;
    unsigned numa_node;
} sv_vm_paths;

/* Builds the argv (NULL-terminated, caller frees with sv_argv_free).
 * Guest RAM is an explicit memory backend (`-machine …,memory-backend=ram0`,
 * same size as -m) when it is on hugepages (spec->hugepages: memfd with
 * hugetlb, preallocated) or bound to a NUMA node (paths->numa_bind).
 * UEFI is OVMF on two pflash blockdevs (code read-only, the VM's variable
 * store writable); uefi-secure adds SMM and pflash that only SMM may write.
 * The CPU model is spec->cpu_model, else host under KVM and max under TCG.
 * Returns 0 or -ENOMEM/-EINVAL with err set (EINVAL: a path with a comma,
 * RAM that is not a whole number of hugepages, a NIC without its TAP, UEFI
 * without its files). */
int sv_qemu_argv(const sv_vmspec *spec, const sv_qemu_env *env, const sv_vm_paths *paths, char ***ret_argv,
                 qv_error *err);
void sv_argv_free(char **argv);
