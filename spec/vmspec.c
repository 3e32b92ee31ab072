/* VM spec: its table of keys and the checks that need more than one key. */
#include "spec/vmspec.h"

#include "cleanup.h"
#include "spec/schema.h"
#include "cloudinit/nocloud.h"
#include "netdev/nic.h"
#include "util.h"
#include "vfio/bind.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>

static const char *const restart_names[] = {"never", "on-failure", "always", NULL};
static const char *const hugepage_names[] = {"none", "2M", "1G", NULL};
static const char *const firmware_names[] = {"bios", "uefi", "uefi-secure", NULL};

#define F(field) offsetof(sv_vmspec, field)

/* The cloudinit/ checks, as schema checks: the message without "WHAT: ". */
static int why_from(int r, const qv_error *e, const char *prefix, char *why, size_t size) {
    const char *m = e->msg;
    size_t n = strlen(prefix);
    if (strncmp(m, prefix, n) == 0)
        m += n;
    snprintf(why, size, "%s", m);
    return r;
}

/* A cloudinit check (value, error) as a schema check (value, why). */
static int ci_check(int (*check)(const char *, qv_error *), const char *v, char *why, size_t size) {
    qv_error e = {0};
    int r = check(v, &e);
    return r < 0 ? why_from(r, &e, "", why, size) : 0;
}

static int check_hostname(const char *v, char *why, size_t size) {
    return ci_check(ci_hostname_check, v, why, size);
}

static int check_user(const char *v, char *why, size_t size) {
    return ci_check(ci_user_name_check, v, why, size);
}

static int check_ssh_key(const char *v, char *why, size_t size) {
    return ci_check(ci_ssh_key_check, v, why, size);
}

static int check_password_hash(const char *v, char *why, size_t size) {
    return ci_check(ci_password_hash_check, v, why, size);
}

static int check_package(const char *v, char *why, size_t size) {
    return ci_check(ci_package_check, v, why, size);
}

static int check_runcmd(const char *v, char *why, size_t size) {
    return ci_check(ci_runcmd_check, v, why, size);
}

static int check_user_data(const char *v, char *why, size_t size) {
    qv_error e = {0};
    int r = ci_user_data_check("-", v, strlen(v), &e);
    return r < 0 ? why_from(r, &e, "-: ", why, size) : 0;
}

static int check_network_config(const char *v, char *why, size_t size) {
    qv_error e = {0};
    int r = ci_yaml_mapping_check("-", v, strlen(v), &e);
    return r < 0 ? why_from(r, &e, "-: ", why, size) : 0;
}

/* One GPU, "ID[,keep][,take-group]" with ID a PCI address or a `gpu list`
 * index (then ret->bdf is "": create resolves it).  vfio_gpu_opt_parse's
 * errors, about the text with an index replaced by an address. */
static int gpu_parse(const char *v, vfio_gpu_opt *ret, qv_error *err) {
    char id[32];
    size_t n = strcspn(v, ",");
    snprintf(id, sizeof id, "%.*s", (int)(n < sizeof id ? n : sizeof id - 1), v);
    bool index = n > 0 && n <= 3 && strspn(id, "0123456789") == n;
    char addr[80];
    snprintf(addr, sizeof addr, "%s%s", index ? "0000:00:00.0" : "", index ? v + n : v);
    vfio_gpu_opt o;
    int r = vfio_gpu_opt_parse(addr, &o, err);
    if (r < 0)
        return r;
    if (index)
        o.bdf[0] = '\0';
    *ret = o;
    return 0;
}

static int check_gpu(const char *v, char *why, size_t size) {
    vfio_gpu_opt o;
    qv_error e = {0};
    int r = gpu_parse(v, &o, &e);
    if (r < 0) {
        if (strstr(e.msg, "unknown option"))
            snprintf(why, size, "%s", strstr(e.msg, "unknown option"));
        else
            snprintf(why, size, "'%s': expected a PCI address (0000:01:00.0) or an index from `qvisor gpu list`, "
                                "then ,keep or ,take-group", v);
        return r;
    }
    return 0;
}

