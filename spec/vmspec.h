/* What a VM is: the spec given at create time (`qvisor vm create` options,
 * `-f spec.yaml`, or JSON over the control socket), validated by the shared
 * schema, with node defaults filled in. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "netdev/nic.h"
#include "spec/config.h"
#include "spec/schema.h"
#include "vfio/bind.h"

typedef enum sv_restart {
    SV_RESTART_NEVER,
    SV_RESTART_ON_FAILURE,
    SV_RESTART_ALWAYS,
} sv_restart;

typedef enum sv_hugepages_size {
    SV_HUGEPAGES_NONE,
    SV_HUGEPAGES_2M,
    SV_HUGEPAGES_1G,
} sv_hugepages_size;

/* What the guest boots from (docs/firmware.md). */
typedef enum sv_firmware {
    SV_FIRMWARE_BIOS,        /* SeaBIOS, QEMU's default */
    SV_FIRMWARE_UEFI,        /* OVMF */
    SV_FIRMWARE_UEFI_SECURE, /* OVMF's Secure Boot build, Microsoft keys enrolled, SMM */
} sv_firmware;

/* A spec's numa, parsed. */
typedef enum sv_numa_mode {
    SV_NUMA_NONE, /* numa unset */
    SV_NUMA_AUTO, /* "auto": start chooses the node */
    SV_NUMA_NODE, /* a node number */
} sv_numa_mode;

typedef struct sv_numa {
    int mode;      /* sv_numa_mode */
    unsigned node; /* SV_NUMA_NODE: 0-1023 */
} sv_numa;

typedef struct sv_vmspec {
    char *name;               /* [a-z0-9][a-z0-9-]{0,62}, required */
    char *image;              /* base image name in the images directory, required */
    uint64_t cpus;            /* 0: node default */
    uint64_t memory;          /* bytes; 0: node default */
    uint64_t disk;            /* bytes (virtual size of the overlay); 0: node default */
    uint64_t stop_timeout_ms; /* 0: node default */
    int restart;              /* sv_restart */
    uint64_t restart_limit;   /* on-failure: restarts in a row before giving up */
    /* optional direct kernel boot (absolute paths).  At create they name the
     * client's files (shown as where they came from, never opened: the
     * client sends them); create copies the files into the instance
     * directory and the stored spec names the copies there */
    char *kernel;
    char *initrd;
    char *append;
    bool agent;               /* add the guest-agent channel (default true) */
    /* passthrough GPUs: "ADDRESS[,keep][,take-group]" (vfio/bind.h); the
     * daemon turns `gpu list` indexes into addresses at create.
     * NULL-terminated, never NULL. */
    char **gpus;
    /* NICs in the text form of netdev/nic.h ("nat,ip=…,mac=…"); the daemon
     * completes them at create (MACs, nat addresses, the bridge).  Empty: one
     * user-mode NIC.  NULL-terminated, never NULL. */
    char **nets;
    /* node resources (docs/resources.md) */
    char *pool;               /* resource pool (default "default"), for quotas */
    char *storage_pool;       /* where the disk lives; unset: the node's default_storage_pool */
    int hugepages;            /* sv_hugepages_size: guest RAM on hugepages */
    char *numa;               /* NULL, "auto" or a node number: bind memory (and CPUs) to a node */
    char *pin;                /* host CPU list for the vCPU and emulator threads, NULL: none */
    /* firmware: stored resolved at create (default bios).  For uefi and
     * uefi-secure, create also records the OVMF code and the variable-store
     * template it chose (host/firmware.h), so that a later OVMF
     * package does not switch a VM's firmware build under it. */
    int firmware;             /* sv_firmware */
    char *firmware_code;      /* absolute path, read-only pflash0; NULL for bios */
    char *firmware_vars;      /* the template INSTANCE_DIR/efivars.fd was copied from */
    char *cpu_model;          /* a model QEMU lists (-cpu help); NULL: host under KVM, max under TCG */
    /* cloud-init seed (supervisor/vm/seed.h) */
    bool seed;                /* attach a NoCloud seed at all (default true) */
    char *hostname;           /* local-hostname; unset: the VM name (sv_vmspec_complete fills it) */
    char *user;               /* login user (default CI_DEFAULT_USER) */
    char **ssh_keys;          /* public key lines (content, not paths); NULL-terminated, never NULL */
    bool ssh_generate;        /* generate INSTANCE_DIR/ssh/id_ed25519 at create and authorize it */
    char *password_hash;      /* crypt(3) hash for the user (ci_password_hash_check); NULL: password login locked */
    char **packages;          /* cloud-init packages (ci_package_check); NULL-terminated, never NULL */
    char **runcmd;            /* cloud-init runcmd, each through sh (ci_runcmd_check); idem */
    /* replaces the generated user-data (checked by ci_user_data_check);
     * excludes password_hash, packages and runcmd, which go into that */
    char *user_data;
    char *network_config;     /* replaces the generated network-config (a YAML mapping) */
    /* who may act on the VM besides root and the socket group (docs/protocol.md,
     * "Who may do what"): set at create only, by a privileged client */
    uint64_t owner;           /* a local uid, 0 to SV_OWNER_MAX; SV_UNSET: none */
    uint64_t slurm_job;       /* the Slurm job the VM serves, 1 to SV_SLURM_JOB_MAX; SV_UNSET: none */

    /* The lists above, parsed: derived from the text by
     * sv_vmspec_parse_lists() when a spec is read and whenever the text
     * changes, never set on their own.  The text is what is stored and sent;
     * users read these. */
    nd_nic *nics;             /* nets, n_nics of them (MACs "" until create assigns them; sv_net_nics()
                               * adds the default user NIC of a spec without nets) */
    size_t n_nics;
    vfio_gpu_opt *gpu_opts;   /* gpus, n_gpu_opts of them; bdf "" for a `gpu list` index that create has not
                               * turned into an address yet */
    size_t n_gpu_opts;
    sv_numa numa_want;        /* numa */
    unsigned *pin_cpus;       /* pin: host CPUs, sorted, each once; NULL (and n_pin_cpus 0) without pin */
    size_t n_pin_cpus;
} sv_vmspec;

