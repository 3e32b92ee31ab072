/* The node's resources in the daemon (see resources.h). */
#include "supervisor/resources/resources.h"

#include "cleanup.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

static int capacity_read(unsigned parts, bool gpus, sv_capacity *ret, qv_error *err) {
    int r = sv_capacity_read_parts(ret, parts, err);
    if (r < 0 || !gpus)
        return r;
    vfio_gpu_list l = {0};
    qv_error e = {0};
    if (vfio_gpu_list_get(&l, &e) < 0) {
        log_debug("no GPU list for the capacity: %s", e.msg);
        return 0;
    }
    r = sv_capacity_add_gpus(ret, &l);
    vfio_gpu_list_clear(&l);
    if (r < 0) {
        sv_capacity_clear(ret);
        return qv_error_set(err, -r, "out of memory");
    }
    return 0;
}

int sv_resources_capacity_for(const sv_vmspec *spec, sv_capacity *ret, qv_error *err) {
    return capacity_read(0, spec->n_gpu_opts > 0, ret, err);
}

int sv_resources_capacity(sv_capacity *ret, qv_error *err) {
    return capacity_read(SV_CAP_ALL, true, ret, err);
}

static int spec_numa_node(const sv_vmspec *s) {
    return s->numa_want.mode == SV_NUMA_NODE ? (int)s->numa_want.node : -1;
}

void sv_resources_spec_usage(const sv_vmspec *spec, int numa_node, sv_vm_usage *ret) {
    *ret = (sv_vm_usage){
        .name = spec->name,
        .pool = spec->pool,
        .cpus = spec->cpus,
        .memory = spec->memory,
        .gpus = spec->n_gpu_opts,
        .hugepage_size = sv_hugepage_bytes(spec->hugepages),
        .numa_node = numa_node,
    };
}

void sv_resources_vm_usage(const sv_vm *vm, sv_vm_usage *ret) {
    sv_resources_spec_usage(sv_vm_spec(vm), spec_numa_node(sv_vm_spec(vm)), ret);
    ret->name = sv_vm_name(vm);
    if (sv_vm_pid(vm) > 0)
        ret->numa_node = sv_vm_numa_node(vm);
}

int sv_resources_usage(sv_registry *r, bool all, sv_vm_usage **ret, size_t *ret_n) {
    size_t n = 0;
    for (sv_vm *vm = sv_registry_first(r); vm; vm = sv_registry_next(vm))
        n++;
    sv_vm_usage *u = calloc(n ? n : 1, sizeof *u);
    if (!u)
        return -ENOMEM;
    size_t k = 0;
    for (sv_vm *vm = sv_registry_first(r); vm; vm = sv_registry_next(vm))
        if (all || sv_vm_state_has_qemu(sv_vm_state_of(vm)))
            sv_resources_vm_usage(vm, &u[k++]);
    *ret = u;
    *ret_n = k;
    return 0;
}

uint64_t sv_resources_pinned_vcpus(sv_registry *r, const sv_numa_node *nn) {
    uint64_t pinned = 0;
    for (sv_vm *vm = sv_registry_first(r); nn && vm; vm = sv_registry_next(vm)) {
        const sv_vmspec *spec = sv_vm_spec(vm);
        if (!spec->pin_cpus || !sv_vm_state_has_qemu(sv_vm_state_of(vm)))
            continue;
        bool here = false;
        for (size_t a = 0; a < spec->n_pin_cpus && !here; a++)
            for (size_t b = 0; b < nn->n_cpus && !here; b++)
                here = spec->pin_cpus[a] == nn->cpus[b];
        if (here)
            pinned += spec->cpus;
    }
    return pinned;
}

const sv_vm *sv_resources_gpu_holder(sv_registry *r, const char *address) {
    for (sv_vm *vm = sv_registry_first(r); vm; vm = sv_registry_next(vm))
        for (size_t g = 0; g < sv_vm_spec(vm)->n_gpu_opts; g++)
            if (strcmp(sv_vm_spec(vm)->gpu_opts[g].bdf, address) == 0)
                return vm;
    return NULL;
}

int sv_resources_admit(sv_registry *r, const sv_config *c, const sv_capacity *cap, const sv_vmspec *spec, bool all,
                       int numa_node, qv_error *err) {
    sv_admission_policy policy;
    int rc = sv_admission_policy_init(&policy, c, spec->pool, err);
    if (rc < 0)
        return rc;
    _cleanup_free_ sv_vm_usage *usage = NULL;
    size_t n = 0;
    if ((rc = sv_resources_usage(r, all, &usage, &n)) < 0)
        return qv_error_set(err, -rc, "out of memory");
    sv_capacity read = {0};
    if (!cap) {
        if ((rc = sv_resources_capacity_for(spec, &read, err)) < 0)
            return rc;
        cap = &read;
    }
    sv_vm_usage me;
    sv_resources_spec_usage(spec, numa_node, &me);
    rc = sv_admission_check(cap, &policy, usage, n, &me, err);
    sv_capacity_clear(&read);
    return rc;
}

const char *sv_resources_storage_pool_of(const sv_config *c, const sv_vmspec *spec) {
    return spec->storage_pool ? spec->storage_pool : c->default_storage_pool;
}

int sv_resources_storage(sv_registry *r, const sv_config *c, const char *pool, sv_storage_usage *ret,
                         qv_error *err) {
    const sv_storage_pool *p = sv_config_storage_pool(c, pool);
    if (!p)
        return qv_error_set(err, ENOENT, "no storage pool '%s' (storage_pools in the node config)", pool);
    *ret = (sv_storage_usage){.pool = p->name, .thin_overcommit = p->thin_overcommit};
    /* the directory may not exist yet: its nearest existing parent's file system */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", p->path);
    struct statvfs fs;
    while (statvfs(dir, &fs) < 0) {
        char *slash = strrchr(dir, '/');
        if (errno != ENOENT || !slash || slash == dir)
            return qv_error_set(err, errno, "cannot look at storage pool %s (%s): %s", p->name, p->path,
                                strerror(errno));
        *slash = '\0';
    }
    ret->free = (uint64_t)fs.f_bavail * fs.f_frsize;
    for (sv_vm *vm = sv_registry_first(r); vm; vm = sv_registry_next(vm)) {
        if (strcmp(sv_resources_storage_pool_of(c, sv_vm_spec(vm)), p->name) != 0)
            continue;
        ret->allocated += sv_vm_disk_claim(vm);
        char disk[PATH_MAX];
        struct stat st;
        sv_vm_path(vm, SV_VM_DISK_FILE, disk, sizeof disk);
        if (stat(disk, &st) == 0)
            ret->used += (uint64_t)st.st_blocks * 512;
    }
    return 0;
}