static int check_net(const char *v, char *why, size_t size) {
    nd_nic n;
    qv_error e = {0};
    int r = nd_nic_parse(v, &n, &e);
    if (r < 0)
        snprintf(why, size, "%s", e.msg);
    return r;
}

static int check_pin(const char *v, char *why, size_t size) {
    unsigned *cpus = NULL;
    size_t n;
    int r = qv_parse_cpulist(v, &cpus, &n);
    free(cpus);
    if (r < 0)
        snprintf(why, size, "'%s' is not a CPU list like 0-3,8 (host CPUs, at most %d)", v, QV_CPU_MAX);
    return r;
}

/* NULL (none), "auto" or a node number. */
static int numa_parse(const char *v, sv_numa *ret) {
    uint64_t node;
    if (!v)
        *ret = (sv_numa){SV_NUMA_NONE, 0};
    else if (strcmp(v, "auto") == 0)
        *ret = (sv_numa){SV_NUMA_AUTO, 0};
    else if (qv_parse_uint(v, 0, 1023, &node) == 0)
        *ret = (sv_numa){SV_NUMA_NODE, (unsigned)node};
    else
        return -EINVAL;
    return 0;
}

static int check_numa(const char *v, char *why, size_t size) {
    sv_numa n;
    if (numa_parse(v, &n) == 0)
        return 0;
    snprintf(why, size, "'%s': expected auto or a NUMA node number", v);
    return -EINVAL;
}

/* A QEMU CPU model name (Skylake-Client-v4, EPYC, max): no options after a
 * comma (CPU flags are not supported), nothing QEMU could read as more. */
static int check_cpu_model(const char *v, char *why, size_t size) {
    size_t n = strlen(v);
    bool ok = n > 0 && n <= 64 && (isalnum((unsigned char)v[0]));
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || strchr("._-", v[i]);
    if (!ok) {
        snprintf(why, size,
                 "'%s' is not a CPU model name (letters, digits, '.', '_' and '-', at most 64; CPU flags such as "
                 "+vmx are not supported): see qemu-system-x86_64 -cpu help",
                 v);
        return -EINVAL;
    }
    return 0;
}