/* The largest uid an owner may be, 2^31-2: -1 is "no uid" to the kernel and
 * uids from 2^31 up read as negative in too many tools to be trusted. */
#define SV_OWNER_MAX 2147483646ull
/* The largest Slurm job id taken, 2^32-2: 32 bits but for all ones. */
#define SV_SLURM_JOB_MAX 4294967294ull

/* The most packages and runcmd items a spec takes. */
#define SV_PACKAGES_MAX 256
#define SV_RUNCMD_MAX 64

sv_vmspec *sv_vmspec_new(void);
void sv_vmspec_free(sv_vmspec *s);
static inline void sv_vmspec_freep(sv_vmspec **s) {
    sv_vmspec_free(*s);
}

/* A deep copy: every field, the parsed ones included; shares no pointer
 * with s.  NULL when out of memory. */
sv_vmspec *sv_vmspec_dup(const sv_vmspec *s);

/* Derives the parsed fields (nics, gpu_opts, numa_want, pin_cpus) from the
 * text ones (nets, gpus, numa, pin), replacing what they held.  The one
 * place they are filled: sv_vmspec_from_yaml/_json call it, and so must
 * whoever changes those lists' text.  -EINVAL naming the key ("spec: nets:
 * …") for text the schema would refuse, -ENOMEM; on failure the parsed
 * fields are unchanged. */
int sv_vmspec_parse_lists(sv_vmspec *s, qv_error *err);

/* From a YAML file's content (`vm create -f`): errors name file:line:column
 * and the key, code EINVAL (exit 65). */
int sv_vmspec_from_yaml(const char *name, const char *data, size_t len, sv_vmspec **ret, qv_error *err);
/* From the control protocol; errors "spec: key: why", code EINVAL. */
int sv_vmspec_from_json(json_t *j, sv_vmspec **ret, qv_error *err);
/* Every field, with its effective value (new reference). */
json_t *sv_vmspec_to_json(const sv_vmspec *s);

/* Fills unset cpus/memory/disk/stop timeout from the node config, the host
 * name from the VM name (trailing '-' dropped: a host name cannot end in one),
 * and checks what needs both (name and image present, initrd/append only
 * with kernel, no seed settings with seed off). */
int sv_vmspec_complete(sv_vmspec *s, const sv_config *node, qv_error *err);

/* The kernel's COMMAND_LINE_SIZE on x86, with its terminating NUL: a longer
 * `append` would be cut. */
#define SV_APPEND_MAX 2047

/* The largest kernel and initrd a VM takes: create copies them into its
 * instance directory (a bzImage is some 10 MiB, a distribution initrd some
 * 100 MiB). */
#define SV_KERNEL_MAX (256ull << 20)
#define SV_INITRD_MAX (2ull << 30)

/* What a direct kernel boot will need at start, checked at create so that a
 * spec that can never start is refused.  The kernel and initrd are files
 * the client opened with its own rights and sent (kernel_fd, initrd_fd, -1
 * for none; s->kernel and s->initrd are then only their names): readable,
 * non-empty regular files (not directories, devices, FIFOs, nor files of
 * /proc, /sys and the like) of at most SV_KERNEL_MAX / SV_INITRD_MAX bytes;
 * a name without its file, or a file without its name, is refused.
 * `append` has no control characters and at most SV_APPEND_MAX bytes.
 * Everything is -EINVAL (exit 65); a missing file is the client's to report
 * (66). */
int sv_vmspec_check_boot(const sv_vmspec *s, int kernel_fd, int initrd_fd, qv_error *err);

/* The first of password_hash, packages, runcmd that s sets: keys that only
 * the generated user-data carries (so user_data, which replaces it, and
 * seed: false exclude them); NULL when none is set. */
const char *sv_vmspec_generated_user_data_key(const sv_vmspec *s);

const char *sv_restart_to_string(int r);
/* "bios", "uefi", "uefi-secure". */
const char *sv_firmware_to_string(int f);
/* Page size in bytes of an sv_hugepages_size (0 for none). */
uint64_t sv_hugepage_bytes(int h);
