/* What `vm list` and `vm show` print of a VM (see registry.h). */
#include "supervisor/vm/registry-internal.h"
#include "supervisor/vm/lifecycle.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "qv-build.h"
#include "util.h"
#include "host/firmware.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/nics.h"
#include "supervisor/vm/seed.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- views ------------------------------------------------------------------- */

static bool has_qemu(const sv_vm *vm) {
    return vm->run.pid > 0 && sv_vm_state_has_qemu(vm->state);
}

static json_t *optional_uint(uint64_t v) {
    return v == SV_UNSET ? json_null() : json_integer((json_int_t)v);
}

json_t *sv_vm_summary(const sv_vm *vm) {
    char disk[PATH_MAX];
    snprintf(disk, sizeof disk, "%s/disk.qcow2", vm->dir);
    bool up = has_qemu(vm);
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:[]}", "name", vm->name, "state",
                          sv_vm_state_name(vm->state), "image", vm->spec->image, "cpus", (json_int_t)vm->spec->cpus,
                          "memory", (json_int_t)vm->spec->memory, "disk_size", (json_int_t)vm->disk_size, "disk",
                          disk, "gpus");
    json_t *gpus = json_object_get(j, "gpus");
    for (size_t g = 0; gpus && g < vm->spec->n_gpu_opts; g++)
        json_array_append_new(gpus, json_string(vm->spec->gpu_opts[g].bdf)); /* the address, without options */
    json_object_set_new(j, "pool", json_string(vm->spec->pool ? vm->spec->pool : "default"));
    json_object_set_new(j, "pid", up ? json_integer(vm->run.pid) : json_null());
    int64_t uptime = (int64_t)time(NULL) - vm->run.started_at;
    json_object_set_new(j, "uptime_s", up && vm->run.started_at ? json_integer(uptime < 0 ? 0 : uptime) : json_null());
    /* the agent's answer, else the static address of the first NIC that has one */
    char static_ip[ND_IPV4_CIDR_STRLEN];
    const char *ip = vm->ip ? vm->ip : sv_vm_static_ip(vm, static_ip) ? static_ip : NULL;
    json_object_set_new(j, "ip", up && ip ? json_string(ip) : json_null());
    json_object_set_new(j, "agent", json_string(!vm->spec->agent ? "off" : up && vm->agent ? vm->agent : "-"));
    json_object_set_new(j, "ssh_port", up && vm->run.ssh_port ? json_integer(vm->run.ssh_port) : json_null());
    /* the uid only: a user name would be an NSS lookup (LDAP, sssd) on the
     * loop, for every VM of every list; the CLI looks names up */
    json_object_set_new(j, "owner", optional_uint(vm->spec->owner));
    json_object_set_new(j, "slurm_job", optional_uint(vm->spec->slurm_job));
    return j;
}

bool sv_vm_static_ip(const sv_vm *vm, char ret[ND_IPV4_CIDR_STRLEN]) {
    nd_nic nics[ND_NICS_MAX];
    size_t n_nics = 0;
    if (sv_net_nics(vm->spec, nics, &n_nics, NULL) < 0)
        return false;
    for (size_t i = 0; i < n_nics; i++)
        if (nics[i].ip[0]) {
            snprintf(ret, ND_IPV4_CIDR_STRLEN, "%.*s", (int)strcspn(nics[i].ip, "/"), nics[i].ip);
            return true;
        }
    return false;
}

json_t *sv_vm_details(const sv_vm *vm) {
    json_t *j = sv_vm_summary(vm);
    char p[PATH_MAX];
    json_object_set_new(j, "spec", sv_vmspec_to_json(vm->spec));
    json_object_set_new(j, "dir", json_string(vm->dir));
    sv_layout_instance_file(vm->dir, SV_VM_QEMU_LOG, p, sizeof p);
    json_object_set_new(j, "qemu_log", json_string(p));
    sv_layout_instance_file(vm->dir, SV_VM_SERIAL_LOG, p, sizeof p);
    json_object_set_new(j, "serial_log", json_string(p));
    sv_layout_instance_file(vm->dir, SV_VM_VARS_FILE, p, sizeof p);
    json_object_set_new(j, "firmware_vars_store", vm->spec->firmware != SV_FIRMWARE_BIOS ? json_string(p) : json_null());
    sv_layout_instance_file(vm->dir, SV_VM_SSH_KEY, p, sizeof p);
    json_object_set_new(j, "ssh_key", vm->spec->seed && vm->spec->ssh_generate ? json_string(p) : json_null());
    sv_layout_instance_file(vm->dir, SV_VM_KNOWN_HOSTS, p, sizeof p);
    json_object_set_new(j, "known_hosts", json_string(p));
    json_object_set_new(j, "created_at", json_integer((json_int_t)vm->created_at));
    /* the boot files the spec names are copies in the instance directory */
    json_object_set_new(j, "kernel_source", vm->kernel_source ? json_string(vm->kernel_source) : json_null());
    json_object_set_new(j, "initrd_source", vm->initrd_source ? json_string(vm->initrd_source) : json_null());
    json_object_set_new(j, "last_exit", vm->last_exit ? json_string(vm->last_exit) : json_null());
    json_object_set_new(j, "addresses", has_qemu(vm) && vm->addresses ? json_incref(vm->addresses) : json_array());
    json_object_set_new(j, "restarts", json_integer((json_int_t)vm->run.restarts));
    json_t *nics = json_array();
    nd_nic nic[ND_NICS_MAX];
    size_t n = 0;
    if (sv_net_nics(vm->spec, nic, &n, NULL) < 0)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        char tap[IFNAMSIZ] = "";
        if (nic[i].mode != ND_MODE_USER)
            nd_tap_name(vm->name, (unsigned)i, tap);
        json_t *row = json_pack("{s:I, s:s, s:s, s:s?, s:s?, s:s?, s:s?}", "nic", (json_int_t)i, "mode",
                                nd_mode_name(nic[i].mode), "mac", nic[i].mac, "ip", nic[i].ip[0] ? nic[i].ip : NULL,
                                "bridge", nic[i].bridge[0] ? nic[i].bridge : NULL, "gateway",
                                nic[i].gw[0] ? nic[i].gw : NULL, "tap", tap[0] ? tap : NULL);
        if (nic[i].vlan)
            json_object_set_new(row, "vlan", json_integer(nic[i].vlan));
        json_array_append_new(nics, row);
    }
    json_object_set_new(j, "nics", nics);
    json_object_set_new(j, "started_at", has_qemu(vm) ? json_integer(vm->run.started_at) : json_null());
    return j;
}