/* section, name, kind, field, default, min, max, enum names, allow empty, restart, check */
static const sv_key keys[] = {
    {NULL, "name", SV_K_NAME, F(name), NULL, 0, 0, NULL, false, false},
    {NULL, "image", SV_K_NAME, F(image), NULL, 0, 0, NULL, false, false},
    {NULL, "cpus", SV_K_UINT, F(cpus), NULL, 1, 1024, NULL, false, false},
    {NULL, "memory", SV_K_SIZE, F(memory), NULL, 16ull << 20, 16ull << 40, NULL, false, false},
    {NULL, "disk", SV_K_SIZE, F(disk), NULL, 1ull << 20, 64ull << 40, NULL, false, false},
    {NULL, "stop_timeout", SV_K_DURATION, F(stop_timeout_ms), NULL, 1000, 24ull * 3600 * 1000, NULL, false, false},
    {NULL, "restart", SV_K_ENUM, F(restart), "never", 0, 0, restart_names, false, false},
    {NULL, "restart_limit", SV_K_UINT, F(restart_limit), "5", 0, 1000, NULL, false, false},
    {NULL, "kernel", SV_K_PATH, F(kernel), NULL, 0, 0, NULL, false, false},
    {NULL, "initrd", SV_K_PATH, F(initrd), NULL, 0, 0, NULL, false, false},
    {NULL, "append", SV_K_STRING, F(append), NULL, 0, 0, NULL, true, false},
    {NULL, "agent", SV_K_BOOL, F(agent), "true", 0, 0, NULL, false, false},
    {NULL, "gpus", SV_K_STRLIST, F(gpus), NULL, 0, 0, NULL, false, false, check_gpu},
    {NULL, "nets", SV_K_STRLIST, F(nets), NULL, 0, 0, NULL, false, false, check_net},
    {NULL, "pool", SV_K_NAME, F(pool), "default", 0, 0, NULL, false, false},
    {NULL, "storage_pool", SV_K_NAME, F(storage_pool), NULL, 0, 0, NULL, false, false},
    {NULL, "hugepages", SV_K_ENUM, F(hugepages), "none", 0, 0, hugepage_names, false, false},
    {NULL, "numa", SV_K_STRING, F(numa), NULL, 0, 0, NULL, false, false, check_numa},
    {NULL, "pin", SV_K_STRING, F(pin), NULL, 0, 0, NULL, false, false, check_pin},
    {NULL, "firmware", SV_K_ENUM, F(firmware), "bios", 0, 0, firmware_names, false, false},
    {NULL, "firmware_code", SV_K_PATH, F(firmware_code), NULL, 0, 0, NULL, false, false},
    {NULL, "firmware_vars", SV_K_PATH, F(firmware_vars), NULL, 0, 0, NULL, false, false},
    {NULL, "cpu_model", SV_K_STRING, F(cpu_model), NULL, 0, 0, NULL, false, false, check_cpu_model},
    {NULL, "seed", SV_K_BOOL, F(seed), "true", 0, 0, NULL, false, false},
    {NULL, "hostname", SV_K_STRING, F(hostname), NULL, 0, 0, NULL, false, false, check_hostname},
    {NULL, "user", SV_K_STRING, F(user), CI_DEFAULT_USER, 0, 0, NULL, false, false, check_user},
    {NULL, "ssh_keys", SV_K_STRLIST, F(ssh_keys), NULL, 0, 0, NULL, false, false, check_ssh_key},
    {NULL, "ssh_generate", SV_K_BOOL, F(ssh_generate), "false", 0, 0, NULL, false, false},
    {NULL, "password_hash", SV_K_STRING, F(password_hash), NULL, 0, 0, NULL, false, false, check_password_hash},
    {NULL, "packages", SV_K_STRLIST, F(packages), NULL, 0, SV_PACKAGES_MAX, NULL, false, false, check_package},
    {NULL, "runcmd", SV_K_STRLIST, F(runcmd), NULL, 0, SV_RUNCMD_MAX, NULL, false, false, check_runcmd},
    {NULL, "user_data", SV_K_STRING, F(user_data), NULL, 0, 0, NULL, true, false, check_user_data},
    {NULL, "network_config", SV_K_STRING, F(network_config), NULL, 0, 0, NULL, false, false, check_network_config},
    {NULL, "owner", SV_K_UINT, F(owner), NULL, 0, SV_OWNER_MAX, NULL, false, false, .optional = true},
    {NULL, "slurm_job", SV_K_UINT, F(slurm_job), NULL, 1, SV_SLURM_JOB_MAX, NULL, false, false, .optional = true},
};

static const sv_schema schema = SV_SCHEMA(keys);

const char *sv_restart_to_string(int r) {
    return r >= 0 && r <= SV_RESTART_ALWAYS ? restart_names[r] : "never";
}

const char *sv_firmware_to_string(int f) {
    return f >= 0 && f <= SV_FIRMWARE_UEFI_SECURE ? firmware_names[f] : "bios";
}

uint64_t sv_hugepage_bytes(int h) {
    return h == SV_HUGEPAGES_2M ? 2ull << 20 : h == SV_HUGEPAGES_1G ? 1ull << 30 : 0;
}

sv_vmspec *sv_vmspec_new(void) {
    sv_vmspec *s = calloc(1, sizeof *s);
    if (s && sv_schema_apply_defaults(&schema, s) < 0) {
        sv_vmspec_free(s);
        return NULL;
    }
    return s;
}

static void free_parsed(sv_vmspec *s) {
    free(s->nics);
    free(s->gpu_opts);
    free(s->pin_cpus);
    s->nics = NULL;
    s->gpu_opts = NULL;
    s->pin_cpus = NULL;
    s->n_nics = s->n_gpu_opts = s->n_pin_cpus = 0;
}

void sv_vmspec_free(sv_vmspec *s) {
    if (!s)
        return;
    sv_schema_free_fields(&schema, s);
    free_parsed(s);
    free(s);
}

/* n items of size bytes from src (NULL for none): *ret is NULL or a copy. */
static int copy_items(const void *src, size_t n, size_t size, void *ret) {
    void *c = NULL;
    if (n && !(c = malloc(n * size)))
        return -ENOMEM;
    if (n)
        memcpy(c, src, n * size);
    *(void **)ret = c;
    return 0;
}

sv_vmspec *sv_vmspec_dup(const sv_vmspec *s) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    memcpy(c, s, sizeof *c);
    c->nics = NULL;
    c->gpu_opts = NULL;
    c->pin_cpus = NULL;
    /* sv_schema_copy_fields() forgets s's pointers in c before copying */
    if (sv_schema_copy_fields(&schema, c, s) < 0 || copy_items(s->nics, s->n_nics, sizeof *s->nics, &c->nics) < 0 ||
        copy_items(s->gpu_opts, s->n_gpu_opts, sizeof *s->gpu_opts, &c->gpu_opts) < 0 ||
        copy_items(s->pin_cpus, s->n_pin_cpus, sizeof *s->pin_cpus, &c->pin_cpus) < 0)
        return NULL;
    return TAKE_PTR(c);
}

/* A list item the parse refused: the schema's message for it. */
static int refused(int r, sv_check_fn check, const char *key, const char *v, qv_error *err) {
    if (r == -ENOMEM)
        return qv_error_set(err, ENOMEM, "out of memory");
    char why[512] = "";
    check(v, why, sizeof why);
    return qv_error_set(err, EINVAL, "spec: %s: %s", key, why);
}

int sv_vmspec_parse_lists(sv_vmspec *s, qv_error *err) {
    char key[32];
    size_t n_nics = qv_strv_len(s->nets), n_gpus = qv_strv_len(s->gpus), n_pin = 0;
    _cleanup_free_ nd_nic *nics = calloc(n_nics ? n_nics : 1, sizeof *nics);
    _cleanup_free_ vfio_gpu_opt *gpus = calloc(n_gpus ? n_gpus : 1, sizeof *gpus);
    _cleanup_free_ unsigned *pin = NULL;
    if (!nics || !gpus)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n_nics; i++) {
        int r = nd_nic_parse(s->nets[i], &nics[i], NULL);
        snprintf(key, sizeof key, "nets[%zu]", i);
        if (r < 0)
            return refused(r, check_net, key, s->nets[i], err);
    }
    for (size_t i = 0; i < n_gpus; i++) {
        int r = gpu_parse(s->gpus[i], &gpus[i], NULL);
        snprintf(key, sizeof key, "gpus[%zu]", i);
        if (r < 0)
            return refused(r, check_gpu, key, s->gpus[i], err);
    }
    sv_numa numa;
    int r = numa_parse(s->numa, &numa);
    if (r < 0)
        return refused(r, check_numa, "numa", s->numa, err);
    if (s->pin && (r = qv_parse_cpulist(s->pin, &pin, &n_pin)) < 0)
        return refused(r, check_pin, "pin", s->pin, err);
    free_parsed(s);
    s->nics = n_nics ? TAKE_PTR(nics) : NULL;
    s->n_nics = n_nics;
    s->gpu_opts = n_gpus ? TAKE_PTR(gpus) : NULL;
    s->n_gpu_opts = n_gpus;
    s->numa_want = numa;
    s->pin_cpus = TAKE_PTR(pin);
    s->n_pin_cpus = n_pin;
    return 0;
}

int sv_vmspec_from_yaml(const char *name, const char *data, size_t len, sv_vmspec **ret, qv_error *err) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = sv_vmspec_new();
    if (!s)
        return qv_error_set(err, ENOMEM, "out of memory");
    int r = sv_schema_load_yaml(&schema, s, name, data, len, EINVAL, err);
    if (r < 0 || (r = sv_vmspec_parse_lists(s, err)) < 0)
        return r;
    *ret = TAKE_PTR(s);
    return 0;
}

int sv_vmspec_from_json(json_t *j, sv_vmspec **ret, qv_error *err) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = sv_vmspec_new();
    if (!s)
        return qv_error_set(err, ENOMEM, "out of memory");
    int r = sv_schema_load_json(&schema, s, j, "spec", EINVAL, err);
    if (r < 0 || (r = sv_vmspec_parse_lists(s, err)) < 0)
        return r;
    *ret = TAKE_PTR(s);
    return 0;
}

json_t *sv_vmspec_to_json(const sv_vmspec *s) {
    json_t *j = sv_schema_to_json(&schema, s);
    /* Unset values are absent (not "" or 0), so a partial spec stays partial. */
    struct {
        const char *key;
        bool unset;
    } opt[] = {
        {"name", !s->name},     {"image", !s->image},   {"kernel", !s->kernel},
        {"initrd", !s->initrd}, {"append", !s->append}, {"cpus", !s->cpus},
        {"memory", !s->memory}, {"disk", !s->disk},     {"stop_timeout", !s->stop_timeout_ms},
        {"hostname", !s->hostname}, {"user_data", !s->user_data}, {"network_config", !s->network_config},
        {"ssh_keys", !s->ssh_keys || !s->ssh_keys[0]},
        {"password_hash", !s->password_hash},
        {"packages", !s->packages || !s->packages[0]},
        {"runcmd", !s->runcmd || !s->runcmd[0]},
        {"gpus", !s->gpus || !s->gpus[0]},
        {"nets", !s->nets || !s->nets[0]},
        {"storage_pool", !s->storage_pool}, {"numa", !s->numa}, {"pin", !s->pin},
        {"firmware_code", !s->firmware_code}, {"firmware_vars", !s->firmware_vars},
        {"cpu_model", !s->cpu_model},
        {"owner", s->owner == SV_UNSET}, {"slurm_job", s->slurm_job == SV_UNSET},
    };
    for (size_t i = 0; j && i < QV_ARRAY_SIZE(opt); i++)
        if (opt[i].unset)
            json_object_del(j, opt[i].key);
    return j;
}

const char *sv_vmspec_generated_user_data_key(const sv_vmspec *s) {
    return s->password_hash                 ? "password_hash"
           : s->packages && s->packages[0] ? "packages"
           : s->runcmd && s->runcmd[0]     ? "runcmd"
                                           : NULL;
}

int sv_vmspec_complete(sv_vmspec *s, const sv_config *node, qv_error *err) {
    if (!s->name)
        return qv_error_set(err, EINVAL, "spec: name: missing (every VM needs a name)");
    if (!s->image)
        return qv_error_set(err, EINVAL, "spec: image: missing (name a base image from `qvisor image list`)");
    if ((s->initrd || s->append) && !s->kernel)
        return qv_error_set(err, EINVAL, "spec: initrd and append need kernel");
    if (!s->seed) {
        /* Settings that only go into the seed would be dropped silently. */
        const char *generated = sv_vmspec_generated_user_data_key(s);
        const char *unused = s->hostname                         ? "hostname"
                             : s->ssh_keys && s->ssh_keys[0]    ? "ssh_keys"
                             : s->ssh_generate                  ? "ssh_generate"
                             : generated                        ? generated
                             : s->user_data                     ? "user_data"
                             : s->network_config                ? "network_config"
                                                                : NULL;
        if (unused)
            return qv_error_set(err, EINVAL, "spec: %s needs the cloud-init seed, which seed: false turns off", unused);
    } else if (!s->hostname) {
        char h[64];
        snprintf(h, sizeof h, "%s", s->name);
        for (size_t n = strlen(h); n > 0 && h[n - 1] == '-'; n--)
            h[n - 1] = '\0';
        if (!(s->hostname = strdup(h)))
            return qv_error_set(err, ENOMEM, "out of memory");
    }
    if (s->user_data) {
        /* They go into the generated user-data, which user_data replaces:
         * dropping them silently would leave a guest without them. */
        const char *gen = sv_vmspec_generated_user_data_key(s);
        if (gen)
            return qv_error_set(err, EINVAL,
                                "spec: %s and user_data exclude each other: user_data replaces the generated "
                                "user-data, where %s would go (set it in your own user-data instead)",
                                gen, gen);
    }
    if (s->firmware == SV_FIRMWARE_BIOS && (s->firmware_code || s->firmware_vars))
        return qv_error_set(err, EINVAL, "spec: %s needs firmware uefi or uefi-secure",
                            s->firmware_code ? "firmware_code" : "firmware_vars");
    if (!s->firmware_code != !s->firmware_vars)
        return qv_error_set(err, EINVAL, "spec: firmware_code and firmware_vars go together (or leave both out: "
                                         "create finds OVMF)");
    if (s->n_nics > ND_NICS_MAX)
        return qv_error_set(err, EINVAL, "spec: nets: at most %d NICs per VM", ND_NICS_MAX);
    if (s->pin && s->numa_want.mode == SV_NUMA_AUTO)
        return qv_error_set(err, EINVAL, "spec: pin and numa: auto exclude each other (auto chooses the CPUs)");
    if (!s->storage_pool && !(s->storage_pool = strdup(node->default_storage_pool)))
        return qv_error_set(err, ENOMEM, "out of memory");
    if (!s->cpus)
        s->cpus = node->vm_cpus;
    if (!s->memory)
        s->memory = node->vm_memory;
    if (!s->disk)
        s->disk = node->vm_disk;
    if (!s->stop_timeout_ms)
        s->stop_timeout_ms = node->stop_timeout_ms;
    return 0;
}

/* Filesystems whose files the kernel makes up as they are read: their
 * sizes say nothing and their content is not a boot file. */
static const char *pseudo_fs(long type) {
    switch (type) {
    case PROC_SUPER_MAGIC: return "/proc";
    case SYSFS_MAGIC: return "/sys";
    case DEBUGFS_MAGIC: return "debugfs";
    case TRACEFS_MAGIC: return "tracefs";
    case SECURITYFS_MAGIC: return "securityfs";
    case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC: return "cgroupfs";
    default: return NULL;
    }
}

static int check_boot_file(const char *key, const char *label, int fd, uint64_t max, qv_error *err) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return qv_error_set(err, EINVAL, "spec: %s: cannot stat %s: %s", key, label, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return qv_error_set(err, EINVAL, "spec: %s: %s is a directory, not a %s file", key, label, key);
    if (!S_ISREG(st.st_mode))
        return qv_error_set(err, EINVAL, "spec: %s: %s is not a regular file (%s)", key, label,
                            S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                            : S_ISFIFO(st.st_mode)                     ? "a FIFO"
                                                                        : "a socket");
    struct statfs fs;
    const char *pseudo = fstatfs(fd, &fs) == 0 ? pseudo_fs((long)fs.f_type) : NULL;
    if (pseudo)
        return qv_error_set(err, EINVAL, "spec: %s: %s is a %s file, not a %s file", key, label, pseudo, key);
    if (st.st_size == 0)
        return qv_error_set(err, EINVAL, "spec: %s: %s is empty", key, label);
    if ((uint64_t)st.st_size > max)
        return qv_error_set(err, EINVAL, "spec: %s: %s is larger than %llu MiB", key, label,
                            (unsigned long long)(max >> 20));
    return 0;
}

int sv_vmspec_check_boot(const sv_vmspec *s, int kernel_fd, int initrd_fd, qv_error *err) {
    int r;
    if (!s->kernel != (kernel_fd < 0) || !s->initrd != (initrd_fd < 0))
        return qv_error_set(err, EINVAL, "spec: %s: the client opens the file and sends it with the request "
                                         "(\"%s_fd\"); the daemon opens no file a client names",
                            !s->kernel != (kernel_fd < 0) ? "kernel" : "initrd",
                            !s->kernel != (kernel_fd < 0) ? "kernel" : "initrd");
    if (s->kernel && (r = check_boot_file("kernel", s->kernel, kernel_fd, SV_KERNEL_MAX, err)) < 0)
        return r;
    if (s->initrd && (r = check_boot_file("initrd", s->initrd, initrd_fd, SV_INITRD_MAX, err)) < 0)
        return r;
    if (s->append) {
        size_t n = strlen(s->append);
        if (n > SV_APPEND_MAX)
            return qv_error_set(err, EINVAL,
                                "spec: append: %zu bytes; the kernel takes at most %d (COMMAND_LINE_SIZE on x86) "
                                "and would cut the rest",
                                n, SV_APPEND_MAX);
        for (const unsigned char *p = (const unsigned char *)s->append; *p; p++)
            if (*p < 0x20 || *p == 0x7f)
                return qv_error_set(err, EINVAL, "spec: append: contains a control character (0x%02x)", *p);
    }
    return 0;
}
